//! The server: axum on a thread and a single-threaded runtime of its own. A scrape or a probe never
//! takes a turn on the message path's runtime, and a stalled message path cannot hide itself from
//! `/healthz`.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;
use tokio::sync::{oneshot, watch};

use super::{HEALTHZ_PATH, METRICS_PATH, READYZ_PATH};
use crate::ops::metrics::{exposition, Metrics};

/// The running server; dropping it stops it.
pub struct Server {
    addr: SocketAddr,
    /// `http.listen` as configured (port 0 stays 0).
    requested: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

impl Server {
    /// Where it listens (the real port when `http.listen` asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http.listen` as configured.
    pub fn requested(&self) -> SocketAddr {
        self.requested
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

struct AppState {
    metrics: Arc<Metrics>,
    registry: Registry,
}

/// Binds `addr` now (so a taken port fails the start, with the address in the error) and serves on a
/// thread of its own until the returned [`Server`] is dropped.
pub fn start(addr: SocketAddr, metrics: Arc<Metrics>) -> io::Result<Server> {
    let requested = addr;
    let listener = std::net::TcpListener::bind(addr)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr} (http.listen): {e}")))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let state = Arc::new(AppState { registry: exposition::registry(metrics.clone()), metrics });
    let app = Router::new()
        .route(METRICS_PATH, get(metrics_page))
        .route(HEALTHZ_PATH, get(healthz))
        .route(READYZ_PATH, get(readyz))
        .with_state(state);
    std::thread::Builder::new().name("http".into()).spawn(move || {
        runtime.block_on(async move {
            let listener = match tokio::net::TcpListener::from_std(listener) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(error = %e, "the HTTP server cannot use its socket");
                    return;
                }
            };
            let serve = axum::serve(listener, app).with_graceful_shutdown(async {
                let _ = stopped.await;
            });
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "the HTTP server stopped");
            }
        });
    })?;
    tracing::info!(listen = %addr, "HTTP server: {METRICS_PATH}, {HEALTHZ_PATH}, {READYZ_PATH}");
    Ok(Server { addr, requested, stop: Some(stop) })
}

/// Follows `http.listen` as reloads change it (`None`: turned off). The server moves to the new address,
/// bound before the old one stops (unless both are on one port: then the old one stops first, and comes
/// back if the new one cannot bind). An address that cannot be bound is refused with the cause, and the
/// server stays where it was. Runs until dropped (aborted), which stops the server.
pub async fn follow(
    mut server: Option<Server>,
    mut listen: watch::Receiver<Option<SocketAddr>>,
    metrics: Arc<Metrics>,
) {
    while listen.changed().await.is_ok() {
        let want = *listen.borrow_and_update();
        let have = server.as_ref().map(Server::requested);
        if want == have {
            continue;
        }
        let Some(addr) = want else {
            server = None;
            tracing::info!("http.listen removed: the HTTP server stopped");
            continue;
        };
        let same_port = have.is_some_and(|h| h.port() == addr.port() && addr.port() != 0);
        if same_port {
            // The old listener holds the port until its server has stopped.
            drop(server.take());
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        match start(addr, metrics.clone()) {
            Ok(new) => {
                tracing::info!(listen = %addr, "http.listen applied: the HTTP server moved");
                server = Some(new);
            }
            Err(e) => {
                tracing::error!(error = %e, "new http.listen refused: the HTTP server stays where it was");
                if let (true, Some(old)) = (same_port, have) {
                    server = start(old, metrics.clone())
                        .inspect_err(
                            |e| tracing::error!(error = %e, "the HTTP server cannot listen again where it was"),
                        )
                        .ok();
                }
            }
        }
    }
    // No more reloads (the gateway is shutting down): the server answers until the task is dropped.
    let _server = server;
    std::future::pending::<()>().await;
}

async fn metrics_page(State(s): State<Arc<AppState>>) -> Response {
    match exposition::encode(&s.registry) {
        Ok(body) => ([(header::CONTENT_TYPE, exposition::CONTENT_TYPE)], body).into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode the metrics").into_response(),
    }
}

fn json(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn healthz(State(s): State<Arc<AppState>>) -> Response {
    let l = s.metrics.health.liveness();
    json(if l.alive() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, l.to_json())
}

async fn readyz(State(s): State<Arc<AppState>>) -> Response {
    let r = s.metrics.health.readiness(s.metrics.mqtt_connected.load(Relaxed));
    json(if r.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, r.to_json())
}

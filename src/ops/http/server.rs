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
use tokio::sync::oneshot;

use super::{HEALTHZ_PATH, METRICS_PATH, READYZ_PATH};
use crate::ops::metrics::{exposition, Metrics};

/// The running server; dropping it stops it.
pub struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

impl Server {
    /// Where it listens (the real port when `http.listen` asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
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
    Ok(Server { addr, stop: Some(stop) })
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

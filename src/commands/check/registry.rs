//! The Schema Registry side of `check`: reachable and authenticated, then per route with a registry
//! encoding, its subject and version present, of the route's type, compiling (the Protobuf message
//! found). A templated subject is resolved when a record first needs it: SKIP. Nothing is registered.

use crate::config::Config;
use crate::registry::client::{Client, RegistryError};
use crate::registry::FetchError;

use super::report::{Item, Side};
use super::Options;

pub async fn check(config: &Config, options: &Options) -> Vec<Item> {
    let Some(settings) = &config.schema_registry else { return Vec::new() };
    let side = Side::Registry;
    // Every request bounded by check's own timeout.
    let mut settings = settings.clone();
    settings.timeout = options.timeout;
    let client = match Client::new(&settings, None) {
        Ok(c) => c,
        Err(e) => return vec![Item::fail(side, "client", e, "fix schema_registry.url or schema_registry.tls")],
    };
    let mut items = Vec::new();
    match client.subjects().await {
        Ok(subjects) => items.push(Item::ok(
            side,
            "reachable",
            format!(
                "{} answers ({} subject{})",
                client.url(),
                subjects.len(),
                if subjects.len() == 1 { "" } else { "s" }
            ),
        )),
        Err(e) => {
            let (what, hint) = match e {
                RegistryError::Unauthorized(..) => {
                    ("authenticated", "check schema_registry.username and password (or password_file)")
                }
                _ => ("reachable", "check schema_registry.url, the network, and schema_registry.tls"),
            };
            items.push(Item::fail(side, what, format!("{}: {e}", client.url()), hint));
            return items;
        }
    }
    for route in config.routes.routes() {
        let Some(rule) = &route.encoding else { continue };
        let what = format!("route \"{}\" {} subject", route.name, rule.kind);
        let Some(subject) = rule.static_subject(&route.topic) else {
            items.push(Item::skip(
                side,
                what,
                format!("`{}` is a template: resolved when a record first needs it", rule.subject.source()),
            ));
            continue;
        };
        match crate::registry::fetch(&client, &subject, rule).await {
            Ok(c) => {
                let message = c.message_name().map(|m| format!(", message {m}")).unwrap_or_default();
                items.push(Item::ok(
                    side,
                    what,
                    format!("{subject} version {} is schema {}, compiles{message}", c.version, c.id),
                ))
            }
            Err(FetchError::Absent(why)) if rule.schema_file.is_some() => items.push(Item::ok(
                side,
                what,
                format!("{subject} is absent; the gateway registers schema_file at start ({why})"),
            )),
            Err(why) => items.push(Item::fail(
                side,
                what,
                why.to_string(),
                "register the schema under that subject, or fix the route's encoding (subject, version, message)",
            )),
        }
    }
    items
}

//! `POST /admin/v1/notify/test`: send an `io.tagpin.test` event to the webhook targets at
//! once and report each answer, so an operator can check a target before an incident.

use http::{Response, StatusCode};
use serde_json::json;

use super::json;
use crate::app::App;
use crate::body::Body;
use crate::error::ProxyError;
use crate::notify::Outcome;
use crate::telemetry::Requester;

pub async fn test(app: &App, target: Option<&str>, who: &Requester) -> Result<Response<Body>, ProxyError> {
    let config = app.notify.config();
    if config.targets.is_empty() {
        return Err(ProxyError::AdminNotFound(
            "no webhook target is configured (add [[notify]] entries to the config file)".into(),
        ));
    }
    // A target is chosen by its name, or by its URL as written without credentials.
    let only = match target {
        None => None,
        Some(t) => match config.targets.iter().find(|c| c.name == t || c.uri == t) {
            Some(c) => Some(c.name.clone()),
            None => {
                let names: Vec<_> = config.targets.iter().map(|c| c.name.as_str()).collect();
                return Err(ProxyError::AdminNotFound(format!(
                    "no webhook target has this name or URL; the targets are: {}",
                    names.join(", ")
                )));
            }
        },
    };
    let answers = app.notify.test(only.as_deref(), &who.admin_name()).await;
    let targets: Vec<_> = answers
        .iter()
        .map(|(name, a)| {
            json!({
                "target": name,
                "delivered": a.outcome == Outcome::Delivered,
                "status": a.status,
                "error": a.error,
            })
        })
        .collect();
    Ok(json(StatusCode::OK, &json!({ "targets": targets })))
}

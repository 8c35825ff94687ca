//! `/metrics` on a listener of its own (`metrics_listen`), so a scraper on a private
//! network reaches it and the registry port's clients do not. It answers only
//! `GET`/`HEAD /metrics`, with the registry port's HTTP/1.1 settings (header timeout and
//! size bound) and write deadline, and a small connection limit of its own: a scraper
//! needs one or two, and idle connections here cannot take the registry port's
//! descriptors.

use std::future::Future;
use std::sync::Arc;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::net::TcpListener;

use crate::app::App;
use crate::body::{self, Body};

/// Connections the metrics listener holds open at once; more wait in the accept queue.
pub const MAX_CONNECTIONS: usize = 16;

/// Serve `/metrics` on `listener` until `shutdown` resolves.
pub async fn serve(app: Arc<App>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
    super::side::serve(
        app.shared(),
        listener,
        MAX_CONNECTIONS,
        "metrics",
        shutdown,
        move |req, _| {
            let app = Arc::clone(&app);
            async move { answer(&app, &req) }
        },
    )
    .await;
}

/// The metrics for `GET /metrics`; 404 for any other path, 405 for another method.
fn answer(app: &App, req: &Request<Incoming>) -> Response<Body> {
    if req.uri().path() != "/metrics" {
        return plain(StatusCode::NOT_FOUND, "not found: this listener serves /metrics only\n");
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET /metrics\n");
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    crate::handler::metrics_response(app)
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut resp = Response::new(body::full(text));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use crate::config::RawConfig;

    fn metrics_listen(listen: &str, metrics: &str) -> Result<Option<std::net::SocketAddr>, String> {
        let raw = RawConfig {
            upstream: Some("http://127.0.0.1:5000".into()),
            listen: Some(listen.into()),
            metrics_listen: Some(metrics.into()),
            ..RawConfig::default()
        };
        raw.validate().map(|c| c.metrics_listen).map_err(|e| e.to_string())
    }

    #[test]
    fn the_metrics_listener_is_an_address_of_its_own() {
        assert_eq!(
            metrics_listen("127.0.0.1:5050", "127.0.0.1:9090"),
            Ok(Some("127.0.0.1:9090".parse().unwrap()))
        );
        assert_eq!(metrics_listen("127.0.0.1:5050", ""), Ok(None));
        let e = metrics_listen("127.0.0.1:5050", "127.0.0.1:5050").unwrap_err();
        assert!(
            e.starts_with("metrics_listen: must not be the registry or admin port"),
            "{e}"
        );
        let e = metrics_listen("127.0.0.1:5050", "localhost").unwrap_err();
        assert!(e.starts_with("metrics_listen: \"localhost\" is not an IP:port"), "{e}");
    }
}

//! The admin API client the operator commands share: where the admin API is, the bearer
//! token (from a file or `TAGPIN_ADMIN_TOKEN`, never from a flag, so it stays out of the
//! process list), one request at a time over plain HTTP, and the OCI error envelope
//! turned back into a one-line error.
//!
//! The token never appears in an error, a log line or output: it lives only in a
//! header value marked sensitive.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as Legacy;
use hyper_util::rt::TokioExecutor;

/// Exit status of a command that did its job.
pub const EXIT_OK: u8 = 0;
/// Exit status of a command that ran and found what its `--help` says it exits 1 for
/// (no pin, something moved, import conflicts).
pub const EXIT_FOUND: u8 = 1;
/// Exit status of every other failure.
pub const EXIT_ERROR: u8 = 2;

/// The environment variable holding the bare admin token.
pub const TOKEN_ENV: &str = "TAGPIN_ADMIN_TOKEN";

/// Where the admin API is and how to authenticate to it.
#[derive(Debug, Clone, Args)]
pub struct AdminArgs {
    /// Admin API origin (plain http), as `tagpin serve --admin-listen` serves it.
    #[arg(long, env = "TAGPIN_ADMIN_URL", default_value = "http://127.0.0.1:5051")]
    pub admin_url: String,
    /// File holding just the admin token (not the server's name:token file). Without it,
    /// the token is read from the TAGPIN_ADMIN_TOKEN environment variable.
    #[arg(long, value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
}

/// Why a command failed (exit status 2).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error("cannot reach the admin API at {url}: {why}")]
    Connect { url: String, why: String },
    #[error("the admin API answered {status} {code}: {message}")]
    Api { status: u16, code: String, message: String },
    #[error("unexpected answer from the admin API: {0}")]
    Protocol(String),
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    Store(String),
    /// The admin API accepted the request and then reported a failure in its stream.
    #[error("{0}")]
    Failed(String),
}

impl CliError {
    /// The HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// The bare token: the first line of `file` when given, else `TAGPIN_ADMIN_TOKEN` from
/// `env` (an interface so tests need not touch the process environment).
pub fn load_token(file: Option<&std::path::Path>, env: &dyn Fn(&str) -> Option<OsString>) -> Result<String, CliError> {
    let token = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| CliError::Usage(format!("cannot read the admin token file {}: {e}", path.display())))?;
            let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
            let token = lines.next().unwrap_or("").to_owned();
            if lines.next().is_some() {
                return Err(CliError::Usage(format!(
                    "the admin token file {} must hold just the token, on one line",
                    path.display()
                )));
            }
            if token.is_empty() {
                return Err(CliError::Usage(format!(
                    "the admin token file {} is empty",
                    path.display()
                )));
            }
            token
        }
        None => match env(TOKEN_ENV) {
            Some(v) => v
                .into_string()
                .map_err(|_| CliError::Usage(format!("{TOKEN_ENV} is not valid UTF-8")))?
                .trim()
                .to_owned(),
            None => String::new(),
        },
    };
    if token.is_empty() {
        return Err(CliError::Usage(format!(
            "no admin token: pass --admin-token-file FILE or set {TOKEN_ENV}"
        )));
    }
    Ok(token)
}

/// A client of one admin API.
pub struct Client {
    /// The origin and any path prefix, without a trailing slash.
    base: String,
    authorization: HeaderValue,
    http: Legacy<HttpConnector, crate::body::Body>,
}

impl Client {
    pub fn new(args: &AdminArgs, env: &dyn Fn(&str) -> Option<OsString>) -> Result<Self, CliError> {
        let url: Uri = args
            .admin_url
            .parse()
            .map_err(|e| CliError::Usage(format!("--admin-url {:?} is not a URL: {e}", args.admin_url)))?;
        match url.scheme_str() {
            Some("http") => {}
            _ => {
                return Err(CliError::Usage(format!(
                    "--admin-url {:?} must be an http:// origin (the admin API serves plain HTTP on a private address)",
                    args.admin_url
                )))
            }
        }
        if url.query().is_some() {
            return Err(CliError::Usage("--admin-url must not have a query".into()));
        }
        let base = args.admin_url.trim_end_matches('/').to_owned();
        let token = load_token(args.admin_token_file.as_deref(), env)?;
        let mut authorization = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| CliError::Usage("the admin token holds characters an HTTP header cannot carry".into()))?;
        authorization.set_sensitive(true);
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(10)));
        connector.set_nodelay(true);
        let http = Legacy::builder(TokioExecutor::new()).build(connector);
        Ok(Self {
            base,
            authorization,
            http,
        })
    }

    /// `path` (under `/admin/v1/`) with the query parameters encoded.
    fn url(&self, path: &str, query: &[(&str, &str)]) -> String {
        let mut url = format!("{}/admin/v1/{path}", self.base);
        if !query.is_empty() {
            let q = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(query.iter().copied())
                .finish();
            url.push('?');
            url.push_str(&q);
        }
        url
    }

    /// Send one request; a non-2xx answer is an [`CliError::Api`] with the envelope's
    /// message.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<(Bytes, &'static str)>,
    ) -> Result<Response<Incoming>, CliError> {
        let url = self.url(path, query);
        let mut req = Request::builder()
            .method(method)
            .uri(&url)
            .header(header::AUTHORIZATION, self.authorization.clone())
            .header(header::ACCEPT, "application/json, application/x-ndjson");
        let body = match body {
            Some((bytes, content_type)) => {
                req = req.header(header::CONTENT_TYPE, content_type);
                bytes
            }
            None => Bytes::new(),
        };
        let req = req
            .body(crate::body::full(body))
            .map_err(|e| CliError::Usage(format!("cannot build a request for {url}: {e}")))?;
        self.request(req).await
    }

    /// Send one request whose body streams (`length`, when known, is its
    /// `Content-Length`); answered as [`Client::send`].
    pub async fn send_stream(
        &self,
        method: Method,
        path: &str,
        body: crate::body::Body,
        content_type: &'static str,
        length: Option<u64>,
    ) -> Result<Response<Incoming>, CliError> {
        let url = self.url(path, &[]);
        let mut req = Request::builder()
            .method(method)
            .uri(&url)
            .header(header::AUTHORIZATION, self.authorization.clone())
            .header(header::ACCEPT, "application/json")
            .header(header::CONTENT_TYPE, content_type);
        if let Some(n) = length {
            req = req.header(header::CONTENT_LENGTH, n);
        }
        let req = req
            .body(body)
            .map_err(|e| CliError::Usage(format!("cannot build a request for {url}: {e}")))?;
        self.request(req).await
    }

    async fn request(&self, req: Request<crate::body::Body>) -> Result<Response<Incoming>, CliError> {
        let resp = self.http.request(req).await.map_err(|e| CliError::Connect {
            url: self.base.clone(),
            why: error_chain(&e),
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body = collect(resp.into_body()).await.unwrap_or_default();
        Err(api_error(status, &body))
    }

    /// Send one request and parse the JSON answer.
    pub async fn json(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, CliError> {
        let body = body.map(|v| (Bytes::from(v.to_string()), "application/json"));
        let resp = self.send(method, path, query, body).await?;
        let bytes = collect(resp.into_body()).await?;
        serde_json::from_slice(&bytes).map_err(|e| CliError::Protocol(format!("not JSON: {e}")))
    }
}

/// The causes of a client error on one line (hyper-util's top-level error says little).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Read a whole (small) body.
pub async fn collect(body: Incoming) -> Result<Bytes, CliError> {
    body.collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| CliError::Protocol(format!("the answer was cut off: {e}")))
}

/// A non-2xx answer as an error: the OCI envelope's code and message when it has one.
pub fn api_error(status: StatusCode, body: &[u8]) -> CliError {
    let envelope: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let first = envelope.as_ref().and_then(|v| v["errors"].get(0));
    let code = first
        .and_then(|e| e["code"].as_str())
        .unwrap_or_else(|| status.canonical_reason().unwrap_or(""))
        .to_owned();
    let mut message = first
        .and_then(|e| e["message"].as_str())
        .map(str::to_owned)
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().chars().take(200).collect());
    if status == StatusCode::UNAUTHORIZED {
        message.push_str("; check --admin-token-file or TAGPIN_ADMIN_TOKEN");
    }
    CliError::Api {
        status: status.as_u16(),
        code,
        message: message.replace(['\n', '\r'], " "),
    }
}

/// A streamed body read a line at a time (export, seed progress), holding at most one
/// line and one chunk in memory.
pub struct Lines {
    body: Incoming,
    buf: Vec<u8>,
    done: bool,
}

/// Longest line accepted from a stream: a pin with a long history is far shorter.
const MAX_LINE: usize = 64 << 20;

impl Lines {
    pub fn new(body: Incoming) -> Self {
        Self {
            body,
            buf: Vec::new(),
            done: false,
        }
    }

    /// The next line without its newline; `None` at the end. A last line without a
    /// newline is returned as it is: the caller decides whether that is a cut stream.
    pub async fn next(&mut self) -> Result<Option<(Vec<u8>, bool)>, CliError> {
        loop {
            if let Some(nl) = self.buf.iter().position(|b| *b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=nl).collect();
                line.pop();
                return Ok(Some((line, true)));
            }
            if self.done {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Ok(Some((std::mem::take(&mut self.buf), false)));
            }
            if self.buf.len() > MAX_LINE {
                return Err(CliError::Protocol(format!("a line longer than {MAX_LINE} bytes")));
            }
            match self.body.frame().await {
                None => self.done = true,
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => return Err(CliError::Protocol(format!("the answer was cut off: {e}"))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<OsString> {
        None
    }

    #[test]
    fn the_token_comes_from_the_file_first_then_the_environment() {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), "  file-token-0123456789\n\n").unwrap();
        let env = |k: &str| (k == TOKEN_ENV).then(|| OsString::from("env-token-0123456789"));
        assert_eq!(load_token(Some(f.path()), &env).unwrap(), "file-token-0123456789");
        assert_eq!(load_token(None, &env).unwrap(), "env-token-0123456789");
        assert!(load_token(None, &no_env).unwrap_err().to_string().contains(TOKEN_ENV));
    }

    #[test]
    fn a_token_file_of_two_lines_is_refused_without_showing_them() {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), "alice:secret-0123456789\nbob:other-0123456789\n").unwrap();
        let e = load_token(Some(f.path()), &no_env).unwrap_err().to_string();
        assert!(e.contains("just the token"), "{e}");
        assert!(!e.contains("secret") && !e.contains("other"), "{e}");
    }

    #[test]
    fn api_errors_are_one_line_with_the_envelope_message() {
        let body = br#"{"errors":[{"code":"NAME_UNKNOWN","message":"a:b has no\npin","detail":{}}]}"#;
        let e = api_error(StatusCode::NOT_FOUND, body).to_string();
        assert_eq!(e, "the admin API answered 404 NAME_UNKNOWN: a:b has no pin");
        let e = api_error(StatusCode::BAD_GATEWAY, b"<html>oops</html>").to_string();
        assert_eq!(e, "the admin API answered 502 Bad Gateway: <html>oops</html>");
    }

    #[test]
    fn only_plain_http_admin_urls_are_accepted() {
        let env = |_: &str| Some(OsString::from("t0123456789abcdef"));
        let args = |u: &str| AdminArgs {
            admin_url: u.into(),
            admin_token_file: None,
        };
        let c = Client::new(&args("http://127.0.0.1:5051/"), &env).unwrap();
        assert_eq!(
            c.url("pin", &[("repository", "a/b"), ("tag", "v1")]),
            "http://127.0.0.1:5051/admin/v1/pin?repository=a%2Fb&tag=v1"
        );
        assert!(Client::new(&args("https://x"), &env).is_err());
        assert!(Client::new(&args("127.0.0.1:5051"), &env).is_err());
    }
}

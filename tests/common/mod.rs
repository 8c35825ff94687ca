//! Test harness: the real upstream registry (Debian's `docker-registry`, CNCF
//! distribution 2.8), tagpin itself as a child process, skopeo, a raw HTTP/1.1 client and
//! generated OCI images. Everything listens on 127.0.0.1 with ephemeral ports.

#![allow(
    dead_code,
    unused_imports,
    reason = "each test binary uses a different part of the harness"
)]

pub mod admin;
pub mod fake;
pub mod gate;
pub mod hold;
pub mod http;
pub mod image;
pub mod import;
pub mod lag;
pub mod log_api;
pub mod log_stack;
pub mod paging;
pub mod postgres;
pub mod procs;
pub mod push_only;
pub mod reads;
pub mod receiver;
pub mod signing;
pub mod tlog;
pub mod tmpfs;
pub mod token;
pub mod watch;

pub use self::http::{request, request_without_host, try_request, Resp};
pub use image::{Image, Index};
pub use procs::{basic, skopeo, skopeo_copy, Registry, RegistryOptions, Tagpin};

/// An upstream registry, a tagpin in front of it, and tagpin's data dir: the setup
/// nearly every end-to-end test starts from.
pub struct Stack {
    pub registry: Registry,
    pub tagpin: Tagpin,
    pub data: tempfile::TempDir,
}

impl Stack {
    pub fn start(extra: &[&str]) -> Self {
        let registry = Registry::start();
        let data = tempfile::tempdir().unwrap();
        let tagpin = Tagpin::start(&registry.url(), data.path(), extra);
        Self { registry, tagpin, data }
    }
}

/// The digest the upstream itself holds under `repo:tag`, asked directly (never through
/// tagpin), with every manifest media type accepted so nothing is converted.
///
/// distribution answers a `HEAD` of a tag whose push it is writing with a passing 500;
/// such an answer is asked again (at most 50 times, 100 ms apart).
pub fn upstream_digest(registry: &Registry, repo: &str, tag: &str) -> Option<String> {
    let ask = || {
        request(
            registry.addr,
            "HEAD",
            &format!("/v2/{repo}/manifests/{tag}"),
            &[
                ("Accept", image::ACCEPT_ALL),
                ("Authorization", &registry.auth_header()),
            ],
            b"",
        )
    };
    let mut r = ask();
    for _ in 0..50 {
        if r.status != 500 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        r = ask();
    }
    match r.status {
        200 => Some(
            r.header("docker-content-digest")
                .expect("200 without digest")
                .to_owned(),
        ),
        404 => None,
        s => panic!("unexpected {s} asking the upstream for {repo}:{tag}: {}", r.text()),
    }
}

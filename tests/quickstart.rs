//! The README's Quickstart, run as printed: the shell blocks of its `## Quickstart`
//! section marked `<!-- quickstart:registry -->`, `<!-- quickstart:tagpin -->` and
//! `<!-- quickstart:try -->`, each run with bash, from making the image to the refused
//! push.
//!
//! What the test changes, and nothing else:
//! - the addresses `127.0.0.1:5001` (the registry) and `127.0.0.1:5050` (tagpin) become
//!   two free loopback ports, in the blocks' text and in copies of `config/registry.yml`
//!   and `config/tagpin.toml`;
//! - the working directory is a temp dir holding those copies under `config/`, so the
//!   relative paths (`./img`, `./data`, `./registry-data`) land there;
//! - `tagpin` on the PATH is the binary cargo built for this test run (or
//!   `TAGPIN_TEST_BIN`): the README's install steps (`apt-get`, `cargo install`) are not
//!   run.
//!
//! Whether the tag moved is decided by asking the registry directly.

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::procs::require_binary;
use common::{image, try_request};

const REGISTRY: &str = "127.0.0.1:5001";
const TAGPIN: &str = "127.0.0.1:5050";

/// The fenced `sh` block after each `<!-- quickstart:NAME -->` of the Quickstart section.
fn quickstart_blocks(readme: &str) -> Vec<(String, String)> {
    let start = readme
        .find("\n## Quickstart\n")
        .expect("README has a ## Quickstart section");
    let section = &readme[start + 1..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
    let mut blocks = Vec::new();
    for (at, _) in section.match_indices("<!-- quickstart:") {
        let rest = &section[at + "<!-- quickstart:".len()..];
        let name = rest[..rest.find(" -->").expect("marker ends with ` -->`")].to_owned();
        let fence = rest.find("```sh\n").expect("a ```sh block follows the marker");
        let body = &rest[fence + "```sh\n".len()..];
        let body = &body[..body.find("```").expect("the block is closed")];
        blocks.push((name, body.to_owned()));
    }
    blocks
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A block started in the background, in its own process group, killed with it on drop.
struct Background {
    child: Child,
    name: String,
    log: std::path::PathBuf,
}

impl Background {
    fn start(name: &str, script: &str, dir: &Path, path_env: &str) -> Self {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new("bash")
            .args(["-c", script])
            .current_dir(dir)
            .env("PATH", path_env)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .process_group(0)
            .spawn()
            .expect("start bash");
        Self {
            child,
            name: name.to_owned(),
            log,
        }
    }

    /// Wait (bounded) until `ready` holds, failing early with the log if the block exits.
    fn wait_until(&mut self, what: &str, ready: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        for _ in 0..600 {
            if ready() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the {} block exited ({status}) before {what}:\n{}",
                    self.name,
                    self.log()
                );
            }
            assert!(Instant::now() < deadline, "{what}: not within 60 s:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("{what}: not after 600 tries:\n{}", self.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-s", "KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.wait();
    }
}

/// Copy `config/NAME` into `dir/config/`, every `from` address replaced by `to`; the
/// original must contain each `from` (the shipped files agree with the README).
fn copy_config(name: &str, dir: &Path, swaps: &[(&str, String)], must_hold: &[&str]) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("config").join(name);
    let mut text = std::fs::read_to_string(&src).unwrap();
    for needle in must_hold {
        assert!(
            text.contains(needle),
            "config/{name} does not say {needle}, as the Quickstart needs"
        );
    }
    for (from, to) in swaps {
        text = text.replace(from, to);
    }
    std::fs::write(dir.join("config").join(name), text).unwrap();
}

fn index_digest(dir: &Path, tag: &str) -> String {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("img/index.json")).expect("./img/index.json written")).unwrap();
    let entry = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("no {tag} in ./img/index.json: {index}"));
    entry["digest"].as_str().unwrap().to_owned()
}

fn text(out: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn the_readme_quickstart_pins_the_first_push_and_refuses_the_second() {
    require_binary("docker-registry", "docker-registry");
    require_binary("skopeo", "skopeo");
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let blocks = quickstart_blocks(&readme);
    let names: Vec<&str> = blocks.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["registry", "tagpin", "try"], "the Quickstart's marked blocks");

    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let (registry_addr, tagpin_addr) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let swaps = [(REGISTRY, registry_addr.clone()), (TAGPIN, tagpin_addr.clone())];
    std::fs::create_dir_all(dir.join("config")).unwrap();
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    copy_config("registry.yml", dir, &swaps, &["addr: 127.0.0.1:5001"]);
    copy_config(
        "tagpin.toml",
        dir,
        &swaps,
        &["listen = \"127.0.0.1:5050\"", "upstream = \"http://127.0.0.1:5001\""],
    );
    let bin = std::env::var_os("TAGPIN_TEST_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_tagpin").into());
    std::os::unix::fs::symlink(std::fs::canonicalize(bin).unwrap(), dir.join("bin/tagpin")).unwrap();
    let path_env = format!(
        "{}:{}",
        dir.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let script = |name: &str| {
        let (_, body) = blocks.iter().find(|(n, _)| n == name).unwrap();
        swaps.iter().fold(body.clone(), |s, (from, to)| s.replace(from, to))
    };

    let registry_sock: SocketAddr = registry_addr.parse().unwrap();
    let tagpin_sock: SocketAddr = tagpin_addr.parse().unwrap();
    let mut registry = Background::start("registry", &script("registry"), dir, &path_env);
    registry.wait_until("the registry listens", || {
        TcpStream::connect_timeout(&registry_sock, Duration::from_secs(1)).is_ok()
    });
    let mut tagpin = Background::start("tagpin", &script("tagpin"), dir, &path_env);
    tagpin.wait_until("tagpin is ready", || {
        try_request(tagpin_sock, "GET", "/readyz", &[], b"").is_ok_and(|r| r.status == 200)
    });

    let out = Command::new("bash")
        .args(["-c", &script("try")])
        .current_dir(dir)
        .env("PATH", &path_env)
        .stdin(Stdio::null())
        .output()
        .expect("run bash");
    let shown = format!("{}\n--- tagpin log\n{}", text(&out), tagpin.log());
    let first = index_digest(dir, "1.0");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("oci:./img:1.0 {first}")),
        "demo-image printed its digest:\n{shown}"
    );
    let second = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("oci:./img:"))
        .filter_map(|l| l.split_once(' '))
        .find(|(tag, _)| *tag != "1.0")
        .map(|(tag, _)| index_digest(dir, tag))
        .unwrap_or_else(|| panic!("a second demo image:\n{shown}"));
    assert_ne!(first, second, "another seed gives another digest");
    assert!(
        !out.status.success(),
        "the last push is refused, so the block fails:\n{shown}"
    );
    let refusal = format!(
        "denied: tag my-api:1.0 is immutable: it is pinned to {first} and tagpin refuses to move it to {second}. \
         Push this content under a new tag instead"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&refusal),
        "expected {refusal:?} in:\n{shown}"
    );

    let upstream = try_request(
        registry_sock,
        "HEAD",
        "/v2/my-api/manifests/1.0",
        &[("Accept", image::ACCEPT_ALL)],
        b"",
    )
    .unwrap();
    assert_eq!(upstream.status, 200, "the registry holds my-api:1.0:\n{shown}");
    assert_eq!(
        upstream.header("docker-content-digest"),
        Some(first.as_str()),
        "the registry still holds the first push:\n{shown}"
    );
    drop(tagpin);
    drop(registry);
}

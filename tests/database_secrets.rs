//! The database password, in the URL or in a password file, never reaches a log line or
//! an error message, even when the database cannot be reached (the error paths are where
//! connection strings usually leak).

mod common;

use std::time::Duration;

use common::*;

const PASSWORD: &str = "hunter2-do-not-log-me";

#[test]
fn the_database_password_appears_in_no_log_line_or_error() {
    let registry = Registry::start();
    let refused = common::fake::refused_port();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("db-password");
    std::fs::write(&file, format!("{PASSWORD}-file\n")).unwrap();
    let in_url = format!("postgres://tagpin:{PASSWORD}@{refused}/pins?sslmode=disable");
    let file_arg = file.to_str().unwrap().to_owned();
    let from_file = format!("postgres://tagpin@{refused}/pins?sslmode=disable");
    for args in [
        vec!["--database-url", in_url.as_str()],
        vec![
            "--database-url",
            from_file.as_str(),
            "--database-password-file",
            file_arg.as_str(),
        ],
    ] {
        let mut all = args.clone();
        all.extend(["--upstream-check-timeout-ms", "2000"]);
        let tagpin = Tagpin::start_env(&registry.url(), dir.path(), &all, &[("RUST_LOG", "trace")]);
        // A push needs the store: it is refused (fail closed) and the reason is logged.
        let img = Image::random(1200, 100);
        img.push_blobs(tagpin.addr, "s", "");
        let r = img.put_manifest(tagpin.addr, "s", "v1", "");
        assert_eq!(r.status, 503, "{}", r.text());
        assert!(!r.text().contains(PASSWORD), "{}", r.text());
        let ready = request(tagpin.addr, "GET", "/readyz", &[], b"");
        assert_eq!(ready.status, 503);
        // The log is read from a pipe: wait until the failure's line has arrived.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !tagpin.logs().iter().any(|l| l.contains("database")) {
            assert!(std::time::Instant::now() < deadline, "the failure is never logged");
            std::thread::sleep(Duration::from_millis(10));
        }
        let logs = tagpin.logs();
        if let Some(l) = logs.iter().find(|l| l.contains(PASSWORD)) {
            panic!("a log line carries the database password: {l}");
        }
    }
    // A malformed URL is a one-line config error without the password.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tagpin"))
        .args(["serve", "--upstream", &registry.url(), "--database-url"])
        .arg(format!("postgres://tagpin:{PASSWORD}@127.0.0.1:notaport/pins"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(!stderr.contains(PASSWORD), "{stderr}");
}

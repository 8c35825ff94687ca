//! The database password, in the URL or in a password file, never reaches a log line or
//! an error message, even when the database cannot be reached or its TLS settings are
//! wrong (the error paths are where connection strings usually leak). A failed TLS
//! handshake is checked in `postgres_tls.rs`.

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

/// `tagpin serve` with `args`, which must stop it at start: its exit status and stderr.
fn serve_refused(registry: &Registry, args: &[&str]) -> (Option<i32>, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tagpin"))
        .args(["serve", "--upstream", &registry.url()])
        .args(args)
        .env_remove("TAGPIN_DATABASE_SSLMODE")
        .env_remove("TAGPIN_DATABASE_SSLROOTCERT")
        .env_remove("TAGPIN_DATABASE_SSLCERT")
        .env_remove("TAGPIN_DATABASE_SSLKEY")
        .output()
        .unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn bad_tls_settings_exit_64_naming_the_setting_but_not_the_password() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("not-a-certificate.pem");
    std::fs::write(&not_pem, "hello\n").unwrap();
    let not_pem = not_pem.to_str().unwrap();
    let url = format!("postgres://tagpin:{PASSWORD}@127.0.0.1:1/pins");
    let with = |params: &str| format!("{url}?{params}");
    let missing = "/nonexistent/tagpin/ca.pem";
    for (args, names) in [
        (
            vec!["--database-url".into(), with("sslmode=verify-everything")],
            "--database-url: sslmode \"verify-everything\" is not one of",
        ),
        (
            vec![
                "--database-url".into(),
                url.clone(),
                "--database-sslmode".into(),
                "allow".into(),
            ],
            "--database-sslmode: sslmode \"allow\"",
        ),
        (
            vec![
                "--database-url".into(),
                with(&format!("sslmode=verify-full&sslrootcert={missing}")),
            ],
            &format!("--database-url: sslrootcert {missing}: "),
        ),
        (
            vec![
                "--database-url".into(),
                url.clone(),
                "--database-sslrootcert".into(),
                not_pem.into(),
            ],
            "--database-sslrootcert: sslrootcert ",
        ),
        (
            vec![
                "--database-url".into(),
                url.clone(),
                "--database-sslcert".into(),
                not_pem.into(),
                "--database-sslkey".into(),
                missing.into(),
            ],
            "--database-sslcert: sslcert ",
        ),
        (
            vec![
                "--database-url".into(),
                url.clone(),
                "--database-sslkey".into(),
                missing.into(),
            ],
            "--database-sslkey: sslkey needs sslcert",
        ),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, stderr) = serve_refused(&registry, &args);
        assert_eq!(code, Some(64), "{args:?}: {stderr}");
        assert!(stderr.contains(names), "{args:?}: expected {names:?} in {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(!stderr.contains(PASSWORD), "{stderr}");
    }
}

//! Files that hold secrets: admin tokens and tagpin's own upstream credentials. Read at
//! start; a malformed file is a config error naming the file and the line number, never
//! the line itself (it may be a secret).

use std::path::Path;

use super::{ConfigError, Credentials, Secret};

/// Shortest admin token accepted: a guessable token would make the admin API an open door.
const MIN_TOKEN_LEN: usize = 16;

pub(super) fn read(key: &'static str, path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError::invalid(key, format!("cannot read {}: {e}", path.display())))
}

/// `name:token` per line; blank lines and `#` comments are skipped.
pub fn admin_tokens(path: &Path) -> Result<Vec<(String, Secret)>, ConfigError> {
    let text = read("admin_token_file", path)?;
    let mut tokens = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad =
            |why: &str| ConfigError::invalid("admin_token_file", format!("{} line {}: {why}", path.display(), i + 1));
        let (name, token) = line.split_once(':').ok_or_else(|| bad("expected name:token"))?;
        let (name, token) = (name.trim(), token.trim());
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c)) {
            return Err(bad("the name must be letters, digits and -_.@"));
        }
        if token.len() < MIN_TOKEN_LEN || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad(&format!(
                "the token must be at least {MIN_TOKEN_LEN} characters without spaces"
            )));
        }
        tokens.push((name.to_owned(), Secret(token.to_owned())));
    }
    if tokens.is_empty() {
        return Err(ConfigError::invalid(
            "admin_token_file",
            format!("{} holds no name:token line", path.display()),
        ));
    }
    Ok(tokens)
}

/// One `user:password` line.
pub fn credentials(path: &Path) -> Result<Credentials, ConfigError> {
    let text = read("upstream_credentials_file", path)?;
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .ok_or_else(|| ConfigError::invalid("upstream_credentials_file", format!("{} is empty", path.display())))?;
    let (user, password) = line.split_once(':').ok_or_else(|| {
        ConfigError::invalid(
            "upstream_credentials_file",
            format!("{}: expected one user:password line", path.display()),
        )
    })?;
    Ok(Credentials {
        user: user.to_owned(),
        password: Secret(password.to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    #[test]
    fn tokens_are_name_colon_token_lines() {
        let f = file("# ops\nalice:0123456789abcdefXYZ\n\nci-bot: s3cr3t-s3cr3t-s3cr3t\n");
        let t = admin_tokens(f.path()).unwrap();
        assert_eq!(t[0].0, "alice");
        assert_eq!(t[1], ("ci-bot".into(), Secret("s3cr3t-s3cr3t-s3cr3t".into())));
        assert_eq!(format!("{:?}", t[0].1), "<redacted>");
    }

    #[test]
    fn bad_token_files_name_the_line_but_not_its_text() {
        for text in [
            "alice\n",
            "alice:short\n",
            ":0123456789abcdefXYZ\n",
            "# only a comment\n",
        ] {
            let f = file(text);
            let e = admin_tokens(f.path()).unwrap_err().to_string();
            assert!(e.starts_with("admin_token_file"), "{e}");
            assert!(!e.contains("short") && !e.contains("0123456789"), "{e}");
        }
    }

    #[test]
    fn credentials_are_one_user_password_line() {
        let c = credentials(file("robot:pa:ss\n").path()).unwrap();
        assert_eq!((c.user.as_str(), c.password.0.as_str()), ("robot", "pa:ss"));
        assert!(credentials(file("nopassword\n").path()).is_err());
    }
}

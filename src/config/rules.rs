//! The `[[rules]]` of the config file, checked one by one so an error names the rule's
//! index and key (`rules[2].mode: ...`) instead of toml's position in the file.

use crate::policy::rules::glob_set;
use crate::policy::{Mode, RuleSpec};

use super::ConfigError;

const KEYS: [&str; 3] = ["repositories", "tags", "mode"];

/// Turn the raw `rules` array into rule specs; `[]` is an error (leave the key out to get
/// the built-in rules).
pub fn parse_rules(raw: Vec<toml::Value>) -> Result<Vec<RuleSpec>, ConfigError> {
    if raw.is_empty() {
        return Err(ConfigError::invalid(
            "rules",
            "is empty; leave the key out to get the built-in rules",
        ));
    }
    raw.into_iter().enumerate().map(|(i, v)| parse_rule(i, v)).collect()
}

fn err(index: usize, key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Rule {
        index,
        key: key.to_owned(),
        message: message.into(),
    }
}

fn parse_rule(index: usize, value: toml::Value) -> Result<RuleSpec, ConfigError> {
    let toml::Value::Table(table) = value else {
        return Err(err(index, "", "a rule is a table with repositories, tags and mode"));
    };
    for key in table.keys() {
        if !KEYS.contains(&key.as_str()) {
            return Err(err(index, key, "unknown key (a rule has repositories, tags and mode)"));
        }
    }
    let globs = |key: &str, default: &str| -> Result<Vec<String>, ConfigError> {
        let list = match table.get(key) {
            None => return Ok(vec![default.to_owned()]),
            Some(toml::Value::Array(a)) => a,
            Some(_) => return Err(err(index, key, "must be a list of glob strings")),
        };
        if list.is_empty() {
            return Err(err(index, key, "must not be empty (leave it out for the default)"));
        }
        let mut out = Vec::with_capacity(list.len());
        for item in list {
            let toml::Value::String(s) = item else {
                return Err(err(index, key, "must be a list of glob strings"));
            };
            glob_set(std::slice::from_ref(s)).map_err(|e| err(index, key, format!("bad glob {e}")))?;
            out.push(s.clone());
        }
        Ok(out)
    };
    let repositories = globs("repositories", "**")?;
    let tags = globs("tags", "*")?;
    let mode = match table.get("mode") {
        None => return Err(err(index, "mode", "is required")),
        Some(toml::Value::String(m)) => match m.as_str() {
            "immutable" => Mode::Immutable,
            "mutable" => Mode::Mutable,
            "append-only" => Mode::AppendOnly,
            "audit" => Mode::Audit,
            other => {
                return Err(err(
                    index,
                    "mode",
                    format!("unknown mode {other:?} (immutable, mutable, append-only or audit)"),
                ))
            }
        },
        Some(_) => return Err(err(index, "mode", "must be a string")),
    };
    Ok(RuleSpec {
        repositories,
        tags,
        mode,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(text: &str) -> Result<Vec<RuleSpec>, ConfigError> {
        #[derive(serde::Deserialize)]
        struct F {
            rules: Vec<toml::Value>,
        }
        let f: F = toml::from_str(text).unwrap();
        parse_rules(f.rules)
    }

    #[test]
    fn rules_get_their_defaults() {
        let r = rules("[[rules]]\nmode = \"audit\"\n").unwrap();
        assert_eq!(
            r,
            vec![RuleSpec {
                repositories: vec!["**".into()],
                tags: vec!["*".into()],
                mode: Mode::Audit
            }]
        );
    }

    #[test]
    fn errors_name_the_rule_index_and_key() {
        let cases = [
            (
                "[[rules]]\nmode = \"audit\"\n[[rules]]\nmode = \"immutible\"\n",
                "rules[1].mode: unknown mode",
            ),
            (
                "[[rules]]\nmode = \"audit\"\nrepos = [\"a\"]\n",
                "rules[0].repos: unknown key",
            ),
            (
                "[[rules]]\ntags = [\"a[\"]\nmode = \"audit\"\n",
                "rules[0].tags: bad glob",
            ),
            ("[[rules]]\ntags = [\"x\"]\n", "rules[0].mode: is required"),
            (
                "[[rules]]\nrepositories = \"a\"\nmode = \"audit\"\n",
                "rules[0].repositories: must be a list",
            ),
            (
                "[[rules]]\nrepositories = []\nmode = \"audit\"\n",
                "rules[0].repositories: must not be empty",
            ),
            ("rules = []\n", "rules: is empty"),
        ];
        for (text, want) in cases {
            let e = rules(text).unwrap_err().to_string();
            assert!(e.starts_with(want), "{text:?} gave {e}");
            assert!(!e.contains('\n'));
        }
    }
}

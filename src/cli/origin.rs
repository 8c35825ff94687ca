//! Naming a bad setting the way the operator wrote it: a value from `TAGPIN_REFUSE_STATUS`
//! is reported as `TAGPIN_REFUSE_STATUS`, one from `--refuse-status` as the flag, one
//! from the config file by its key (`refuse_status`, `timeouts.body_idle_ms`).

use clap::error::{ContextKind, ContextValue};
use clap::parser::ValueSource;
use clap::{Arg, ArgMatches, Command, CommandFactory};

use crate::config::ConfigError;

/// The `serve` argument behind a config file key: the field of the same name, except the
/// `[timeouts]` table's keys, whose flags say what they time.
fn arg_id(key: &str) -> &str {
    match key {
        "timeouts.upstream_connect_ms" => "upstream_connect_timeout_ms",
        "timeouts.upstream_header_ms" => "upstream_header_timeout_ms",
        "timeouts.upstream_check_ms" => "upstream_check_timeout_ms",
        "timeouts.body_idle_ms" => "body_idle_timeout_ms",
        "timeouts.client_header_ms" => "client_header_timeout_ms",
        "timeouts.shutdown_grace_ms" => "shutdown_grace_ms",
        "timeouts.manifest_body_ms" => "manifest_body_timeout_ms",
        "timeouts.manifest_budget_wait_ms" => "manifest_budget_wait_ms",
        "timeouts.adoption_wait_ms" => "adoption_wait_timeout_ms",
        other => other,
    }
}

/// Where the value of config `key` came from when not from the file: its environment
/// variable or its flag. `serve` holds `serve`'s matches.
fn origin(serve: &ArgMatches, key: &str) -> Option<String> {
    let id = arg_id(key);
    let command = super::Cli::command();
    let arg = command
        .find_subcommand("serve")?
        .get_arguments()
        .find(|a| a.get_id() == id)?
        .clone();
    match serve.value_source(id)? {
        ValueSource::EnvVariable => arg.get_env().map(|e| e.to_string_lossy().into_owned()),
        ValueSource::CommandLine => arg.get_long().map(|l| format!("--{l}")),
        _ => None,
    }
}

/// A validation error of `serve`'s settings, naming the variable or flag the bad value
/// came from (the file key otherwise).
pub fn describe(e: &ConfigError, serve: Option<&ArgMatches>) -> String {
    match (e, serve) {
        (ConfigError::Invalid { key, message }, Some(m)) => match origin(m, key) {
            Some(from) => format!("{from}: {message}"),
            None => e.to_string(),
        },
        _ => e.to_string(),
    }
}

/// Clap's message for a command line it refused, on one line; a bad value clap read from
/// an environment variable is named by that variable, not by the flag nobody typed.
pub fn usage_message(e: &clap::Error, argv: &[String]) -> String {
    let line = super::one_line(&e.render().to_string());
    let Some(ContextValue::String(invalid)) = e.get(ContextKind::InvalidArg) else {
        return line;
    };
    let Some(long) = invalid.split_whitespace().next().and_then(|f| f.strip_prefix("--")) else {
        return line;
    };
    let typed = argv.iter().any(|a| {
        a.strip_prefix("--")
            .is_some_and(|a| a == long || a.starts_with(&format!("{long}=")))
    });
    if typed {
        return line;
    }
    match env_of(&super::Cli::command(), long) {
        Some(var) if std::env::var_os(&var).is_some() => {
            line.replace(&format!("'{invalid}'"), &format!("{var} (--{long})"))
        }
        _ => line,
    }
}

/// The environment variable of the flag `--long` in any subcommand.
fn env_of(command: &Command, long: &str) -> Option<String> {
    let here = command
        .get_arguments()
        .find(|a: &&Arg| a.get_long() == Some(long))
        .and_then(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned());
    here.or_else(|| command.get_subcommands().find_map(|c| env_of(c, long)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::FromArgMatches;

    fn serve(args: &[&str]) -> ArgMatches {
        let m = super::super::Cli::command().try_get_matches_from(args).unwrap();
        m.subcommand_matches("serve").unwrap().clone()
    }

    #[test]
    fn a_bad_value_is_named_where_it_came_from() {
        let bad = ConfigError::Invalid {
            key: "timeouts.body_idle_ms",
            message: "must be at least 1 ms".into(),
        };
        let m = serve(&["tagpin", "serve", "--body-idle-timeout-ms", "0"]);
        assert_eq!(
            describe(&bad, Some(&m)),
            "--body-idle-timeout-ms: must be at least 1 ms"
        );
        let m = serve(&["tagpin", "serve"]);
        assert_eq!(describe(&bad, Some(&m)), "timeouts.body_idle_ms: must be at least 1 ms");
        assert!(super::super::Cli::from_arg_matches(
            &super::super::Cli::command()
                .try_get_matches_from(["tagpin", "serve"])
                .unwrap()
        )
        .is_ok());
        // Every timeout key names a serve argument.
        let command = super::super::Cli::command();
        let serve = command.find_subcommand("serve").unwrap();
        for key in [
            "timeouts.upstream_connect_ms",
            "timeouts.upstream_header_ms",
            "timeouts.upstream_check_ms",
            "timeouts.body_idle_ms",
            "timeouts.client_header_ms",
            "timeouts.shutdown_grace_ms",
            "timeouts.manifest_body_ms",
            "timeouts.manifest_budget_wait_ms",
            "timeouts.adoption_wait_ms",
            "walk_concurrency",
        ] {
            assert!(serve.get_arguments().any(|a| a.get_id() == arg_id(key)), "{key}");
        }
    }
}

//! The `tagpin` binary: parse the command line, load and validate config, start
//! telemetry, serve until SIGTERM or Ctrl-C. The operator commands are dispatched to
//! `tagpin::cli`, which runs them and returns their exit status.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};
use tagpin::cli::policy::PolicyCommand;
use tagpin::cli::{Cli, Command};
use tagpin::config::{RawConfig, ReloadSource};

/// EX_USAGE from sysexits.h: the configuration is wrong.
const EX_USAGE: u8 = 64;

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args_os().map(|a| a.to_string_lossy().into_owned()).collect();
    let parsed = Cli::command()
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m).map(|cli| (cli, m)));
    let (cli, matches) = match parsed {
        Ok(parsed) => parsed,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("tagpin: {}", tagpin::cli::origin::usage_message(&e, &argv));
            // 64 (EX_USAGE) for serve and policy; the admin clients document 2.
            return ExitCode::from(tagpin::cli::usage_exit_code(std::env::args_os()));
        }
    };
    let args = match cli.command {
        Command::Serve(args) => *args,
        Command::Policy(PolicyCommand::Explain(args)) => {
            return match tagpin::cli::policy::explain(args, &mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("tagpin: {e}");
                    ExitCode::from(EX_USAGE)
                }
            };
        }
        client => return ExitCode::from(tagpin::cli::run_client(client)),
    };
    let file = match args.config.as_deref().map(RawConfig::load).transpose() {
        Ok(file) => file.unwrap_or_default(),
        Err(e) => {
            eprintln!("tagpin: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let reload = args.config.clone().map(|path| ReloadSource {
        path,
        exclude_override: (!args.exclude.is_empty()).then(|| args.exclude.clone()),
        file: file.clone(),
    });
    let config = match args.overlay(file).validate() {
        Ok(mut config) => {
            config.reload = reload;
            config
        }
        Err(e) => {
            let serve = matches.subcommand_matches("serve");
            eprintln!("tagpin: invalid config: {}", tagpin::cli::origin::describe(&e, serve));
            return ExitCode::from(EX_USAGE);
        }
    };
    tagpin::telemetry::init(config.log_format);
    // The main runtime only waits for the shutdown signal; the workers run their own.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tagpin: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(tagpin::run(config, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line on stderr, like a config error: not also a log line saying the same.
            eprintln!("tagpin: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGTERM (how orchestrators stop a container) or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

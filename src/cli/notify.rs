//! `tagpin notify test`: ask the running server to send a test event to its webhook
//! targets, and print each answer.

use std::io::Write;

use clap::{Args, Subcommand};
use http::Method;

use super::client::{AdminArgs, CliError, Client};

#[derive(Debug, Subcommand)]
pub enum NotifyCommand {
    /// Send an `io.tagpin.test` event to every webhook target (or one) now, and print each
    /// answer. Exit 0 when every target answered 2xx, 1 when one did not, 2 on errors.
    Test(TestArgs),
}

#[derive(Debug, Args)]
pub struct TestArgs {
    /// Only the target with this name (or this URL, as configured without credentials).
    #[arg(long, value_name = "URL|NAME")]
    pub target: Option<String>,
    #[command(flatten)]
    pub admin: AdminArgs,
}

pub async fn test(client: &Client, args: &TestArgs, out: &mut dyn Write) -> Result<u8, CliError> {
    let query: Vec<(&str, &str)> = args.target.iter().map(|t| ("target", t.as_str())).collect();
    let answer = client.json(Method::POST, "notify/test", &query, None).await?;
    let targets = answer["targets"]
        .as_array()
        .ok_or_else(|| CliError::Protocol("the answer has no targets list".into()))?;
    let mut all = true;
    for t in targets {
        let name = t["target"].as_str().unwrap_or("?");
        let delivered = t["delivered"].as_bool().unwrap_or(false);
        all &= delivered;
        let line = match (delivered, t["status"].as_u64(), t["error"].as_str()) {
            (true, Some(status), _) => format!("{name}: delivered ({status})"),
            (_, _, Some(error)) => format!("{name}: not delivered: {error}"),
            _ => format!("{name}: not delivered"),
        };
        writeln!(out, "{line}").map_err(|e| CliError::Io(e.to_string()))?;
    }
    Ok(if all { 0 } else { 1 })
}

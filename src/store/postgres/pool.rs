//! The connection pool (r2d2 over rust-postgres, through [`PgTls`]) and the words of its
//! errors. `postgres::Error`'s `Display` is only its kind ("db error", "error performing
//! TLS handshake"), and r2d2 keeps nothing but the last connection error's `Display`, so
//! the cause (the server's message and code, the TLS or network failure) is put into
//! that text here: one line an operator can act on. It never holds the connection string
//! or the password: rust-postgres's errors do not carry them.

use std::error::Error as _;

use postgres::Client;

use super::PgTls;
use crate::store::StoreError;

/// Opens tagpin's sessions: what `r2d2_postgres` does, with errors that say why.
pub(super) struct Manager {
    pub config: postgres::Config,
    pub tls: PgTls,
}

/// A connection that could not be opened or kept.
#[derive(Debug)]
pub(super) struct ConnectError(postgres::Error);

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&describe(&self.0))
    }
}

impl std::error::Error for ConnectError {}

impl r2d2::ManageConnection for Manager {
    type Connection = Client;
    type Error = ConnectError;

    fn connect(&self) -> Result<Client, ConnectError> {
        self.config.connect(self.tls.clone()).map_err(ConnectError)
    }

    fn is_valid(&self, c: &mut Client) -> Result<(), ConnectError> {
        c.simple_query("").map(drop).map_err(ConnectError)
    }

    fn has_broken(&self, c: &mut Client) -> bool {
        c.is_closed()
    }
}

/// A server error as its message and SQLSTATE; any other error with its cause.
fn describe(e: &postgres::Error) -> String {
    match (e.as_db_error(), e.source()) {
        (Some(d), _) => format!("{} ({})", d.message(), d.code().code()),
        (None, Some(cause)) => format!("{e}: {cause}"),
        (None, None) => e.to_string(),
    }
}

pub(super) fn db(e: postgres::Error) -> StoreError {
    StoreError::Unavailable(format!("database: {}", describe(&e)))
}

pub(super) fn pool_err(e: r2d2::Error) -> StoreError {
    StoreError::Unavailable(format!("database: {e}"))
}

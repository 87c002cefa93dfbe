//! `sql.ping`: host-native database connect + `SELECT 1`.
//! TODO(issue 6): the PostgreSQL client; until then an allowed call answers `unsupported`.

use crate::plugins::bindings::credhost::provider::{sql, types::Error};
use crate::plugins::manifest::Capability;
use crate::plugins::state::CallState;

impl sql::Host for CallState {
    fn ping(&mut self, dsn_field: String) -> Result<sql::PingResult, Error> {
        self.gate(Capability::Sql, &dsn_field)?;
        Err(Error::Unsupported("sql.ping is not implemented by this host yet".into()))
    }
}

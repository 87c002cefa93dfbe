//! A database connection string (PostgreSQL or MySQL/MariaDB), stored whole as a secret.
//!
//! `validate` parses the DSN (see [`dsn`]) without ever quoting it back; `test` asks the
//! host to connect and run `SELECT 1` (`sql.ping`).

mod dsn;

use credhost_sdk::outcome::{self, OutcomeExt};
use credhost_sdk::prelude::*;
use credhost_sdk::sql;

struct DbDsn;

credhost_sdk::export!(DbDsn);

fn descriptor() -> Descriptor {
    Descriptor {
        id: "db_dsn".into(),
        display_name: "Database connection string".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        description: "A PostgreSQL or MySQL/MariaDB connection string with its credentials, \
                      as a URL (postgres://user:password@host:5432/db) or as PostgreSQL \
                      key=value pairs."
            .into(),
        fields: vec![spec::secret("dsn", "Connection string").required().help(
            "postgres://, postgresql://, mysql:// or mariadb:// URL, or host=… port=… dbname=… user=… password=…",
        )],
        environments: vec![],
    }
}

impl Guest for DbDsn {
    fn describe() -> Descriptor {
        descriptor()
    }

    fn validate(input: Vec<FieldValue>) -> Result<Vec<FieldValue>, Vec<FieldError>> {
        let form = Form::new(descriptor(), input);
        let mut errors = Errors::new();
        if let Some(dsn) = form.get("dsn") {
            errors.check("dsn", dsn::check(dsn));
        }
        form.finish(errors)
    }

    fn test(_ctx: TestContext) -> Result<TestOutcome, Error> {
        match sql::ping("dsn") {
            Ok(ping) => Ok(valid("connected and ran SELECT 1")
                .fact("server_version", outcome::clip(&ping.server_version))
                .fact("latency_ms", ping.latency_ms)),
            Err(Error::Rejected(_)) => Ok(invalid("authentication failed")),
            Err(e) => outcome::from_error(e),
        }
    }

    /// A DSN is handed to a database client, not applied to HTTP requests.
    fn authenticate(_ctx: TestContext) -> Result<AuthPlan, Error> {
        Err(no_http_use("Database DSN"))
    }
}

//! `secrets.reveal`: plaintext of one secret field, for plugins whose manifest lists it.

use secrecy::ExposeSecret;

use crate::plugins::bindings::credhost::provider::{secrets, types::Error};
use crate::plugins::manifest::Capability;
use crate::plugins::state::{CallState, Phase};

impl secrets::Host for CallState {
    fn reveal(&mut self, field: String) -> Result<String, Error> {
        self.gate(Capability::Secrets, &format!("reveal {field}"))?;
        if self.phase != Phase::Test {
            self.refuse(Capability::Secrets, format!("reveal {field} outside test"));
            return Err(Error::Denied("secrets.reveal is only available during `test`".into()));
        }
        if !self.manifest.reveal.iter().any(|f| f == &field) {
            self.refuse(Capability::Secrets, format!("reveal {field} (not in manifest `reveal`)"));
            return Err(Error::Denied(format!("field `{field}` is not in the manifest's `reveal` list")));
        }
        match self.bound.secrets.get(&field) {
            Some(v) => Ok(v.expose_secret().to_string()),
            None => Err(Error::Unsupported(format!("secret field `{field}` is not set"))),
        }
    }
}

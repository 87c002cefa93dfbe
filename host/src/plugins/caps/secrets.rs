//! `secrets.reveal`: plaintext of one secret field, for plugins whose manifest lists it.
//! Audited as `plugin.secrets.reveal` (the host filling secrets into a request is not
//! a reveal to the plugin: that is `credential.unseal` plus the capability's own event).

use secrecy::ExposeSecret;

use crate::plugins::bindings::credhost::provider::{secrets, types::Error};
use crate::plugins::manifest::Capability;
use crate::plugins::state::{CallState, Phase};

impl secrets::Host for CallState {
    fn reveal(&mut self, field: String) -> Result<String, Error> {
        self.gate(Capability::Secrets, &format!("field {field}: plaintext to the plugin"))?;
        if self.phase != Phase::Test {
            self.refuse(Capability::Secrets, format!("field {field}: refused outside test"));
            return Err(Error::Denied("secrets.reveal is only available during `test`".into()));
        }
        if !self.manifest.reveal.iter().any(|f| f == &field) {
            self.refuse(Capability::Secrets, format!("field {field}: refused, not in the manifest's `reveal`"));
            return Err(Error::Denied(format!("field `{field}` is not in the manifest's `reveal` list")));
        }
        match self.bound.secrets.get(&field) {
            Some(v) => Ok(v.expose_secret().to_string()),
            None => Err(Error::Unsupported(format!("secret field `{field}` is not set"))),
        }
    }
}

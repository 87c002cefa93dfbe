//! Audited reveal: reading a credential's secrets back, for programs that can only take
//! them from environment variables (an MCP server, a database client). Everything else
//! should use the proxy; this needs the `reveal` scope (never in a default token, never in
//! a grant) and a type whose `[use]` policy says `reveal = true`.

use std::collections::BTreeMap;

use secrecy::{ExposeSecret, SecretString};
use serde::ser::{Serialize, SerializeMap, SerializeStruct, Serializer};

use super::{require, Result, Service, ServiceError};
use crate::store::{Outcome, Principal, Scope};

/// The audit purpose of a reveal through the API (`credhost exec` uses it too).
pub const REVEAL_PURPOSE: &str = "reveal to caller";

/// A credential in clear: every field (secret ones included) and the type's `[use.env]`
/// variables. Values are zeroized on drop; `Debug` shows names only.
#[derive(utoipa::ToSchema)]
pub struct Revealed {
    /// Every field by name, secret ones in clear.
    #[schema(value_type = BTreeMap<String, String>)]
    pub fields: BTreeMap<String, SecretString>,
    /// The environment variables the type declares (`[use.env]`), e.g. `APCA_API_KEY_ID`.
    #[schema(value_type = BTreeMap<String, String>)]
    pub env: BTreeMap<String, SecretString>,
}

impl std::fmt::Debug for Revealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revealed")
            .field("fields", &self.fields.keys().collect::<Vec<_>>())
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Serialized by hand: `SecretString` deliberately has no `Serialize`, and this is the
/// one response that carries secrets on purpose.
impl Serialize for Revealed {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        struct Clear<'a>(&'a BTreeMap<String, SecretString>);
        impl Serialize for Clear<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                let mut m = s.serialize_map(Some(self.0.len()))?;
                for (k, v) in self.0 {
                    m.serialize_entry(k, v.expose_secret())?;
                }
                m.end()
            }
        }
        let mut st = s.serialize_struct("Revealed", 2)?;
        st.serialize_field("fields", &Clear(&self.fields))?;
        st.serialize_field("env", &Clear(&self.env))?;
        st.end()
    }
}

impl Service {
    /// Credential `id` in clear (scope `reveal`; the type must allow it). Audited as
    /// `credential.reveal` before anything is returned; a refusal by type is audited too.
    pub fn reveal(&self, p: &Principal, id: &str) -> Result<Revealed> {
        require(p, Scope::Reveal)?;
        // Grants never carry `reveal`; refuse them outright should one ever be issued with it.
        if p.grant.is_some() {
            return Err(ServiceError::GrantOnly);
        }
        let c = self.live(p, id)?;
        let plugin = self.registry().get(&c.kind)?;
        let Some(policy) = plugin.manifest.use_policy.as_ref().filter(|u| u.reveal) else {
            self.audit(p, Some(c.id), "credential.reveal", Outcome::Denied, format!("type `{}` does not allow reveal", c.kind));
            return Err(ServiceError::RevealNotAllowed(c.kind));
        };
        // Resolved before decrypting, so a credential that cannot be used reveals nothing.
        let base_url = match policy.proxy() {
            true => Some(
                plugin
                    .manifest
                    .use_base_url(c.environment.as_deref(), &c.fields)
                    .map_err(|m| ServiceError::NotImplemented(format!("credential cannot be revealed: {m}")))?,
            ),
            false => None,
        };
        let secrets = self.secrets_of(p, &plugin, &c, REVEAL_PURPOSE)?;
        let env = policy
            .env_vars(base_url.as_ref(), c.environment.as_deref(), &c.fields, &secrets)
            .map_err(|m| ServiceError::BadInput(format!("credential cannot be revealed: {m}")))?;
        let mut fields: BTreeMap<String, SecretString> =
            c.fields.iter().map(|(k, v)| (k.clone(), SecretString::from(v.clone()))).collect();
        fields.extend(secrets);
        Ok(Revealed { fields, env })
    }
}

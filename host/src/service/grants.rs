//! Grants: tokens bound to one credential, for agents that use it through the proxy.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::{parse_id, require, require_unbound, IssuedToken, Result, Service, ServiceError};
use crate::plugins::manifest::{is_plain_path, under_prefix};
use crate::plugins::FieldError;
use crate::store::{Grant, Principal, Scope, TokenInfo, TokenSpec};

/// Longest grant lifetime: 30 days. Grants are for a task, not for keeps.
pub const MAX_GRANT_TTL_SECS: u64 = 30 * 24 * 3600;

/// A new grant: its lifetime and what its holder may do.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewGrant {
    /// Lifetime in seconds (1 to 2592000).
    #[schema(schema_with = crate::api::openapi::grant_ttl_schema)]
    pub ttl_secs: u64,
    /// HTTP methods the holder may use; empty = what the type allows.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Path prefixes the holder may reach (`/v2/positions`); empty = what the type allows.
    #[serde(default)]
    pub path_prefixes: Vec<String>,
    /// Proxy calls in all; absent = no budget.
    #[serde(default)]
    pub max_calls: Option<u64>,
    #[serde(default)]
    pub label: String,
}

/// A grant as shown to the credential's owner (never its token).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct GrantView {
    pub grant_id: String,
    #[schema(format = Uuid)]
    pub credential: String,
    pub label: String,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub revoked_at: Option<String>,
    pub methods: Vec<String>,
    pub path_prefixes: Vec<String>,
    pub max_calls: Option<u64>,
    pub calls: u64,
}

impl GrantView {
    fn of(info: &TokenInfo) -> Option<GrantView> {
        let g = info.grant.as_ref()?;
        Some(GrantView {
            grant_id: info.id.clone(),
            credential: g.credential.to_string(),
            label: info.label.clone(),
            created_at: super::rfc3339(info.created_at),
            expires_at: info.expires_at.map(super::rfc3339),
            revoked_at: info.revoked_at.map(super::rfc3339),
            methods: g.methods.clone(),
            path_prefixes: g.path_prefixes.clone(),
            max_calls: g.max_calls,
            calls: g.calls,
        })
    }
}

/// A new grant: its token is in here once.
#[derive(Debug)]
pub struct IssuedGrant {
    pub grant: GrantView,
    pub token: IssuedToken,
}

const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// A path prefix as the proxy compares it: absolute, no `.`/`..` segments, no query.
pub fn check_prefix(prefix: &str) -> std::result::Result<(), String> {
    if !prefix.starts_with('/') {
        return Err(format!("path prefix {prefix:?} must start with `/`"));
    }
    // The proxy's own path rule (no `.`/`..` even encoded, no encoded slashes, no
    // backslashes or controls), plus no query or fragment.
    if prefix.contains(['?', '#']) || !is_plain_path(prefix) {
        return Err(format!(
            "path prefix {prefix:?} must not contain `?`, `#`, `\\`, encoded slashes or `.`/`..` segments"
        ));
    }
    Ok(())
}

impl Service {
    /// Issues a grant for credential `id` (needs `write` and `use`; a grant cannot make grants).
    pub fn create_grant(&self, p: &Principal, id: &str, req: NewGrant) -> Result<IssuedGrant> {
        require_unbound(p, Scope::Write)?;
        require(p, Scope::Use)?;
        let c = self.live(p, id)?;
        let mut errors = Vec::new();
        if req.ttl_secs == 0 || req.ttl_secs > MAX_GRANT_TTL_SECS {
            errors.push(FieldError {
                field: "ttl_secs".into(),
                message: format!("must be between 1 and {MAX_GRANT_TTL_SECS} seconds (30 days)"),
            });
        }
        let methods: Vec<String> = req.methods.iter().map(|m| m.trim().to_ascii_uppercase()).collect();
        if let Some(bad) = methods.iter().find(|m| !METHODS.contains(&m.as_str())) {
            errors.push(FieldError { field: "methods".into(), message: format!("unknown HTTP method {bad:?}") });
        }
        for prefix in &req.path_prefixes {
            if let Err(message) = check_prefix(prefix) {
                errors.push(FieldError { field: "path_prefixes".into(), message });
            }
        }
        if req.max_calls == Some(0) {
            errors.push(FieldError { field: "max_calls".into(), message: "must be at least 1 when given".into() });
        }
        if req.label.chars().count() > 200 {
            errors.push(FieldError { field: "label".into(), message: "at most 200 characters".into() });
        }
        // A grant narrows the type's `[use]` policy; it can never widen it.
        let plugin = self.registry().get(&c.kind)?;
        let policy = super::proxy::http_use(&plugin)?;
        if let Some(m) = methods.iter().find(|m| !policy.methods.iter().any(|pm| pm.eq_ignore_ascii_case(m))) {
            errors.push(FieldError {
                field: "methods".into(),
                message: format!("{m} is not allowed for type `{}` (it allows {})", c.kind, policy.methods.join(", ")),
            });
        }
        for prefix in &req.path_prefixes {
            if !policy.path_prefixes.iter().any(|pp| under_prefix(prefix, pp)) {
                errors.push(FieldError {
                    field: "path_prefixes".into(),
                    message: format!("{prefix:?} is outside the paths type `{}` allows ({})", c.kind, policy.path_prefixes.join(", ")),
                });
            }
        }
        if !errors.is_empty() {
            return Err(ServiceError::InvalidFields(errors));
        }
        let methods: Vec<String> = methods.into_iter().collect::<BTreeSet<_>>().into_iter().collect();
        let spec = TokenSpec {
            role: Some(crate::store::Role::User),
            scopes: Some([Scope::Read, Scope::Use].into()),
            grant: Some(Grant {
                credential: c.id,
                methods,
                path_prefixes: req.path_prefixes,
                max_calls: req.max_calls,
                calls: 0,
            }),
            expires_at: Some(crate::store::now_ms() + req.ttl_secs * 1000),
            label: req.label,
        };
        let (info, token) = self.store().issue_token(&p.user, &p.user, spec)?;
        let grant = GrantView::of(&info).ok_or_else(|| ServiceError::Internal("grant without binding".into()))?;
        Ok(IssuedGrant { grant, token: IssuedToken { info, token } })
    }

    /// The grants of credential `id`, newest last (revoked and expired ones included).
    pub fn list_grants(&self, p: &Principal, id: &str) -> Result<Vec<GrantView>> {
        require_unbound(p, Scope::Read)?;
        let c = self.live(p, id)?;
        Ok(self
            .store()
            .list_tokens(Some(&p.user))?
            .iter()
            .filter(|t| t.grant.as_ref().is_some_and(|g| g.credential == c.id))
            .filter_map(GrantView::of)
            .collect())
    }

    /// Revokes one grant of credential `id`.
    pub fn revoke_grant(&self, p: &Principal, id: &str, grant_id: &str) -> Result<GrantView> {
        require_unbound(p, Scope::Write)?;
        let cid = parse_id(id)?;
        let owned = self
            .store()
            .list_tokens(Some(&p.user))?
            .into_iter()
            .any(|t| t.id == grant_id && t.grant.as_ref().is_some_and(|g| g.credential == cid));
        if !owned {
            return Err(ServiceError::NotFound);
        }
        let info = self.store().revoke_token(&p.user, grant_id)?;
        GrantView::of(&info).ok_or(ServiceError::NotFound)
    }
}

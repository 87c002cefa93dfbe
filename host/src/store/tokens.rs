//! API tokens: `chst_` + 256 random bits (base64url). Only SHA-256 of the token text is
//! stored; the plaintext is returned once, at creation.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use super::kv::Table;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::audit::{self, AuditEntry};
use super::error::{Result, StoreError};
use super::schema::{dec, enc, NamespaceId, TOKENS, USERS};
use super::{now_ms, Role, Store, User};
use super::schema::CredentialId;
use std::collections::BTreeSet;
use crate::crypto::{random_bytes, sha256};

/// Prefix of every token (lets secret scanners recognise leaked tokens).
pub const TOKEN_PREFIX: &str = "chst_";

/// What a token may do. Every API route and service operation needs one scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Credential metadata, types, the caller's audit records.
    Read,
    /// Create, change, delete and restore credentials; create grants.
    Write,
    /// Offline validation and live tests (they decrypt the credential for the plugin).
    Test,
    /// Requests through the proxy with the credential applied.
    Use,
    /// Reading secret values back (`/reveal`, `credhost exec`). Never in a default token.
    Reveal,
    /// Users, tokens, plugins. Only for admin users.
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 6] = [Scope::Read, Scope::Write, Scope::Test, Scope::Use, Scope::Reveal, Scope::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Test => "test",
            Scope::Use => "use",
            Scope::Reveal => "reveal",
            Scope::Admin => "admin",
        }
    }

    /// A user's default token: everything but `reveal`, and `admin` only for admins.
    pub fn defaults(role: Role) -> BTreeSet<Scope> {
        let mut s: BTreeSet<Scope> = [Scope::Read, Scope::Write, Scope::Test, Scope::Use].into();
        if role == Role::Admin {
            s.insert(Scope::Admin);
        }
        s
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Scope::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| format!("unknown scope `{s}` (one of: read, write, test, use, reveal, admin)"))
    }
}

/// A grant: a token bound to one credential, usable only through its proxy (and to
/// read that credential's metadata), within methods, path prefixes and a call budget.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Grant {
    #[schema(value_type = String)]
    pub credential: CredentialId,
    /// Upper-case HTTP methods; empty = what the type's `[use]` policy allows.
    pub methods: Vec<String>,
    /// Path prefixes (segment-bounded); empty = what the type's `[use]` policy allows.
    pub path_prefixes: Vec<String>,
    /// Proxy calls allowed in all; `None` = no budget.
    pub max_calls: Option<u64>,
    /// Proxy calls made so far.
    #[serde(default)]
    pub calls: u64,
}

/// A token's stored record (no secret in it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub id: String,
    pub user: String,
    pub role: Role,
    pub label: String,
    pub created_at: u64,
    /// Unix ms after which the token is refused; `None` = never expires.
    pub expires_at: Option<u64>,
    pub revoked_at: Option<u64>,
    /// `None` in records written before scopes existed: the role's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<BTreeSet<Scope>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<Grant>,
}

impl TokenInfo {
    pub fn scopes(&self) -> BTreeSet<Scope> {
        self.scopes.clone().unwrap_or_else(|| Scope::defaults(self.role))
    }
}

/// What to issue: [`Store::issue_token`].
#[derive(Debug, Clone, Default)]
pub struct TokenSpec {
    /// Defaults to the user's role; may not exceed it.
    pub role: Option<Role>,
    /// Defaults to [`Scope::defaults`] of the role.
    pub scopes: Option<BTreeSet<Scope>>,
    pub grant: Option<Grant>,
    pub expires_at: Option<u64>,
    pub label: String,
}

/// Who a valid token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user: String,
    pub role: Role,
    pub namespace: NamespaceId,
    pub token_id: String,
    pub scopes: BTreeSet<Scope>,
    /// Set for a grant: the principal may touch this one credential only.
    pub grant: Option<Grant>,
}

impl Principal {
    /// The operator acting for `user` from the command line or the config file: every
    /// scope the user's role allows (the operator holds the master key anyway).
    pub fn operator(user: &User, actor: &str) -> Principal {
        let mut scopes = Scope::defaults(user.role);
        scopes.insert(Scope::Reveal);
        Principal {
            user: user.name.clone(),
            role: user.role,
            namespace: user.namespace,
            token_id: actor.into(),
            scopes,
            grant: None,
        }
    }

    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }
}

/// Why a presented token was refused. Grants say why (an agent needs to know whether to
/// ask for a new one); ordinary tokens are just unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRefusal {
    Unknown,
    GrantExpired,
    GrantRevoked,
}

impl Store {
    /// Creates a token for `user`. `role` defaults to the user's role and may not exceed
    /// it. Returns the record and the plaintext token — shown once, never stored.
    pub fn create_token(
        &self,
        actor: &str,
        user: &str,
        role: Option<Role>,
        expires_at: Option<u64>,
        label: &str,
    ) -> Result<(TokenInfo, SecretString)> {
        self.issue_token(actor, user, TokenSpec { role, expires_at, label: label.into(), ..TokenSpec::default() })
    }

    /// Creates a token (or a grant) as `spec` says. Scopes may not exceed the role: `admin`
    /// needs an admin user.
    pub fn issue_token(&self, actor: &str, user: &str, spec: TokenSpec) -> Result<(TokenInfo, SecretString)> {
        let mut raw = Zeroizing::new([0u8; 32]);
        random_bytes(&mut raw[..])?;
        let mut text = String::with_capacity(TOKEN_PREFIX.len() + 43);
        text.push_str(TOKEN_PREFIX);
        URL_SAFE_NO_PAD.encode_string(&raw[..], &mut text);
        let token = SecretString::from(text);
        let hash = sha256(token.expose_secret().as_bytes());

        let txn = self.begin_write()?;
        let info = {
            let users = txn.open_table(USERS)?;
            let owner: User = dec(
                users.get(user)?.ok_or(StoreError::NotFound)?.value(),
                "user",
            )?;
            let role = spec.role.unwrap_or(owner.role);
            let scopes = spec.scopes.unwrap_or_else(|| Scope::defaults(role));
            if (role == Role::Admin || scopes.contains(&Scope::Admin)) && owner.role != Role::Admin {
                return Err(StoreError::Invalid(
                    "a token cannot carry more rights than its user".into(),
                ));
            }
            let kind = if spec.grant.is_some() { "grant" } else { "token" };
            let info = TokenInfo {
                id: format!("{}_{}", if spec.grant.is_some() { "grt" } else { "tok" }, uuid::Uuid::now_v7().simple()),
                user: user.to_owned(),
                role,
                label: spec.label,
                created_at: now_ms(),
                expires_at: spec.expires_at,
                revoked_at: None,
                scopes: Some(scopes),
                grant: spec.grant,
            };
            txn.open_table(TOKENS)?
                .insert(hash.as_slice(), enc(&info).as_slice())?;
            let mut entry = AuditEntry::ok(actor, &format!("{kind}.create"))
                .ns(owner.namespace)
                .detail(format!("{kind}={} user={user}", info.id));
            entry.credential = info.grant.as_ref().map(|g| g.credential);
            audit::append(&txn, entry)?;
            info
        };
        txn.commit()?;
        Ok((info, token))
    }

    /// Counts one proxy call against a grant's budget, in its own durable write (a crash
    /// never hands out calls twice). `Ok(false)`: the budget is spent.
    pub fn consume_grant_call(&self, token_id: &str) -> Result<bool> {
        let txn = self.begin_write()?;
        let ok = {
            let mut tokens = txn.open_table(TOKENS)?;
            let (key, mut info) = find_token(&tokens, token_id)?.ok_or(StoreError::NotFound)?;
            let Some(grant) = info.grant.as_mut() else { return Ok(true) };
            if grant.max_calls.is_some_and(|max| grant.calls >= max) {
                false
            } else {
                grant.calls += 1;
                tokens.insert(key.as_slice(), enc(&info).as_slice())?;
                true
            }
        };
        txn.commit()?;
        Ok(ok)
    }

    /// Resolves a presented token: `Some` only if it exists, is not revoked or expired,
    /// and its user still exists. Malformed, unknown, revoked and expired tokens are all
    /// just `None`.
    pub fn authenticate(&self, token: &str) -> Result<Option<Principal>> {
        Ok(self.authenticate_detailed(token)?.ok())
    }

    /// Like [`Store::authenticate`], saying why a grant was refused.
    pub fn authenticate_detailed(&self, token: &str) -> Result<std::result::Result<Principal, TokenRefusal>> {
        if !token.starts_with(TOKEN_PREFIX) || token.len() > 128 {
            return Ok(Err(TokenRefusal::Unknown));
        }
        let hash = sha256(token.as_bytes());
        let txn = self.begin_read()?;
        let tokens = txn.open_table(TOKENS)?;
        let Some(hit) = tokens.range(hash.as_slice()..=hash.as_slice())?.next() else {
            return Ok(Err(TokenRefusal::Unknown));
        };
        let (key, row) = hit?;
        // The lookup already matched; compare again in constant time so the decision
        // never rests on a short-circuiting byte comparison.
        if !bool::from(key.value().ct_eq(hash.as_slice())) {
            return Ok(Err(TokenRefusal::Unknown));
        }
        let info: TokenInfo = dec(row.value(), "token")?;
        let is_grant = info.grant.is_some();
        if info.revoked_at.is_some() {
            return Ok(Err(if is_grant { TokenRefusal::GrantRevoked } else { TokenRefusal::Unknown }));
        }
        if info.expires_at.is_some_and(|t| t <= now_ms()) {
            return Ok(Err(if is_grant { TokenRefusal::GrantExpired } else { TokenRefusal::Unknown }));
        }
        let users = txn.open_table(USERS)?;
        let Some(u) = users.get(info.user.as_str())? else {
            return Ok(Err(TokenRefusal::Unknown));
        };
        let user: User = dec(u.value(), "user")?;
        let scopes = info.scopes();
        Ok(Ok(Principal {
            user: user.name,
            role: info.role,
            namespace: user.namespace,
            token_id: info.id,
            scopes,
            grant: info.grant,
        }))
    }

    /// Tokens of `user` (all users when `None`), oldest first.
    pub fn list_tokens(&self, user: Option<&str>) -> Result<Vec<TokenInfo>> {
        let txn = self.begin_read()?;
        let tokens = txn.open_table(TOKENS)?;
        let mut out = Vec::new();
        for row in tokens.iter()? {
            let info: TokenInfo = dec(row?.1.value(), "token")?;
            if user.is_none_or(|u| u == info.user) {
                out.push(info);
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id)); // UUIDv7 ids sort by creation time
        Ok(out)
    }

    /// Revokes a token by id (idempotent for an already revoked one).
    pub fn revoke_token(&self, actor: &str, token_id: &str) -> Result<TokenInfo> {
        let txn = self.begin_write()?;
        let info = {
            let mut tokens = txn.open_table(TOKENS)?;
            let (key, mut info) = find_token(&tokens, token_id)?.ok_or(StoreError::NotFound)?;
            if info.revoked_at.is_none() {
                info.revoked_at = Some(now_ms());
                tokens.insert(key.as_slice(), enc(&info).as_slice())?;
            }
            info
        };
        let mut entry = AuditEntry::ok(actor, if info.grant.is_some() { "grant.revoke" } else { "token.revoke" })
            .detail(format!("token={token_id} user={}", info.user));
        // In the owner's namespace, like `token.create`: the user sees it in their audit log.
        if let Some(u) = txn.open_table(USERS)?.get(info.user.as_str())? {
            let owner: User = dec(u.value(), "user")?;
            entry = entry.ns(owner.namespace);
        }
        entry.credential = info.grant.as_ref().map(|g| g.credential);
        audit::append(&txn, entry)?;
        txn.commit()?;
        Ok(info)
    }
}

/// The stored key and record of the token with id `token_id` (a scan: tokens are keyed
/// by hash, and there are few).
fn find_token(
    tokens: &Table<'_, &'static [u8], &'static [u8]>,
    token_id: &str,
) -> Result<Option<(Vec<u8>, TokenInfo)>> {
    for row in tokens.iter()? {
        let (k, v) = row?;
        let info: TokenInfo = dec(v.value(), "token")?;
        if info.id == token_id {
            return Ok(Some((k.value().to_vec(), info)));
        }
    }
    Ok(None)
}

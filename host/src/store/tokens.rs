//! API tokens: `chst_` + 256 random bits (base64url). Only SHA-256 of the token text is
//! stored; the plaintext is returned once, at creation.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use redb::{ReadableDatabase, ReadableTable};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::audit::{self, AuditEntry};
use super::error::{Result, StoreError};
use super::schema::{dec, enc, NamespaceId, TOKENS, USERS};
use super::{now_ms, Role, Store, User};
use crate::crypto::{random_bytes, sha256};

/// Prefix of every token (lets secret scanners recognise leaked tokens).
pub const TOKEN_PREFIX: &str = "chst_";

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
}

/// Who a valid token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user: String,
    pub role: Role,
    pub namespace: NamespaceId,
    pub token_id: String,
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
            let role = role.unwrap_or(owner.role);
            if role == Role::Admin && owner.role != Role::Admin {
                return Err(StoreError::Invalid(
                    "a token cannot carry more rights than its user".into(),
                ));
            }
            let info = TokenInfo {
                id: format!("tok_{}", uuid::Uuid::now_v7().simple()),
                user: user.to_owned(),
                role,
                label: label.to_owned(),
                created_at: now_ms(),
                expires_at,
                revoked_at: None,
            };
            txn.open_table(TOKENS)?
                .insert(hash.as_slice(), enc(&info).as_slice())?;
            audit::append(
                &txn,
                AuditEntry::ok(actor, "token.create")
                    .ns(owner.namespace)
                    .detail(format!("token={} user={user}", info.id)),
            )?;
            info
        };
        txn.commit()?;
        Ok((info, token))
    }

    /// Resolves a presented token: `Some` only if it exists, is not revoked or expired,
    /// and its user still exists. Malformed, unknown, revoked and expired tokens are all
    /// just `None`.
    pub fn authenticate(&self, token: &str) -> Result<Option<Principal>> {
        if !token.starts_with(TOKEN_PREFIX) || token.len() > 128 {
            return Ok(None);
        }
        let hash = sha256(token.as_bytes());
        let txn = self.db.begin_read()?;
        let tokens = txn.open_table(TOKENS)?;
        let Some(hit) = tokens.range(hash.as_slice()..=hash.as_slice())?.next() else {
            return Ok(None);
        };
        let (key, row) = hit?;
        // The lookup already matched; compare again in constant time so the decision
        // never rests on a short-circuiting byte comparison.
        let found = bool::from(key.value().ct_eq(hash.as_slice()));
        let info: TokenInfo = dec(row.value(), "token")?;
        if !found || info.revoked_at.is_some() || info.expires_at.is_some_and(|t| t <= now_ms()) {
            return Ok(None);
        }
        let users = txn.open_table(USERS)?;
        let Some(u) = users.get(info.user.as_str())? else {
            return Ok(None);
        };
        let user: User = dec(u.value(), "user")?;
        Ok(Some(Principal {
            user: user.name,
            role: info.role,
            namespace: user.namespace,
            token_id: info.id,
        }))
    }

    /// Tokens of `user` (all users when `None`), oldest first.
    pub fn list_tokens(&self, user: Option<&str>) -> Result<Vec<TokenInfo>> {
        let txn = self.db.begin_read()?;
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
            let mut hit = None;
            for row in tokens.iter()? {
                let (k, v) = row?;
                let info: TokenInfo = dec(v.value(), "token")?;
                if info.id == token_id {
                    hit = Some((k.value().to_vec(), info));
                    break;
                }
            }
            let (key, mut info) = hit.ok_or(StoreError::NotFound)?;
            if info.revoked_at.is_none() {
                info.revoked_at = Some(now_ms());
                tokens.insert(key.as_slice(), enc(&info).as_slice())?;
            }
            info
        };
        audit::append(
            &txn,
            AuditEntry::ok(actor, "token.revoke")
                .detail(format!("token={token_id} user={}", info.user)),
        )?;
        txn.commit()?;
        Ok(info)
    }
}

//! Users and tokens: the operator's operations (CLI, config) and their API forms —
//! `admin_*` for admins acting on anyone, `own_*` for a user's own tokens.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::{require_admin, require_unbound, rfc3339, token_expiry, IssuedToken, Result, Service, ServiceError};
use crate::store::{now_ms, Principal, Role, Scope, TokenInfo, User};

/// A user as listed (`GET /api/admin/users`, `credhost users list`).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UserView {
    pub name: String,
    /// `admin` or `user`.
    #[schema(value_type = String)]
    pub role: Role,
    pub namespace: String,
    pub created_at: String,
}

impl From<User> for UserView {
    fn from(u: User) -> Self {
        UserView { name: u.name, role: u.role, namespace: u.namespace.to_string(), created_at: rfc3339(u.created_at) }
    }
}

/// A token as listed: its record, never its value (only a hash of it is stored anyway).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenView {
    pub id: String,
    pub user: String,
    /// `admin` or `user`.
    #[schema(value_type = String)]
    pub role: Role,
    /// `token`, or `grant` for a token bound to one credential.
    pub kind: String,
    /// The credential a grant is bound to.
    pub credential: Option<String>,
    pub scopes: Vec<Scope>,
    /// `active`, `expired` or `revoked`.
    pub state: String,
    pub label: String,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub revoked_at: Option<String>,
    /// This is the token the request was made with.
    pub current: bool,
}

impl TokenView {
    fn of(t: TokenInfo, current: Option<&str>) -> TokenView {
        let state = if t.revoked_at.is_some() {
            "revoked"
        } else if t.expires_at.is_some_and(|e| e <= now_ms()) {
            "expired"
        } else {
            "active"
        };
        TokenView {
            current: current == Some(t.id.as_str()),
            scopes: t.scopes().into_iter().collect(),
            kind: if t.grant.is_some() { "grant" } else { "token" }.into(),
            credential: t.grant.as_ref().map(|g| g.credential.to_string()),
            state: state.into(),
            created_at: rfc3339(t.created_at),
            expires_at: t.expires_at.map(rfc3339),
            revoked_at: t.revoked_at.map(rfc3339),
            id: t.id,
            user: t.user,
            role: t.role,
            label: t.label,
        }
    }
}

impl Service {
    /// Creates a user (with namespace and data key) and a first token.
    pub fn add_user(&self, actor: &str, name: &str, role: Role) -> Result<(User, IssuedToken)> {
        let user = self.store.add_user(actor, name, role)?;
        let token = self.issue_token(actor, name, None, "initial")?;
        Ok((user, token))
    }

    /// `expires_in_secs`: lifetime from now (at most [`super::MAX_TOKEN_LIFETIME_SECS`]);
    /// `None` means no expiry. Checked before anything is written.
    pub fn issue_token(&self, actor: &str, user: &str, expires_in_secs: Option<u64>, label: &str) -> Result<IssuedToken> {
        self.issue_scoped_token(actor, user, expires_in_secs, label, None)
    }

    /// A token with the given scopes (`None`: the role's defaults). `admin` needs an admin user.
    pub fn issue_scoped_token(
        &self,
        actor: &str,
        user: &str,
        expires_in_secs: Option<u64>,
        label: &str,
        scopes: Option<BTreeSet<Scope>>,
    ) -> Result<IssuedToken> {
        let expires_at = token_expiry(expires_in_secs)?;
        let spec = crate::store::TokenSpec { scopes, expires_at, label: label.into(), ..Default::default() };
        let (info, token) = self.store.issue_token(actor, user, spec)?;
        Ok(IssuedToken { info, token })
    }

    /// All users, by name.
    pub fn list_users(&self) -> Result<Vec<UserView>> {
        Ok(self.store.list_users()?.into_iter().map(UserView::from).collect())
    }

    /// Tokens of `user` (an unknown user is `NotFound`), or of everyone; oldest first.
    pub fn list_tokens(&self, user: Option<&str>) -> Result<Vec<TokenView>> {
        self.tokens_marked(user, None)
    }

    /// Revokes any token by id (idempotent; audited as `token.revoke` / `grant.revoke`).
    pub fn revoke_token(&self, actor: &str, token_id: &str) -> Result<TokenInfo> {
        Ok(self.store.revoke_token(actor, token_id)?)
    }

    fn tokens_marked(&self, user: Option<&str>, current: Option<&str>) -> Result<Vec<TokenView>> {
        if let Some(u) = user {
            self.store.get_user(u)?;
        }
        Ok(self.store.list_tokens(user)?.into_iter().map(|t| TokenView::of(t, current)).collect())
    }

    // ---- the API's forms: the same operations behind the caller's role and scopes ----

    pub fn admin_add_user(&self, p: &Principal, name: &str, role: Role) -> Result<(User, IssuedToken)> {
        require_admin(p)?;
        self.add_user(&p.user, name, role)
    }

    pub fn admin_issue_token(
        &self,
        p: &Principal,
        user: &str,
        expires_in_secs: Option<u64>,
        label: &str,
        scopes: Option<BTreeSet<Scope>>,
    ) -> Result<IssuedToken> {
        require_admin(p)?;
        token_expiry(expires_in_secs)?;
        self.store.get_user(user)?;
        self.issue_scoped_token(&p.user, user, expires_in_secs, label, scopes)
    }

    pub fn admin_list_users(&self, p: &Principal) -> Result<Vec<UserView>> {
        require_admin(p)?;
        self.list_users()
    }

    pub fn admin_list_tokens(&self, p: &Principal, user: Option<&str>) -> Result<Vec<TokenView>> {
        require_admin(p)?;
        self.tokens_marked(user, Some(&p.token_id))
    }

    pub fn admin_revoke_token(&self, p: &Principal, token_id: &str) -> Result<TokenInfo> {
        require_admin(p)?;
        self.revoke_token(&p.user, token_id)
    }

    /// The caller's own tokens and grants (`read`; never to a grant).
    pub fn own_tokens(&self, p: &Principal) -> Result<Vec<TokenView>> {
        require_unbound(p, Scope::Read)?;
        self.tokens_marked(Some(&p.user), Some(&p.token_id))
    }

    /// Revokes one of the caller's own tokens or grants (`write`; never to a grant).
    /// Another user's token id is `NotFound`, exactly like an unknown one.
    pub fn revoke_own_token(&self, p: &Principal, token_id: &str) -> Result<TokenInfo> {
        require_unbound(p, Scope::Write)?;
        let owned = self.store.list_tokens(Some(&p.user))?.iter().any(|t| t.id == token_id);
        if !owned {
            return Err(ServiceError::NotFound);
        }
        self.revoke_token(&p.user, token_id)
    }
}

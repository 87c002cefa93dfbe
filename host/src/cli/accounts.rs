//! `users`, `tokens` and `test`: on the store directly when no server holds it, else
//! through the running server's API. Both modes print the same output, and both call the
//! same service operations (directly, or through the API handlers that do).

use std::process::ExitCode;

use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};

use super::remote::{Remote, Target};
use super::{flag_errors, TokensCommand, UsersCommand, CLI_ACTOR};
use crate::service::{ServiceError, TokenView, UserView};
use crate::store::Role;

/// A service error as the CLI says it: field errors name the flag (`--expires-in-secs`).
fn said(e: ServiceError) -> String {
    match e {
        ServiceError::InvalidFields(f) => flag_errors(f.iter().map(|f| (f.field.as_str(), f.message.as_str()))),
        e => e.to_string(),
    }
}

fn parse<T: serde::de::DeserializeOwned>(v: Value, what: &str) -> Result<T, String> {
    serde_json::from_value(v).map_err(|e| format!("{what}: unexpected answer from the server: {e}"))
}

pub(super) fn users(target: Target, cmd: UsersCommand) -> Result<ExitCode, String> {
    match (target, cmd) {
        (Target::Direct(config), UsersCommand::Add { name, admin }) => {
            let service = crate::app::service(&config)?;
            let role = if admin { Role::Admin } else { Role::User };
            let (user, token) = service.add_user(CLI_ACTOR, &name, role).map_err(said)?;
            print_issued(&format!("created user {} ({:?}), token id {}", user.name, user.role, token.info.id), &token.token);
        }
        (Target::Remote(api), UsersCommand::Add { name, admin }) => {
            let v = api.request(Method::POST, api.url(&["api", "admin", "users"]), Some(json!({"name": name, "admin": admin})))?;
            let (user, id, token) = issued(&v)?;
            let role = if admin { Role::Admin } else { Role::User };
            print_issued(&format!("created user {user} ({role:?}), token id {id}"), &token);
        }
        (Target::Direct(config), UsersCommand::List) => {
            print_users(&crate::app::service(&config)?.list_users().map_err(said)?);
        }
        (Target::Remote(api), UsersCommand::List) => {
            let v = api.request(Method::GET, api.url(&["api", "admin", "users"]), None)?;
            print_users(&parse::<Vec<UserView>>(v, "listing users")?);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn tokens(target: Target, cmd: TokensCommand) -> Result<ExitCode, String> {
    let api = match target {
        Target::Direct(config) => return tokens_direct(&config, cmd),
        Target::Remote(api) => api,
    };
    match cmd {
        TokensCommand::Create { user, label, expires_in_secs, scopes } => {
            let mut body = json!({"label": label, "expires_in_secs": expires_in_secs});
            if !scopes.is_empty() {
                body["scopes"] = json!(scopes);
            }
            let v = api.request(Method::POST, api.url(&["api", "admin", "users", &user, "tokens"]), Some(body))?;
            let (user, id, token) = issued(&v)?;
            print_issued(&format!("created token {id} for {user}"), &token);
        }
        TokensCommand::List { user } => print_tokens(&remote_tokens(&api, user.as_deref())?),
        TokensCommand::Revoke { token_id } => {
            // The listing says whose token it is (the output names the user) and which
            // route applies: an admin revokes any token, a user only their own.
            let (own, tokens) = visible_tokens(&api, None)?;
            let t = tokens.iter().find(|t| t.id == token_id).ok_or_else(|| format!("token {token_id}: not found"))?;
            let path: &[&str] = if own { &["api", "tokens", &token_id] } else { &["api", "admin", "tokens", &token_id] };
            api.request(Method::DELETE, api.url(path), None)?;
            println!("revoked token {} of {}", t.id, t.user);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn tokens_direct(config: &crate::config::Config, cmd: TokensCommand) -> Result<ExitCode, String> {
    let service = crate::app::service(config)?;
    match cmd {
        TokensCommand::Create { user, label, expires_in_secs, scopes } => {
            let scopes = (!scopes.is_empty()).then(|| scopes.into_iter().collect());
            let token = service.issue_scoped_token(CLI_ACTOR, &user, expires_in_secs, &label, scopes).map_err(said)?;
            print_issued(&format!("created token {} for {}", token.info.id, token.info.user), &token.token);
        }
        TokensCommand::List { user } => {
            let tokens = service.list_tokens(user.as_deref()).map_err(|e| match &user {
                Some(u) => format!("user `{u}`: {}", said(e)),
                None => said(e),
            })?;
            print_tokens(&tokens);
        }
        TokensCommand::Revoke { token_id } => {
            let t = service.revoke_token(CLI_ACTOR, &token_id).map_err(|e| format!("token {token_id}: {}", said(e)))?;
            println!("revoked token {} of {}", t.id, t.user);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `tokens list [--user U]` through the API: every token (admins), else the caller's own.
fn remote_tokens(api: &Remote, user: Option<&str>) -> Result<Vec<TokenView>, String> {
    let (own, tokens) = visible_tokens(api, user)?;
    if own {
        if let Some(u) = user.filter(|u| tokens.first().is_some_and(|t| t.user != *u)) {
            return Err(format!("only admins list another user's tokens ({u}'s)"));
        }
    }
    Ok(tokens)
}

/// The tokens this caller may see, and whether they are only its own (not an admin).
fn visible_tokens(api: &Remote, user: Option<&str>) -> Result<(bool, Vec<TokenView>), String> {
    let mut url = api.url(&["api", "admin", "tokens"]);
    if let Some(u) = user {
        url.query_pairs_mut().append_pair("user", u);
    }
    match api.call(Method::GET, url, None)? {
        Ok(v) => Ok((false, parse(v, "listing tokens")?)),
        Err(r) if r.code == "forbidden" => {
            let v = api.request(Method::GET, api.url(&["api", "tokens"]), None)?;
            Ok((true, parse(v, "listing your tokens")?))
        }
        Err(r) if r.status == 404 && user.is_some() => Err(format!("user `{}`: not found", user.unwrap_or_default())),
        Err(r) => Err(api.explain(&r)),
    }
}

/// `credhost test ID`: directly as `--user`; through the API as the token's user.
pub(super) fn test(target: Target, id: &str, user: Option<&str>, json: bool) -> Result<ExitCode, String> {
    let view = match target {
        Target::Direct(config) => {
            let user = user.ok_or("--user NAME is required when working on the store directly (no server running)")?;
            let service = crate::app::service(&config)?;
            let u = service.store().get_user(user).map_err(|e| format!("user `{user}`: {e}"))?;
            let principal = crate::store::Principal::operator(&u, CLI_ACTOR);
            let view = service.test(&principal, id).map_err(|e| format!("testing credential {id}: {}", said(e)))?;
            serde_json::to_value(&view).map_err(|e| e.to_string())?
        }
        Target::Remote(api) => {
            // The API tests as the token's user; a different --user is refused, not ignored.
            if let Some(user) = user {
                let v = api.request(Method::GET, api.url(&["api", "tokens"]), None).map_err(|e| {
                    format!("checking that the token is {user}'s (drop --user to test as the token's user): {e}")
                })?;
                let mine: Vec<TokenView> = parse(v, "listing your tokens")?;
                if let Some(t) = mine.iter().find(|t| t.current).filter(|t| t.user != user) {
                    return Err(format!(
                        "through the server, `test` runs as the token's user ({}), not {user}: use a token of {user}'s \
                         (an admin issues one with `credhost tokens create {user} --scope read --scope test`)",
                        t.user
                    ));
                }
            }
            api.request(Method::POST, api.url(&["api", "credentials", id, "test"]), None)
                .map_err(|e| format!("testing credential {id}: {e}"))?
        }
    };
    print_test(&view, json)
}

fn print_test(view: &Value, json: bool) -> Result<ExitCode, String> {
    if json {
        println!("{}", serde_json::to_string_pretty(view).map_err(|e| e.to_string())?);
    } else {
        let s = |k: &str| view[k].as_str().unwrap_or_default().to_string();
        println!("{}: {} ({} ms)", s("status"), s("summary"), view["latency_ms"]);
        if let Some(facts) = view["facts"].as_object() {
            for (k, v) in facts {
                println!("  {k} = {}", v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()));
            }
        }
    }
    Ok(if view["ok"] == true { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// `(user, token id, token)` of a `TokenIssued` answer.
fn issued(v: &Value) -> Result<(String, String, SecretString), String> {
    let s = |k: &str| v[k].as_str().map(str::to_string).ok_or_else(|| format!("the server's answer has no `{k}`"));
    Ok((s("user")?, s("token_id")?, SecretString::from(s("token")?)))
}

/// What was created on stderr; the token alone on the last stdout line (shown once).
fn print_issued(what: &str, token: &SecretString) {
    eprintln!("{what}");
    println!("{}", token.expose_secret());
}

fn print_users(users: &[UserView]) {
    for u in users {
        println!("{:<24} {:<6} {}", u.name, format!("{:?}", u.role).to_lowercase(), u.namespace);
    }
}

fn print_tokens(tokens: &[TokenView]) {
    println!("{:<36} {:<16} {:<6} {:<8} {:<28} LABEL", "ID", "USER", "ROLE", "STATE", "SCOPES");
    for t in tokens {
        let scopes: Vec<&str> = t.scopes.iter().map(|s| s.as_str()).collect();
        let scopes = if t.kind == "grant" { format!("grant:{}", scopes.join(",")) } else { scopes.join(",") };
        println!(
            "{:<36} {:<16} {:<6} {:<8} {:<28} {}",
            t.id,
            t.user,
            format!("{:?}", t.role).to_lowercase(),
            t.state,
            scopes,
            t.label
        );
    }
}

//! `credhost exec --credential NAME -- PROGRAM ARGS...`: a client of a running server.

use std::collections::BTreeMap;
use std::process::ExitCode;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use zeroize::Zeroize;

pub(super) fn run(name: &str, url: &str, token_file: Option<&std::path::Path>, command: Vec<String>) -> Result<ExitCode, String> {
    let token = super::remote::ApiToken::from_env(token_file)
        .map_err(|e| format!("{e}: `credhost exec` needs an API token with the `read` and `reveal` scopes"))?;
    let base = super::remote::server_url(url)?.as_str().trim_end_matches('/').to_string();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    let env = rt.block_on(fetch_env(&base, name, &token))?;
    drop(rt);
    drop(token);
    launch(command, env)
}

#[derive(Deserialize)]
struct Page {
    items: Vec<Item>,
}

#[derive(Deserialize)]
struct Item {
    id: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    code: String,
    message: String,
}

/// The server's refusal as a sentence naming the fix where there is one.
fn refusal(what: &str, source: &str, status: reqwest::StatusCode, body: &str) -> String {
    let Ok(ErrorBody { error }) = serde_json::from_str::<ErrorBody>(body) else {
        return format!("{what}: the server answered {status}");
    };
    match error.code.as_str() {
        "unauthorized" => format!("{what}: the server refused {source} (unknown, expired or revoked)"),
        "insufficient_scope" => format!(
            "{what}: {} (exec needs a token with the `read` and `reveal` scopes; an admin issues one with \
             `credhost tokens create USER --scope read --scope reveal`)",
            error.message
        ),
        "reveal_not_allowed" => format!("{what}: {}", error.message),
        _ => format!("{what}: {} ({status}, {})", error.message, error.code),
    }
}

/// Name → id (the listing's exact `name` filter, which NFC-normalizes like the store),
/// then the reveal. Only the `env` part of the answer is kept; the response text is
/// zeroized once parsed.
async fn fetch_env(base: &str, name: &str, token: &super::remote::ApiToken) -> Result<BTreeMap<String, SecretString>, String> {
    let client = super::api_client()?;
    let unreachable = |e: reqwest::Error| format!("cannot reach the credhost server at {base}: {e}");
    let resp = client
        .get(format!("{base}/api/credentials"))
        .bearer_auth(token.secret.expose_secret())
        .query(&[("name", name)])
        .send()
        .await
        .map_err(unreachable)?;
    let status = resp.status();
    let body = resp.text().await.map_err(unreachable)?;
    if !status.is_success() {
        return Err(refusal("finding the credential", &token.source, status, &body));
    }
    let page: Page = serde_json::from_str(&body).map_err(|e| format!("listing credentials: unexpected answer: {e}"))?;
    let Some(id) = page.items.into_iter().next().map(|i| i.id) else {
        return Err(format!("no credential named {name:?} (among this token's user's credentials)"));
    };
    let resp = client
        .post(format!("{base}/api/credentials/{id}/reveal"))
        .bearer_auth(token.secret.expose_secret())
        .send()
        .await
        .map_err(unreachable)?;
    let status = resp.status();
    let mut body = resp.text().await.map_err(unreachable)?;
    if !status.is_success() {
        let what = format!("revealing credential {name:?}");
        let message = refusal(&what, &token.source, status, &body);
        body.zeroize();
        return Err(message);
    }
    let parsed = serde_json::from_str::<serde_json::Value>(&body);
    body.zeroize();
    // Errors here never quote the body: it holds the secrets.
    let mut value = parsed.map_err(|_| format!("revealing credential {name:?}: the answer is not JSON"))?;
    let mut env = BTreeMap::new();
    if let Some(serde_json::Value::Object(vars)) = value.get_mut("env").map(serde_json::Value::take) {
        for (k, v) in vars {
            if let serde_json::Value::String(s) = v {
                env.insert(k, SecretString::from(s));
            }
        }
    }
    wipe(&mut value);
    if env.is_empty() {
        return Err(format!("credential {name:?}: its type declares no environment variables ([use.env])"));
    }
    Ok(env)
}

/// Zeroizes every string of a parsed JSON value (the revealed fields).
fn wipe(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::String(s) => s.zeroize(),
        serde_json::Value::Array(a) => a.iter_mut().for_each(wipe),
        serde_json::Value::Object(m) => m.values_mut().for_each(wipe),
        _ => {}
    }
}

/// Runs the program with `env` added and without CREDHOST_TOKEN(_FILE) (the program has no
/// business with the vault). On Unix the process becomes the program (exec): signals,
/// the exit code and the terminal are the program's, and this process's memory holding
/// the values is gone.
fn launch(command: Vec<String>, env: BTreeMap<String, SecretString>) -> Result<ExitCode, String> {
    let (program, args) = command.split_first().ok_or("no program given after `--`")?;
    let mut cmd = std::process::Command::new(program);
    cmd.args(args).env_remove("CREDHOST_TOKEN").env_remove(super::remote::TOKEN_FILE_ENV);
    for (k, v) in &env {
        cmd.env(k, v.expose_secret());
    }
    drop(env);
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        // Returns only on failure.
        let e = cmd.exec();
        Err(format!("cannot run {program:?}: {e}"))
    }
    #[cfg(not(unix))]
    {
        let status = cmd.status().map_err(|e| format!("cannot run {program:?}: {e}"))?;
        drop(cmd);
        Ok(ExitCode::from(status.code().unwrap_or(1).clamp(0, 255) as u8))
    }
}

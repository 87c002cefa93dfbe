//! The `credhost` command line. Commands are thin callers of the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use secrecy::{ExposeSecret, SecretString};

use crate::config::Config;
use crate::crypto::MasterKey;
use crate::plugins::{Bound, Registry, TypeDescriptor};
use crate::store::Role;

#[derive(Debug, Parser)]
#[command(name = "credhost", version, about = "A credential host with sandboxed WebAssembly credential types")]
pub struct Cli {
    /// Configuration file (TOML). Without one, dev defaults apply (see README).
    #[arg(long, short = 'c', global = true, env = "CREDHOST_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP API server.
    Serve,
    /// Manage users (each has a namespace and a data key).
    Users {
        #[command(subcommand)]
        cmd: UsersCommand,
    },
    /// Manage API tokens.
    Tokens {
        #[command(subcommand)]
        cmd: TokensCommand,
    },
    /// Master key operations.
    Keys {
        #[command(subcommand)]
        cmd: KeysCommand,
    },
    /// Operator plugins: list what is loaded, verify the plugin dir, reload a server.
    Plugins {
        #[command(subcommand)]
        cmd: PluginsCommand,
    },
    /// Audit log operations.
    Audit {
        #[command(subcommand)]
        cmd: AuditCommand,
    },
    /// List the loaded credential types, or show one type's fields.
    Types {
        #[command(subcommand)]
        show: Option<TypesCommand>,
        /// Print JSON instead of a table.
        #[arg(long, global = true)]
        json: bool,
    },
    /// Run a type's offline checks on the given fields (nothing is stored).
    Validate {
        /// Credential type id, e.g. `alpaca`.
        type_id: String,
        /// A field as NAME=VALUE; NAME=@PATH reads the value from a file.
        #[arg(long = "field", short = 'f', value_name = "NAME=VALUE")]
        fields: Vec<String>,
        /// Environment the credential is bound to (e.g. `paper`, `live`).
        #[arg(long)]
        environment: Option<String>,
    },
    /// Test a stored credential against its service now (records last_test and audit).
    /// Exit code 0 when the credential works, 1 when it does not, 2 on errors.
    Test {
        /// Credential id.
        credential_id: String,
        /// The user who owns the credential.
        #[arg(long)]
        user: String,
        /// Print the outcome as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run a program with a stored credential in its environment (the type's `[use.env]`
    /// variables, e.g. APCA_API_KEY_ID for alpaca), asked from a running server. The API
    /// token comes from CREDHOST_TOKEN only (never a flag: flags show in `ps`) and needs the
    /// `reveal` scope. Nothing is written to disk; exits with the program's exit code.
    Exec {
        /// Name of the credential.
        #[arg(long)]
        credential: String,
        /// Server base URL.
        #[arg(long, env = "CREDHOST_URL", default_value = "http://127.0.0.1:8080")]
        url: String,
        /// The program and its arguments, after `--`.
        #[arg(last = true, required = true, value_name = "PROGRAM")]
        command: Vec<String>,
    },
    /// Check a configuration file without touching data: prints every problem with its
    /// line and exits 1, or prints `ok` and exits 0. Environment overrides apply.
    CheckConfig {
        /// The TOML file to check.
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum TypesCommand {
    /// Print one type's field schema.
    Show { type_id: String },
}

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Create a user; prints its first API token alone on the last line.
    Add {
        name: String,
        #[arg(long)]
        admin: bool,
    },
    /// List users.
    List,
}

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Issue a token for a user; prints it alone on the last line (shown once).
    Create {
        user: String,
        #[arg(long, default_value = "")]
        label: String,
        /// Lifetime in seconds, at most 10 years (default: no expiry).
        #[arg(long)]
        expires_in_secs: Option<u64>,
        /// A scope the token carries (repeat for several): read, write, test, use, reveal,
        /// admin. Default: read, write, test, use (and admin for admins).
        #[arg(long = "scope")]
        scopes: Vec<crate::store::Scope>,
    },
    /// List tokens (never their values).
    List {
        #[arg(long)]
        user: Option<String>,
    },
    /// Revoke a token by id.
    Revoke { token_id: String },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Re-wrap every data key under a new master key (one transaction; safe to interrupt).
    /// The new key is generated and written to FILE (mode 0600), which must not exist.
    Rotate {
        #[arg(long, value_name = "FILE")]
        new_key_file: PathBuf,
    },
    /// Check that the master key opens every namespace's data key.
    Verify,
}

#[derive(Debug, Subcommand)]
pub enum PluginsCommand {
    /// Load built-ins and the plugin dir as `serve` would; print them and any problems.
    List,
    /// Like `list`, but exit 1 when any plugin is refused.
    Verify,
    /// Ask a running server to reload its plugin dir (needs an admin token).
    Reload {
        /// Server base URL (default: http://<server.listen>).
        #[arg(long)]
        url: Option<String>,
        /// Admin API token.
        #[arg(long, env = "CREDHOST_TOKEN", hide_env_values = true)]
        token: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Walk the hash chain; report the first broken link.
    Verify,
}

/// Runs a parsed command; returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    match dispatch(cli) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
    }
}

fn dispatch(cli: Cli) -> Result<ExitCode, String> {
    if let Command::CheckConfig { file } = &cli.command {
        return Ok(check_config(file));
    }
    // A client of a running server: needs no config, data dir or master key.
    if let Command::Exec { credential, url, command } = cli.command {
        return exec::run(&credential, &url, command);
    }
    let config = Config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Serve => {
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
            rt.block_on(crate::server::serve(config))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Users { cmd } => users(&config, cmd),
        Command::Test { credential_id, user, json } => test_credential(&config, &credential_id, &user, json),
        Command::Tokens { cmd } => tokens(&config, cmd),
        Command::Keys { cmd } => keys(&config, cmd),
        Command::Plugins { cmd } => plugins(&config, cmd),
        Command::Audit { cmd: AuditCommand::Verify } => {
            let store = crate::app::open_store(&config)?;
            // Every keyed hash is checked with the master key this command was given.
            match store.verify_audit() {
                Ok(n) => {
                    let legacy = store.audit_legacy_records().map_err(|e| e.to_string())?;
                    if legacy > 0 {
                        println!(
                            "audit chain intact: {n} records, keyed with the master key from seq {} \
                             ({legacy} older records were written before the chain was keyed)",
                            legacy + 1
                        );
                    } else {
                        println!("audit chain intact: {n} records, keyed with the master key");
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    println!("audit chain BROKEN: {e}");
                    Ok(ExitCode::from(1))
                }
            }
        }
        Command::Types { show: None, json } => {
            let registry = registry(&config)?;
            let descriptors: Vec<TypeDescriptor> = registry.list().iter().map(|p| p.descriptor.clone()).collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&descriptors).map_err(|e| e.to_string())?);
            } else {
                println!("{:<14} {:<8} {:<28} ENVIRONMENTS", "TYPE", "VERSION", "NAME");
                for d in descriptors {
                    println!("{:<14} {:<8} {:<28} {}", d.id, d.version, d.display_name, d.environments.join(","));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Types { show: Some(TypesCommand::Show { type_id }), json } => {
            let plugin = registry(&config)?.get(&type_id).map_err(|e| e.to_string())?;
            let d = &plugin.descriptor;
            if json {
                println!("{}", serde_json::to_string_pretty(d).map_err(|e| e.to_string())?);
                return Ok(ExitCode::SUCCESS);
            }
            println!("{} ({}) v{}\n{}\n", d.display_name, d.id, d.version, d.description);
            if !d.environments.is_empty() {
                println!("environments: {}\n", d.environments.join(", "));
            }
            println!("{:<22} {:<10} {:<7} {:<9} HELP", "FIELD", "KIND", "SECRET", "REQUIRED");
            for f in &d.fields {
                let kind = serde_json::to_value(f.kind).ok().and_then(|v| v.as_str().map(str::to_owned));
                let mut help = f.help.clone();
                if !f.choices.is_empty() {
                    help.push_str(&format!(" [{}]", f.choices.join("|")));
                }
                if let Some(d) = &f.default {
                    help.push_str(&format!(" (default {d})"));
                }
                println!(
                    "{:<22} {:<10} {:<7} {:<9} {}",
                    f.name,
                    kind.unwrap_or_default(),
                    if f.secret { "yes" } else { "no" },
                    if f.required { "yes" } else { "no" },
                    help
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { .. } | Command::Exec { .. } => unreachable!("handled before the config is loaded"),
        Command::Validate { type_id, fields, environment } => {
            let registry = registry(&config)?;
            let plugin = registry.get(&type_id).map_err(|e| e.to_string())?;
            let mut bound = Bound { environment, ..Bound::default() };
            for raw in fields {
                let (name, value) = parse_field_arg(&raw)?;
                match plugin.descriptor.field(&name) {
                    Some(spec) if spec.secret => {
                        bound.secrets.insert(name, SecretString::from(value));
                    }
                    _ => {
                        bound.fields.insert(name, value);
                    }
                }
            }
            let call = registry.runtime().validate(&plugin, bound);
            match call.result.map_err(|e| e.to_string())? {
                Ok(v) => {
                    println!("valid: {} fields, {} secret", v.fields.len() + v.secrets.len(), v.secrets.len());
                    for (k, val) in &v.fields {
                        println!("  {k} = {val}");
                    }
                    for k in v.secrets.keys() {
                        println!("  {k} = (secret, set)");
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(errors) => {
                    for e in errors {
                        println!("{}: {}", e.field, e.message);
                    }
                    Ok(ExitCode::from(1))
                }
            }
        }
    }
}

/// `credhost check-config FILE`: every problem, one per line as `FILE:LINE: message`.
fn check_config(file: &std::path::Path) -> ExitCode {
    let problems = crate::provision::check_file(file);
    if problems.is_empty() {
        println!("ok");
        return ExitCode::SUCCESS;
    }
    for (line, message) in &problems {
        if *line > 0 {
            println!("{}:{line}: {message}", file.display());
        } else {
            println!("{}: {message}", file.display());
        }
    }
    eprintln!("{} problem(s) in {}", problems.len(), file.display());
    ExitCode::from(1)
}

/// `NAME=VALUE`, or `NAME=@PATH` to read the value from a file (keys, long tokens).
fn parse_field_arg(raw: &str) -> Result<(String, String), String> {
    let (name, value) =
        raw.split_once('=').ok_or_else(|| format!("--field {raw:?}: expected NAME=VALUE or NAME=@PATH"))?;
    let value = match value.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).map_err(|e| format!("--field {name}: reading {path}: {e}"))?,
        None => value.to_string(),
    };
    Ok((name.to_string(), value))
}

fn registry(config: &Config) -> Result<Registry, String> {
    crate::app::registry(config, None)
}

const CLI_ACTOR: &str = "cli";

/// `credhost test <id> --user NAME`: the same operation as `POST /api/credentials/{id}/test`.
fn test_credential(config: &Config, id: &str, user: &str, json: bool) -> Result<ExitCode, String> {
    let service = crate::app::service(config)?;
    let u = service.store().get_user(user).map_err(|e| format!("user `{user}`: {e}"))?;
    let principal = crate::store::Principal::operator(&u, CLI_ACTOR);
    let view = service.test(&principal, id).map_err(|e| format!("testing credential {id}: {e}"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&view).map_err(|e| e.to_string())?);
    } else {
        let status = serde_json::to_value(view.report.status).ok().and_then(|v| v.as_str().map(str::to_owned));
        println!("{}: {} ({} ms)", status.unwrap_or_default(), view.report.summary, view.report.latency_ms);
        for (k, v) in &view.report.facts {
            println!("  {k} = {v}");
        }
    }
    Ok(if view.ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn users(config: &Config, cmd: UsersCommand) -> Result<ExitCode, String> {
    let service = crate::app::service(config)?;
    match cmd {
        UsersCommand::Add { name, admin } => {
            let role = if admin { Role::Admin } else { Role::User };
            let (user, token) = service.add_user(CLI_ACTOR, &name, role).map_err(|e| e.to_string())?;
            eprintln!("created user {} ({:?}), token id {}", user.name, user.role, token.info.id);
            println!("{}", token.token.expose_secret());
        }
        UsersCommand::List => {
            for u in service.store().list_users().map_err(|e| e.to_string())? {
                println!("{:<24} {:<6} {}", u.name, format!("{:?}", u.role).to_lowercase(), u.namespace);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn tokens(config: &Config, cmd: TokensCommand) -> Result<ExitCode, String> {
    let store = crate::app::open_store(config)?;
    match cmd {
        TokensCommand::Create { user, label, expires_in_secs, scopes } => {
            // Same bound as the API, checked before anything is written.
            let expires = crate::service::token_expiry(expires_in_secs).map_err(|e| match e {
                crate::service::ServiceError::InvalidFields(f) => {
                    f.iter().map(|f| format!("--{}: {}", f.field.replace('_', "-"), f.message)).collect::<Vec<_>>().join("; ")
                }
                e => e.to_string(),
            })?;
            let spec = crate::store::TokenSpec {
                scopes: (!scopes.is_empty()).then(|| scopes.into_iter().collect()),
                expires_at: expires,
                label,
                ..Default::default()
            };
            let (info, token) = store.issue_token(CLI_ACTOR, &user, spec).map_err(|e| e.to_string())?;
            eprintln!("created token {} for {}", info.id, info.user);
            println!("{}", token.expose_secret());
        }
        TokensCommand::List { user } => {
            println!("{:<36} {:<16} {:<6} {:<8} {:<28} LABEL", "ID", "USER", "ROLE", "STATE", "SCOPES");
            for t in store.list_tokens(user.as_deref()).map_err(|e| e.to_string())? {
                let state = if t.revoked_at.is_some() {
                    "revoked"
                } else if t.expires_at.is_some_and(|e| e <= crate::store::now_ms()) {
                    "expired"
                } else {
                    "active"
                };
                let scopes: Vec<&str> = t.scopes().iter().map(|s| s.as_str()).collect();
                let scopes = if t.grant.is_some() { format!("grant:{}", scopes.join(",")) } else { scopes.join(",") };
                println!(
                    "{:<36} {:<16} {:<6} {:<8} {:<28} {}",
                    t.id,
                    t.user,
                    format!("{:?}", t.role).to_lowercase(),
                    state,
                    scopes,
                    t.label
                );
            }
        }
        TokensCommand::Revoke { token_id } => {
            let t = store.revoke_token(CLI_ACTOR, &token_id).map_err(|e| e.to_string())?;
            println!("revoked token {} of {}", t.id, t.user);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn keys(config: &Config, cmd: KeysCommand) -> Result<ExitCode, String> {
    let mut store = crate::app::open_store(config)?;
    match cmd {
        KeysCommand::Rotate { new_key_file } => {
            let new_key = MasterKey::generate().map_err(|e| e.to_string())?;
            write_new_key_file(&new_key_file, &new_key)?;
            let old = store.kek_id().to_string();
            let n = store.rotate_kek(CLI_ACTOR, new_key).map_err(|e| e.to_string())?;
            println!("re-wrapped {n} data keys: master key {old} retired, now {}", store.kek_id());
            println!("the new key is in {}; point CREDHOST_MASTER_KEY_FILE or [keys] master_key_file at it", new_key_file.display());
        }
        KeysCommand::Verify => {
            let r = store.verify_keys().map_err(|e| e.to_string())?;
            println!("master key {} opens all {} namespace data keys", r.kek_id, r.namespaces);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes a new key file with mode 0600, refusing to overwrite one.
fn write_new_key_file(path: &std::path::Path, key: &MasterKey) -> Result<(), String> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(key.to_base64().expose_secret().as_bytes()).map_err(|e| format!("{}: {e}", path.display()))?;
    f.sync_all().map_err(|e| format!("{}: {e}", path.display()))
}

fn plugins(config: &Config, cmd: PluginsCommand) -> Result<ExitCode, String> {
    if let PluginsCommand::Reload { url, token } = cmd {
        let base = url.unwrap_or_else(|| format!("http://{}", config.server.listen));
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
        let (status, body) = rt.block_on(async {
            let client = api_client()?;
            let resp = client
                .post(format!("{}/api/admin/plugins/reload", base.trim_end_matches('/')))
                .bearer_auth(token)
                .send()
                .await
                .map_err(|e| format!("cannot reach {base}: {e}"))?;
            let status = resp.status();
            Ok::<_, String>((status, resp.text().await.unwrap_or_default()))
        })?;
        println!("{body}");
        return Ok(if status.is_success() { ExitCode::SUCCESS } else { ExitCode::from(1) });
    }
    let registry = registry(config)?;
    println!("{:<16} {:<8} {:<14} {:<26} ORIGIN", "TYPE", "VERSION", "SHA256", "CAPABILITIES");
    for p in registry.list() {
        let caps: Vec<String> = p.manifest.capabilities.iter().map(|c| c.to_string()).collect();
        println!("{:<16} {:<8} {:<14} {:<26} {}", p.manifest.id, p.manifest.version, &p.sha256[..12], caps.join(","), p.origin);
    }
    let problems = registry.problems();
    for p in &problems {
        println!("REFUSED {}: {}", p.origin, p.message);
    }
    let strict = matches!(cmd, PluginsCommand::Verify);
    Ok(if strict && !problems.is_empty() { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// The CLI's client of a running server. Never through HTTP_PROXY & co.: its requests
/// carry API tokens (and `exec`'s responses carry secrets).
fn api_client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(std::time::Duration::from_secs(10))
        .timeout(std::time::Duration::from_secs(60))
        .build()
        .map_err(|e| format!("building the HTTP client: {e}"))
}

/// `credhost exec --credential NAME -- PROGRAM ARGS...`
mod exec {
    use std::collections::BTreeMap;
    use std::process::ExitCode;

    use secrecy::{ExposeSecret, SecretString};
    use serde::Deserialize;
    use zeroize::Zeroize;

    pub(super) fn run(name: &str, url: &str, command: Vec<String>) -> Result<ExitCode, String> {
        let token = match std::env::var("CREDHOST_TOKEN") {
            Ok(t) if !t.trim().is_empty() => SecretString::from(t.trim().to_string()),
            _ => {
                return Err("CREDHOST_TOKEN is not set: `credhost exec` reads its API token (one with the `reveal` \
                            scope) from that environment variable only"
                    .into())
            }
        };
        let base = url.trim_end_matches('/').to_string();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
        let env = rt.block_on(fetch_env(&base, name, &token))?;
        drop(rt);
        drop(token);
        launch(command, env)
    }

    #[derive(Deserialize)]
    struct Page {
        items: Vec<Item>,
        next_cursor: Option<String>,
    }

    #[derive(Deserialize)]
    struct Item {
        id: String,
        name: String,
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
    fn refusal(what: &str, status: reqwest::StatusCode, body: &str) -> String {
        let Ok(ErrorBody { error }) = serde_json::from_str::<ErrorBody>(body) else {
            return format!("{what}: the server answered {status}");
        };
        match error.code.as_str() {
            "unauthorized" => format!("{what}: the server refused CREDHOST_TOKEN (unknown, expired or revoked)"),
            "insufficient_scope" => format!(
                "{what}: {} (exec needs a token with the `read` and `reveal` scopes; an admin issues one with \
                 `credhost tokens create USER --scope read --scope reveal`)",
                error.message
            ),
            "reveal_not_allowed" => format!("{what}: {}", error.message),
            _ => format!("{what}: {} ({status}, {})", error.message, error.code),
        }
    }

    /// Name → id (paging through the listing), then the reveal. Only the `env` part of the
    /// answer is kept; the response text is zeroized once parsed.
    async fn fetch_env(base: &str, name: &str, token: &SecretString) -> Result<BTreeMap<String, SecretString>, String> {
        let client = super::api_client()?;
        let unreachable = |e: reqwest::Error| format!("cannot reach the credhost server at {base}: {e}");
        let mut cursor: Option<String> = None;
        let id = loop {
            let mut req = client.get(format!("{base}/api/credentials")).bearer_auth(token.expose_secret()).query(&[("limit", "1000")]);
            if let Some(c) = &cursor {
                req = req.query(&[("cursor", c)]);
            }
            let resp = req.send().await.map_err(unreachable)?;
            let status = resp.status();
            let body = resp.text().await.map_err(unreachable)?;
            if !status.is_success() {
                return Err(refusal("listing credentials", status, &body));
            }
            let page: Page = serde_json::from_str(&body).map_err(|e| format!("listing credentials: unexpected answer: {e}"))?;
            if let Some(item) = page.items.into_iter().find(|i| i.name == name) {
                break item.id;
            }
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => return Err(format!("no credential named {name:?} (among this token's user's credentials)")),
            }
        };
        let resp = client
            .post(format!("{base}/api/credentials/{id}/reveal"))
            .bearer_auth(token.expose_secret())
            .send()
            .await
            .map_err(unreachable)?;
        let status = resp.status();
        let mut body = resp.text().await.map_err(unreachable)?;
        if !status.is_success() {
            let what = format!("revealing credential {name:?}");
            let message = refusal(&what, status, &body);
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

    /// Runs the program with `env` added and without CREDHOST_TOKEN (the program has no
    /// business with the vault). On Unix the process becomes the program (exec): signals,
    /// the exit code and the terminal are the program's, and this process's memory holding
    /// the values is gone.
    fn launch(command: Vec<String>, env: BTreeMap<String, SecretString>) -> Result<ExitCode, String> {
        let (program, args) = command.split_first().ok_or("no program given after `--`")?;
        let mut cmd = std::process::Command::new(program);
        cmd.args(args).env_remove("CREDHOST_TOKEN");
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
}

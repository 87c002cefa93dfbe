//! The `credhost` command line. Commands are thin callers of the library. `users`,
//! `tokens` and `test` work on the store directly, or through a running server's API
//! when one holds the store ([`remote::target`]).

mod accounts;
mod exec;
mod remote;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use secrecy::{ExposeSecret, SecretString};

use crate::config::Config;
use crate::crypto::MasterKey;
use crate::plugins::{Bound, Registry, TypeDescriptor};

#[derive(Debug, Parser)]
#[command(name = "credhost", version, about = "A credential host with sandboxed WebAssembly credential types")]
pub struct Cli {
    /// Configuration file (TOML). Without one, dev defaults apply (see README).
    #[arg(long, short = 'c', global = true, env = "CREDHOST_CONFIG")]
    pub config: Option<PathBuf>,
    /// A running server's base URL, for `users`, `tokens`, `test`, `exec`,
    /// `plugins reload` and `keys rotate`. Without it they use the server that holds the store (at
    /// http://<server.listen>), or the store itself when no server runs.
    #[arg(long, global = true, env = "CREDHOST_URL")]
    pub url: Option<String>,
    /// A file holding the API token for talking to a server (else CREDHOST_TOKEN is read).
    /// The token itself is never a flag: flags show in `ps`.
    #[arg(long, global = true, env = "CREDHOST_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
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
        /// The user who owns the credential. Required on the store directly; through a
        /// server the token's user is tested as, and a different --user is refused.
        #[arg(long)]
        user: Option<String>,
        /// Print the outcome as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run a program with a stored credential in its environment (the type's `[use.env]`
    /// variables, e.g. APCA_API_KEY_ID for alpaca), asked from a running server (--url,
    /// default http://127.0.0.1:8080). The API token comes from CREDHOST_TOKEN or
    /// CREDHOST_TOKEN_FILE / --token-file (never a flag: flags show in `ps`) and needs the
    /// `reveal` scope. Nothing is written to disk; exits with the program's exit code.
    Exec {
        /// Name of the credential.
        #[arg(long)]
        credential: String,
        /// The program and its arguments, after `--`.
        #[arg(last = true, required = true, value_name = "PROGRAM")]
        command: Vec<String>,
    },
    /// Copy a redb store into an empty PostgreSQL database as it is (sealed blobs are not
    /// decrypted), then verify row counts, the audit chain and the data keys there. The
    /// master key comes from the configuration as for `serve`; the database password from
    /// CREDHOST_POSTGRES_PASSWORD or CREDHOST_POSTGRES_PASSWORD_FILE. Stop the server first.
    Migrate {
        /// The redb file, e.g. `./data/credhost.redb`.
        #[arg(long, value_name = "PATH")]
        from_redb: PathBuf,
        /// `postgres://user@host:port/database` (no password in it).
        #[arg(long, value_name = "URL")]
        to_postgres: String,
        /// Continue a migration that stopped part-way into the same database.
        #[arg(long)]
        resume: bool,
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
    /// The new key is generated and written to FILE (mode 0600), which must not exist;
    /// then the configured key file is replaced by it (the old key kept as `<file>.old`).
    /// While a server holds the store, the server does the rotation (it keeps serving):
    /// this command hands it the file's path through the admin API (an admin token in
    /// CREDHOST_TOKEN or --token-file); run it as the server's user, on its machine.
    Rotate {
        /// Where to write the new key. Default: `<configured key file>.new`.
        #[arg(long, value_name = "FILE")]
        new_key_file: Option<PathBuf>,
        /// PostgreSQL storage: every replica is stopped (required there: a replica still
        /// running would go on with the old key, wrapping new data keys nobody can open).
        #[arg(long)]
        all_replicas_stopped: bool,
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
    /// Ask a running server (--url, default http://<server.listen>) to reload its plugin
    /// dir. Needs an admin token in CREDHOST_TOKEN or CREDHOST_TOKEN_FILE / --token-file.
    Reload,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Walk the hash chain; report the first broken link.
    Verify,
}

/// `credhost migrate --from-redb PATH --to-postgres URL`.
fn migrate(config: &Config, from: &Path, url: String, resume: bool) -> Result<ExitCode, String> {
    let mut pg_config = config.clone();
    pg_config.storage.backend = crate::config::StorageBackend::Postgres;
    pg_config.storage.postgres_url = Some(url);
    let opts = pg_config.postgres()?.ok_or("no PostgreSQL settings")?;
    let key = crate::app::master_key(config)?;
    let report = crate::store::migrate::redb_to_postgres(from, &opts, key, resume, |line| println!("{line}"))
        .map_err(|e| format!("migrate: {e}"))?;
    let rows: u64 = report.tables.iter().map(|t| t.2).sum();
    println!(
        "migrated: {} tables, {rows} rows; audit chain intact on the target ({} records); {} data keys open",
        report.tables.len(),
        report.audit_records,
        report.namespaces
    );
    Ok(ExitCode::SUCCESS)
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
    let connect = remote::Connect { url: cli.url.clone(), token_file: cli.token_file.clone() };
    match cli.command {
        // A client of a running server: needs no config, data dir or master key.
        Command::Exec { credential, command } => {
            let url = connect.url.as_deref().unwrap_or("http://127.0.0.1:8080");
            return exec::run(&credential, url, connect.token_file.as_deref(), command);
        }
        Command::Users { cmd } => return accounts::users(remote::target(&connect, cli.config.as_deref())?, cmd),
        Command::Tokens { cmd } => return accounts::tokens(remote::target(&connect, cli.config.as_deref())?, cmd),
        Command::Test { credential_id, user, json } => {
            let target = remote::target(&connect, cli.config.as_deref())?;
            return accounts::test(target, &credential_id, user.as_deref(), json);
        }
        _ => {}
    }
    let config = Config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Serve => {
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
            rt.block_on(crate::server::serve(config, cli.config.clone()))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys { cmd } => keys(&config, &connect, cmd),
        Command::Migrate { from_redb, to_postgres, resume } => migrate(&config, &from_redb, to_postgres, resume),
        Command::Plugins { cmd } => plugins(&config, &connect, cmd),
        Command::Audit { cmd: AuditCommand::Verify } => {
            remote::refuse_if_in_use(&config, "audit verify")?;
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
        Command::CheckConfig { .. } | Command::Exec { .. } | Command::Users { .. } | Command::Tokens { .. } | Command::Test { .. } => {
            unreachable!("handled before the config is loaded")
        }
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

/// Field errors as the CLI's flags: `expires_in_secs` → `--expires-in-secs: message`.
fn flag_errors<'a>(fields: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    fields.map(|(f, m)| format!("--{}: {m}", f.replace('_', "-"))).collect::<Vec<_>>().join("; ")
}

fn keys(config: &Config, connect: &remote::Connect, cmd: KeysCommand) -> Result<ExitCode, String> {
    if let KeysCommand::Rotate { new_key_file, .. } = &cmd {
        if connect.url.is_some() || remote::store_in_use(config) {
            return rotate_through_server(config, connect, new_key_file.clone());
        }
    }
    remote::refuse_if_in_use(config, "keys")?;
    let store = crate::app::open_store(config)?;
    match cmd {
        KeysCommand::Rotate { new_key_file, all_replicas_stopped } => {
            let source = crate::app::key_source(config);
            let new_key_file = new_key_path(&source, new_key_file)?;
            if store.is_shared() && !all_replicas_stopped {
                return Err("PostgreSQL storage: stop every replica first (a replica still running would keep the old \
                            key and wrap new users' data keys with it), then run this again with --all-replicas-stopped, \
                            and start every replica with the new key"
                    .into());
            }
            let new_key = MasterKey::generate().map_err(|e| e.to_string())?;
            write_new_key_file(&new_key_file, &new_key)?;
            let old = store.kek_id();
            let n = match store.rotate_kek(CLI_ACTOR, new_key) {
                Ok(n) => n,
                Err(e) => {
                    // Not used: the old key is still the store's.
                    let _ = std::fs::remove_file(&new_key_file);
                    return Err(e.to_string());
                }
            };
            println!("re-wrapped {n} data keys: master key {old} retired, now {}", store.kek_id());
            match source {
                crate::service::KeySource::File(current) => {
                    match crate::service::replace_key_file(&current, &new_key_file) {
                        Ok(kept) => println!(
                            "the new key replaced {}; the old key is kept in {} (it no longer opens the store)",
                            current.display(),
                            kept.display()
                        ),
                        Err(e) => println!(
                            "the new key is in {}; moving it over {} failed ({e}): move it there yourself \
                             before the next start",
                            new_key_file.display(),
                            current.display()
                        ),
                    }
                }
                crate::service::KeySource::Env => println!(
                    "the new key is in {}: set CREDHOST_MASTER_KEY to its contents before the next start, then delete the file",
                    new_key_file.display()
                ),
                crate::service::KeySource::Unknown => println!(
                    "the new key is in {}; point CREDHOST_MASTER_KEY_FILE or [keys] master_key_file at it",
                    new_key_file.display()
                ),
            }
        }
        KeysCommand::Verify => {
            let r = store.verify_keys().map_err(|e| e.to_string())?;
            println!("master key {} opens all {} namespace data keys", r.kek_id, r.namespaces);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `--new-key-file`, or `<configured key file>.new`, made absolute (a server resolves it).
fn new_key_path(source: &crate::service::KeySource, given: Option<PathBuf>) -> Result<PathBuf, String> {
    let path = match (given, source) {
        (Some(p), _) => p,
        (None, crate::service::KeySource::File(f)) => crate::service::pending_key_file(f),
        (None, _) => {
            return Err("--new-key-file FILE is required: the master key does not come from a key file".into())
        }
    };
    std::path::absolute(&path).map_err(|e| format!("--new-key-file {}: {e}", path.display()))
}

/// A running server rotates: the key travels in a private file whose path is sent.
fn rotate_through_server(config: &Config, connect: &remote::Connect, given: Option<PathBuf>) -> Result<ExitCode, String> {
    let url = match &connect.url {
        Some(u) => u.clone(),
        None => remote::listen_url(config)?,
    };
    let api = remote::Remote::new(&url, connect, "a running server holds the store, so it rotates the master key")?;
    let new_key_file = new_key_path(&crate::app::key_source(config), given)?;
    let new_key = MasterKey::generate().map_err(|e| e.to_string())?;
    write_new_key_file(&new_key_file, &new_key)?;
    drop(new_key);
    let body = serde_json::json!({ "new_key_file": new_key_file.to_string_lossy() });
    let outcome = api.call(reqwest::Method::POST, api.url(&["api", "admin", "keys", "rotate"]), Some(body));
    let r = match outcome {
        Ok(Ok(v)) => v,
        Ok(Err(refusal)) => {
            // Refused: nothing changed and the key was never used.
            let _ = std::fs::remove_file(&new_key_file);
            return Err(api.explain(&refusal));
        }
        // No answer: the server may have rotated; keep the file so no key is lost.
        Err(e) => {
            return Err(format!(
                "{e}; the new key stays in {} in case the server used it (`credhost keys verify` with it \
                 after stopping the server tells)",
                new_key_file.display()
            ))
        }
    };
    let s = |k: &str| r[k].as_str().unwrap_or("?").to_string();
    println!(
        "the server re-wrapped {} data keys: master key {} retired, now {}",
        r["namespaces"].as_u64().unwrap_or(0),
        s("previous_key_id"),
        s("key_id")
    );
    if let (Some(file), Some(old)) = (r["key_file"].as_str(), r["previous_key_file"].as_str()) {
        println!("the new key replaced {file}; the old key is kept in {old} (it no longer opens the store)");
    }
    if let Some(todo) = r["action_needed"].as_str() {
        println!("ACTION NEEDED: {todo}");
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
    let mut f = options.open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => format!(
            "{} already exists (left by a rotation that did not finish?). If the store opens with the \
             configured key (`credhost keys verify`), that file is unused: remove it and retry",
            path.display()
        ),
        _ => format!("{}: {e}", path.display()),
    })?;
    f.write_all(key.to_base64().expose_secret().as_bytes()).map_err(|e| format!("{}: {e}", path.display()))?;
    f.sync_all().map_err(|e| format!("{}: {e}", path.display()))
}

fn plugins(config: &Config, connect: &remote::Connect, cmd: PluginsCommand) -> Result<ExitCode, String> {
    if let PluginsCommand::Reload = cmd {
        let url = match &connect.url {
            Some(u) => u.clone(),
            None => remote::listen_url(config)?,
        };
        let api = remote::Remote::new(&url, connect, "`plugins reload` asks the running server")?;
        let report = api.request(reqwest::Method::POST, api.url(&["api", "admin", "plugins", "reload"]), None)?;
        println!("{}", serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?);
        // Refused plugins (even those whose previous version keeps serving) are problems.
        let problems = report["problems"].as_array().map_or(0, Vec::len);
        if problems > 0 {
            eprintln!("reload finished with {problems} problem(s)");
            return Ok(ExitCode::from(1));
        }
        return Ok(ExitCode::SUCCESS);
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
    for w in registry.warnings() {
        println!("WARNING {}: {}", w.origin, w.message);
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

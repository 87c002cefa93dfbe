//! The CLI as a client of a running server: whether one is running, where, the API token
//! (from the environment or a file, never a flag: flags show in `ps`), and requests.

use std::path::{Path, PathBuf};

use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use zeroize::Zeroizing;

use crate::config::Config;

/// The environment variable holding the API token itself.
pub const TOKEN_ENV: &str = "CREDHOST_TOKEN";
/// The environment variable naming a file that holds the API token (like `--token-file`).
pub const TOKEN_FILE_ENV: &str = "CREDHOST_TOKEN_FILE";

/// How to reach a server: the global `--url` / `--token-file` options.
#[derive(Debug, Clone, Default)]
pub struct Connect {
    pub url: Option<String>,
    pub token_file: Option<PathBuf>,
}

/// Where a data command runs.
pub enum Target {
    /// No server holds the store: open it here.
    Direct(Config),
    /// Through a running server's API.
    Remote(Remote),
}

/// Picks the mode: an explicit `--url`/CREDHOST_URL means the API; otherwise the API of
/// the server that holds the store (redb's lock says one does) at `http://<server.listen>`;
/// otherwise the store directly.
pub fn target(connect: &Connect, config_path: Option<&Path>) -> Result<Target, String> {
    if let Some(url) = &connect.url {
        return Remote::new(url, connect, "--url / CREDHOST_URL").map(Target::Remote);
    }
    let config = Config::load(config_path)?;
    if !store_in_use(&config) {
        return Ok(Target::Direct(config));
    }
    let url = listen_url(&config).map_err(|e| {
        format!("the store {} is in use by another process (a running server?), and {e}", config.db_path().display())
    })?;
    let why = "a running server holds the store";
    eprintln!("credhost: {why}; working through its API at {url}");
    Remote::new(&url, connect, why).map(Target::Remote)
}

/// True when another process has the database open (a running server, or another
/// command in the middle of a write). redb allows one process at a time.
pub fn store_in_use(config: &Config) -> bool {
    // PostgreSQL is shared by design: commands open it alongside the servers.
    if config.storage.backend == crate::config::StorageBackend::Postgres {
        return false;
    }
    let path = config.db_path();
    if !std::fs::metadata(&path).is_ok_and(|m| m.len() > 0) {
        return false;
    }
    matches!(
        redb::ReadOnlyDatabase::open(&path),
        Err(redb::DatabaseError::DatabaseAlreadyOpen | redb::DatabaseError::LockProtocolMismatch)
    )
}

/// The refusal for commands that need the store to themselves.
pub fn refuse_if_in_use(config: &Config, command: &str) -> Result<(), String> {
    if store_in_use(config) {
        return Err(format!(
            "the store {} is in use by another process (a running server?): stop it before `credhost {command}`",
            config.db_path().display()
        ));
    }
    Ok(())
}

/// `http://<server.listen>`, with a wildcard address replaced by loopback.
pub fn listen_url(config: &Config) -> Result<String, String> {
    let mut addr = config.server.listen;
    if addr.port() == 0 {
        return Err("server.listen has port 0, so its address is not known: set CREDHOST_URL or --url".into());
    }
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    Ok(format!("http://{addr}"))
}

/// An API token and where it came from (named in errors; the value never is).
pub struct ApiToken {
    pub secret: SecretString,
    /// `CREDHOST_TOKEN` or `the token in FILE`.
    pub source: String,
}

/// Longest token file read (a token is 48 characters).
const MAX_TOKEN_FILE: u64 = 4096;

impl ApiToken {
    /// `--token-file`/CREDHOST_TOKEN_FILE when given, else CREDHOST_TOKEN.
    pub fn from_env(token_file: Option<&Path>) -> Result<ApiToken, String> {
        if let Some(path) = token_file {
            return ApiToken::from_file(path);
        }
        match std::env::var(TOKEN_ENV) {
            Ok(t) if !t.trim().is_empty() => {
                Ok(ApiToken { secret: SecretString::from(t.trim().to_string()), source: TOKEN_ENV.into() })
            }
            _ => Err(format!("{TOKEN_ENV} is not set, nor {TOKEN_FILE_ENV} / --token-file")),
        }
    }

    fn from_file(path: &Path) -> Result<ApiToken, String> {
        use std::io::Read;
        let file = std::fs::File::open(path).map_err(|e| format!("token file {}: {e}", path.display()))?;
        let mut text = Zeroizing::new(String::new());
        file.take(MAX_TOKEN_FILE)
            .read_to_string(&mut text)
            .map_err(|e| format!("token file {}: {e}", path.display()))?;
        let token = text.trim();
        if token.is_empty() || token.contains(char::is_whitespace) {
            return Err(format!("token file {}: expected one token on one line", path.display()));
        }
        if let Some(warning) = crate::fsperm::looser_than_private(path) {
            eprintln!("warning: token file: {warning}");
        }
        Ok(ApiToken { secret: SecretString::from(token.to_string()), source: format!("the token in {}", path.display()) })
    }
}

/// The API's one error shape, read back.
#[derive(Debug)]
pub struct Refusal {
    pub status: u16,
    pub code: String,
    pub message: String,
    pub fields: Vec<(String, String)>,
}

/// A connection to one server with one token.
pub struct Remote {
    pub base: reqwest::Url,
    token: ApiToken,
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
}

/// Parses a server URL; warns when a token would cross the network in plain HTTP.
pub fn server_url(url: &str) -> Result<reqwest::Url, String> {
    let base = reqwest::Url::parse(url).map_err(|e| format!("server URL {url:?}: {e}"))?;
    if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
        return Err(format!("server URL {url:?}: expected http://HOST:PORT or https://HOST:PORT"));
    }
    let loopback = match base.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    };
    if base.scheme() == "http" && !loopback {
        eprintln!("warning: {base} is plain HTTP to another host: the API token crosses the network unencrypted");
    }
    Ok(base)
}

impl Remote {
    /// `why` says why the API is used (in the error when there is no token).
    pub fn new(url: &str, connect: &Connect, why: &str) -> Result<Remote, String> {
        let base = server_url(url)?;
        let token = ApiToken::from_env(connect.token_file.as_deref()).map_err(|e| {
            format!(
                "{why}, so this command goes through the server's API at {base} and needs an API token: {e}. \
                 Set {TOKEN_ENV}, or put the token in a file and set {TOKEN_FILE_ENV} or pass --token-file FILE"
            )
        })?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
        Ok(Remote { base, token, rt, client: super::api_client()? })
    }

    /// `segments` are percent-encoded one by one (user names and ids are never spliced raw).
    pub fn url(&self, segments: &[&str]) -> reqwest::Url {
        let mut url = self.base.clone();
        {
            let mut path = url.path_segments_mut().expect("checked in new");
            path.pop_if_empty();
            path.extend(segments);
        }
        url
    }

    /// One request. `Ok(Err(_))`: the server answered with an error.
    pub fn call(
        &self,
        method: Method,
        url: reqwest::Url,
        body: Option<Value>,
    ) -> Result<Result<Value, Refusal>, String> {
        let unreachable = |e: reqwest::Error| format!("cannot reach the credhost server at {}: {e}", self.base);
        self.rt.block_on(async {
            let mut req = self.client.request(method, url).bearer_auth(self.token.secret.expose_secret());
            if let Some(b) = body {
                req = req.json(&b);
            }
            let resp = req.send().await.map_err(unreachable)?;
            let status = resp.status();
            let text = Zeroizing::new(resp.text().await.map_err(unreachable)?);
            if status.is_success() {
                if text.trim().is_empty() {
                    return Ok(Ok(Value::Null));
                }
                return serde_json::from_str(&text)
                    .map(Ok)
                    .map_err(|e| format!("the server at {} answered {status} with something that is not JSON: {e}", self.base));
            }
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let e = &v["error"];
            let fields = e["fields"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|f| (f["field"].as_str().unwrap_or("").to_string(), f["message"].as_str().unwrap_or("").to_string()))
                        .collect()
                })
                .unwrap_or_default();
            Ok(Err(Refusal {
                status: status.as_u16(),
                code: e["code"].as_str().unwrap_or("").to_string(),
                message: e["message"].as_str().map(str::to_string).unwrap_or_else(|| format!("the server answered {status}")),
                fields,
            }))
        })
    }

    /// Like [`Remote::call`], with a refusal turned into a sentence.
    pub fn request(&self, method: Method, url: reqwest::Url, body: Option<Value>) -> Result<Value, String> {
        self.call(method, url, body)?.map_err(|r| self.explain(&r))
    }

    /// A refusal as a sentence that names the fix where there is one.
    pub fn explain(&self, r: &Refusal) -> String {
        match r.code.as_str() {
            "unauthorized" => format!("the server refused {} (unknown, expired or revoked)", self.token.source),
            "forbidden" => format!("{} ({} belongs to a user who is not an admin)", r.message, self.token.source),
            _ if !r.fields.is_empty() => super::flag_errors(r.fields.iter().map(|(f, m)| (f.as_str(), m.as_str()))),
            "" => r.message.clone(),
            code => format!("{} ({code})", r.message),
        }
    }
}

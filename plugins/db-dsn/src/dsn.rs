//! Offline DSN checks: URL form (`postgres://`, `postgresql://`, `mysql://`, `mariadb://`)
//! and PostgreSQL's `key=value` form.
//!
//! The whole DSN is a secret and a mis-split (an unencoded `/` or `@` in a password)
//! can put password text where a host or port is expected, so messages quote only
//! fixed words, a lower-case scheme, and keywords written as `keyword=` outside a password.

/// The first problem found, as a sentence about field `dsn`.
pub fn check(dsn: &str) -> Result<(), String> {
    if dsn.starts_with("jdbc:") {
        return Err("dsn is a JDBC URL; remove the jdbc: prefix.".into());
    }
    match url_scheme(dsn) {
        Some(scheme) => check_url(scheme, &dsn[scheme.len() + 3..]),
        None if dsn.contains('=') => check_key_values(dsn),
        None => Err(
            "dsn must be a URL such as postgres://user:password@host:5432/db \
                     or key=value pairs such as host=… dbname=… user=… password=…."
                .into(),
        ),
    }
}

/// `scheme` when `dsn` starts with `scheme://`.
fn url_scheme(dsn: &str) -> Option<&str> {
    let (scheme, _) = dsn.split_once("://")?;
    let mut chars = scheme.chars();
    let ok = chars.next()?.is_ascii_alphabetic()
        && chars.all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    ok.then_some(scheme)
}

#[derive(Clone, Copy, PartialEq)]
enum Engine {
    Postgres,
    MySql,
}

const PG_SSLMODES: &[&str] = &[
    "disable",
    "allow",
    "prefer",
    "require",
    "verify-ca",
    "verify-full",
];
const MYSQL_SSLMODES: &[&str] = &[
    "disabled",
    "preferred",
    "required",
    "verify_ca",
    "verify_identity",
];
const BAD_PORT: &str = "dsn has an invalid port; use a number from 1 to 65535.";

fn check_url(scheme: &str, rest: &str) -> Result<(), String> {
    let engine = match scheme.to_ascii_lowercase().as_str() {
        "postgres" | "postgresql" => Engine::Postgres,
        "mysql" | "mariadb" => Engine::MySql,
        _ => return Err(unsupported_scheme(scheme)),
    };
    if rest.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Err(
            "dsn must not contain spaces or line breaks; percent-encode a space as %20.".into(),
        );
    }
    if rest.contains('#') {
        return Err("dsn contains #; percent-encode it as %23 (in a password too).".into());
    }
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((userinfo, _)) if userinfo.contains('@') => {
            return Err("dsn has more than one @ before the host; percent-encode @ in the user name or password as %40.".into());
        }
        Some((userinfo, hosts)) => (Some(userinfo), hosts),
        None if tail.contains('@') => {
            return Err("dsn has an @ after the host part; percent-encode special characters in the user name \
                        and password (/ as %2F, ? as %3F, @ as %40)."
                .into());
        }
        None => (None, authority),
    };
    let (path, query) = tail.split_once('?').unwrap_or((tail, ""));
    let params = parse_query(query)?;
    let param = |name: &str| {
        params
            .iter()
            .rev()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };

    let (user, password) = match userinfo {
        Some(info) => info
            .split_once(':')
            .map_or((info, None), |(u, p)| (u, Some(p))),
        None => ("", None),
    };
    decode(user).map_err(|_| {
        "dsn has an invalid percent-escape in the user name; write a literal % as %25."
    })?;
    if let Some(password) = password {
        decode(password).map_err(|_| {
            "dsn has an invalid percent-escape in the password; write a literal % as %25."
        })?;
    }
    if user.is_empty() && param("user").is_none_or(str::is_empty) {
        return Err(
            "dsn has no user name; write it before the host: scheme://user:password@host/….".into(),
        );
    }

    check_hosts(hosts, engine)?;
    if hosts.is_empty() && param("host").is_none_or(str::is_empty) {
        return Err(
            "dsn has no host; write it after the credentials: scheme://user:password@host:port/…."
                .into(),
        );
    }
    let database = path.strip_prefix('/').unwrap_or(path);
    if database.contains('/') {
        return Err(
            "dsn database name must be a single path segment; percent-encode / as %2F.".into(),
        );
    }
    decode(database).map_err(|_| {
        "dsn has an invalid percent-escape in the database name; write a literal % as %25."
    })?;

    if let Some(port) = param("port") {
        port.split(',')
            .try_for_each(|p| port_ok(p).map(drop).ok_or(BAD_PORT))?;
    }
    match engine {
        Engine::Postgres => check_sslmode(param("sslmode"), PG_SSLMODES),
        Engine::MySql => check_sslmode(param("ssl-mode").or(param("sslmode")), MYSQL_SSLMODES),
    }
}

/// Names the scheme only when it looks like one (short, lower case): a password pasted
/// without its URL would be mixed-case text, and is never quoted.
fn unsupported_scheme(scheme: &str) -> String {
    const USE: &str = "use postgres://, postgresql://, mysql:// or mariadb://";
    let nameable = scheme.len() <= 16
        && scheme
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b));
    if nameable {
        format!("dsn has the unsupported scheme {scheme}://; {USE}.")
    } else {
        format!("dsn has an unsupported scheme; {USE}.")
    }
}

/// `host[:port]`, comma-separated for PostgreSQL; IPv6 addresses in brackets.
fn check_hosts(hosts: &str, engine: Engine) -> Result<(), String> {
    if hosts.is_empty() {
        return Ok(());
    }
    if engine == Engine::MySql && hosts.contains(',') {
        return Err("dsn names several hosts; MySQL URLs take one host.".into());
    }
    for item in hosts.split(',') {
        let (host_ok, port) = match item.strip_prefix('[') {
            Some(v6) => {
                let (addr, after) = v6
                    .split_once(']')
                    .ok_or("dsn has an unclosed [ in an IPv6 host.")?;
                let port = match after {
                    "" => None,
                    _ => Some(after.strip_prefix(':').ok_or(BAD_PORT)?),
                };
                (
                    !addr.is_empty()
                        && addr
                            .chars()
                            .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.'),
                    port,
                )
            }
            None => {
                let (host, port) = item
                    .split_once(':')
                    .map_or((item, None), |(h, p)| (h, Some(p)));
                if host.is_empty() && engine == Engine::MySql {
                    return Err("dsn has no host; write it after the credentials: scheme://user:password@host:port/….".into());
                }
                (
                    host.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-._~%".contains(c))
                        && decode(host).is_ok(),
                    port,
                )
            }
        };
        if !host_ok {
            return Err("dsn has an invalid host; percent-encode special characters in the password (/ as %2F).".into());
        }
        if let Some(port) = port {
            port_ok(port).ok_or(BAD_PORT)?;
        }
    }
    Ok(())
}

fn port_ok(port: &str) -> Option<u16> {
    let digits = !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit());
    port.parse().ok().filter(|&p| digits && p != 0)
}

fn check_sslmode(mode: Option<&str>, allowed: &[&str]) -> Result<(), String> {
    match mode {
        Some(m) if !allowed.iter().any(|a| a.eq_ignore_ascii_case(m)) => Err(format!(
            "dsn sslmode must be one of: {}.",
            allowed.join(", ")
        )),
        _ => Ok(()),
    }
}

/// `name=value&…`, percent-decoded.
fn parse_query(query: &str) -> Result<Vec<(String, String)>, String> {
    const BAD: &str =
        "dsn query parameters must be name=value pairs separated by &, with valid percent-escapes.";
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').ok_or(BAD)?;
            match (decode(k), decode(v)) {
                (Ok(k), Ok(v)) if !k.is_empty() => Ok((k, v)),
                _ => Err(BAD.into()),
            }
        })
        .collect()
}

/// Percent-decoding; the result must be UTF-8.
fn decode(s: &str) -> Result<String, ()> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(())?;
            let hex = core::str::from_utf8(hex).map_err(drop)?;
            out.push(u8::from_str_radix(hex, 16).map_err(drop)?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(drop)
}

/// libpq's connection keywords (PostgreSQL 17).
const PG_KEYWORDS: &[&str] = &[
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "passfile",
    "require_auth",
    "channel_binding",
    "connect_timeout",
    "client_encoding",
    "options",
    "application_name",
    "fallback_application_name",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
    "replication",
    "gssencmode",
    "sslmode",
    "sslnegotiation",
    "requiressl",
    "sslcompression",
    "sslcert",
    "sslkey",
    "sslpassword",
    "sslcertmode",
    "sslrootcert",
    "sslcrl",
    "sslcrldir",
    "sslsni",
    "requirepeer",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "krbsrvname",
    "gsslib",
    "gssdelegation",
    "service",
    "target_session_attrs",
    "load_balance_hosts",
];

fn check_key_values(dsn: &str) -> Result<(), String> {
    let pairs = parse_key_values(dsn)?;
    let get = |k: &str| {
        pairs
            .iter()
            .rev()
            .find(|(key, _)| *key == k)
            .map(|(_, v)| v.as_str())
    };
    if get("host").or(get("hostaddr")).is_none_or(str::is_empty) {
        return Err("dsn has no host; add host=….".into());
    }
    if get("user").is_none_or(str::is_empty) {
        return Err("dsn has no user name; add user=….".into());
    }
    if let Some(port) = get("port") {
        port.split(',')
            .try_for_each(|p| port_ok(p.trim()).map(drop).ok_or(BAD_PORT))?;
    }
    check_sslmode(get("sslmode"), PG_SSLMODES)
}

/// libpq's `conninfo` syntax: `keyword = value` separated by spaces; a value may be
/// single-quoted; `\` escapes the next character in quoted and bare values alike.
fn parse_key_values(dsn: &str) -> Result<Vec<(&'static str, String)>, String> {
    let mut pairs = Vec::new();
    let mut chars = dsn.chars().peekable();
    let mut previous: Option<&'static str> = None;
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut word = String::new();
        while let Some(c) = chars.next_if(|&c| c != '=' && !c.is_whitespace()) {
            word.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(not_a_pair(previous));
        }
        let Some(keyword) = PG_KEYWORDS.iter().find(|k| **k == word) else {
            return Err(match previous {
                Some("password" | "sslpassword") => not_a_pair(previous),
                _ => unknown_keyword(&word),
            });
        };
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\'') => break,
                    Some('\\') => value.extend(chars.next()),
                    Some(c) => value.push(c),
                    None => {
                        return Err(format!(
                            "dsn: the quoted value of {keyword} has no closing '."
                        ))
                    }
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        pairs.push((*keyword, value));
        previous = Some(keyword);
    }
}

/// Text where a `keyword=` was expected; after a password that is likely password text.
fn not_a_pair(previous: Option<&str>) -> String {
    match previous {
        Some(p @ ("password" | "sslpassword")) => format!(
            "dsn: the text after the {p} value is not a keyword=value pair; \
             quote a value that contains spaces: {p}='…'."
        ),
        _ => "dsn must be keyword=value pairs separated by spaces, such as host=db.example.com user=app; \
              quote values that contain spaces: password='…'."
            .into(),
    }
}

/// Only a word written as `word=` is named: it is in keyword position, not value text.
fn unknown_keyword(word: &str) -> String {
    if !word.is_empty()
        && word.len() <= 40
        && word.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
    {
        format!("dsn has the unknown keyword {word}; PostgreSQL would refuse it.")
    } else {
        "dsn has an unknown keyword; PostgreSQL accepts host, port, dbname, user, password, sslmode and the like.".into()
    }
}

#[cfg(test)]
mod tests;

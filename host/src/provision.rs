//! Config-file provisioning: the `[[users]]` and `[[credentials]]` a deployment declares,
//! reconciled at start-up ([`reconcile`]) and checked offline ([`check_file`]).
//!
//! Rules:
//! - Missing users are created without a token (`credhost tokens create <user>` issues one).
//! - Missing credentials are created; existing ones are compared with the file (non-secret
//!   fields, environment, description and tags directly, secret values inside the service)
//!   and updated through [`Service::update`] only when something differs, so the type's
//!   `validate` always runs and the secret version only moves when a secret changed.
//! - Nothing is deleted unless `[provision] prune = true`; then credentials of the users
//!   listed in `[[users]]` that the file does not declare are soft-deleted (restorable).
//! - Every value is resolved (env vars, files) and every entry checked before anything is
//!   written; a failure names the credential and field, never a value.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use secrecy::SecretString;

use crate::config::{Config, CredentialEntry, FieldSource};
use crate::plugins::{Bound, Registry};
use crate::service::{CreateCredential, FieldInput, Service, ServiceError, UpdateCredential};
use crate::store::{Credential, ListQuery, Principal, Role, StoreError};

/// The actor recorded in audit records for users created from the config.
const ACTOR: &str = "config";

/// What start-up provisioning did; entries are `user/name` (or user names).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub users_created: Vec<String>,
    pub created: Vec<String>,
    pub updated: Vec<String>,
    pub unchanged: Vec<String>,
    pub restored: Vec<String>,
    pub pruned: Vec<String>,
}

/// Where a problem is, so `check-config` can print a line number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Loc {
    /// The file as a whole (or an environment override).
    File,
    /// A byte offset into the file.
    Offset(usize),
    /// The n-th `[[users]]` entry.
    User(usize),
    /// The n-th `[[credentials]]` entry.
    Credential(usize),
    /// A field of the n-th `[[credentials]]` entry.
    Field(usize, String),
}

/// One problem with a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub loc: Loc,
    pub message: String,
}

impl Problem {
    fn new(loc: Loc, message: impl Into<String>) -> Problem {
        Problem { loc, message: message.into() }
    }
}

fn label(c: &CredentialEntry) -> String {
    format!("{}/{}", c.user, c.name)
}

/// Reads one field's value from where the config says it is. Errors name the variable or
/// path, never a value.
pub fn resolve(source: &FieldSource) -> Result<SecretString, String> {
    match source {
        FieldSource::Env(var) => match std::env::var(var) {
            Ok(v) => Ok(SecretString::from(v)),
            Err(std::env::VarError::NotPresent) => Err(format!("environment variable `{var}` is not set")),
            Err(std::env::VarError::NotUnicode(_)) => Err(format!("environment variable `{var}` is not valid UTF-8")),
        },
        FieldSource::File(path) => match std::fs::read(path) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(mut s) => {
                    let keep = s.trim_end_matches(['\n', '\r']).len();
                    s.truncate(keep);
                    Ok(SecretString::from(s))
                }
                Err(_) => Err(format!("file `{}` is not valid UTF-8", path.display())),
            },
            Err(e) => Err(format!("cannot read file `{}`: {e}", path.display())),
        },
        FieldSource::Literal(s) => Ok(SecretString::from(s.clone())),
    }
}

/// Checks the declared users and credentials without touching data: duplicates, owners,
/// types, field names, secret fields given literals, env vars and files. With `validate`
/// (and a registry), resolved values are also run through the type's offline checks.
pub fn check(config: &Config, registry: Option<&Registry>, validate: bool) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut users = BTreeSet::new();
    for (i, u) in config.users.iter().enumerate() {
        if !users.insert(u.name.as_str()) {
            problems.push(Problem::new(Loc::User(i), format!("duplicate user `{}`", u.name)));
        }
    }
    let mut seen = BTreeSet::new();
    for (i, c) in config.credentials.iter().enumerate() {
        let name = label(c);
        if !seen.insert((c.user.as_str(), c.name.as_str())) {
            problems.push(Problem::new(Loc::Credential(i), format!("duplicate credential `{name}`")));
        }
        let name_problems = crate::names::name(&c.name).err().into_iter().chain(crate::names::tags(&c.tags).err().into_iter().flatten());
        for e in name_problems {
            problems.push(Problem::new(Loc::Credential(i), format!("credential `{name}`: field `{}`: {}", e.field, e.message)));
        }
        if !users.contains(c.user.as_str()) {
            problems.push(Problem::new(
                Loc::Credential(i),
                format!("credential `{name}`: user `{}` is not declared in [[users]]", c.user),
            ));
        }
        let Some(registry) = registry else { continue };
        let plugin = match registry.get(&c.kind) {
            Ok(p) => p,
            Err(_) => {
                let known: Vec<String> = registry.list().iter().map(|p| p.descriptor.id.clone()).collect();
                problems.push(Problem::new(
                    Loc::Credential(i),
                    format!("credential `{name}`: unknown credential type `{}` (known: {})", c.kind, known.join(", ")),
                ));
                continue;
            }
        };
        let d = &plugin.descriptor;
        if let Some(env) = &c.environment {
            if !d.environments.is_empty() && !d.environments.contains(env) {
                problems.push(Problem::new(
                    Loc::Credential(i),
                    format!("credential `{name}`: environment `{env}` is not one of: {}", d.environments.join(", ")),
                ));
            }
        }
        let mut bound = Bound { environment: c.environment.clone(), ..Bound::default() };
        let mut complete = true;
        for (field, source) in &c.fields {
            let loc = Loc::Field(i, field.clone());
            let Some(spec) = d.field(field) else {
                let names: Vec<&str> = d.fields.iter().map(|f| f.name.as_str()).collect();
                problems.push(Problem::new(
                    loc,
                    format!("credential `{name}`: unknown field `{field}` for type `{}` (fields: {})", c.kind, names.join(", ")),
                ));
                complete = false;
                continue;
            };
            if spec.secret && matches!(source, FieldSource::Literal(_)) {
                problems.push(Problem::new(
                    loc,
                    format!("secret field `{field}` of credential `{name}` must come from env: or file:"),
                ));
                complete = false;
                continue;
            }
            match resolve(source) {
                Ok(v) if spec.secret => {
                    bound.secrets.insert(field.clone(), v);
                }
                Ok(v) => {
                    bound.fields.insert(field.clone(), secrecy::ExposeSecret::expose_secret(&v).to_string());
                }
                Err(e) => {
                    problems.push(Problem::new(loc, format!("credential `{name}`: field `{field}`: {e}")));
                    complete = false;
                }
            }
        }
        if validate && complete {
            match registry.runtime().validate(&plugin, bound).result {
                Ok(Ok(_)) => {}
                Ok(Err(errors)) => {
                    for e in errors {
                        let loc = if c.fields.contains_key(&e.field) {
                            Loc::Field(i, e.field.clone())
                        } else {
                            Loc::Credential(i)
                        };
                        problems.push(Problem::new(loc, format!("credential `{name}`: field `{}`: {}", e.field, e.message)));
                    }
                }
                Err(e) => problems.push(Problem::new(Loc::Credential(i), format!("credential `{name}`: validate failed: {e}"))),
            }
        }
    }
    problems
}

/// Start-up reconciliation; see the [module docs](self). Runs before the server listens.
/// An error aborts start-up; it names the credential and field, never a value.
pub fn reconcile(service: &Service, config: &Config) -> Result<Report, String> {
    let mut report = Report::default();
    if config.users.is_empty() && config.credentials.is_empty() {
        return Ok(report);
    }
    // 1. Check, resolve and validate (the type's offline checks) everything before
    //    writing anything, so a bad entry changes nothing at all.
    let problems = check(config, Some(service.registry()), true);
    if !problems.is_empty() {
        let list: Vec<String> = problems.into_iter().map(|p| p.message).collect();
        return Err(format!("provisioning from the config failed, nothing was changed:\n  {}", list.join("\n  ")));
    }
    let mut resolved = Vec::with_capacity(config.credentials.len());
    for c in &config.credentials {
        let mut fields = BTreeMap::new();
        for (field, source) in &c.fields {
            let v = resolve(source).map_err(|e| format!("credential `{}`: field `{field}`: {e}", label(c)))?;
            fields.insert(field.clone(), v);
        }
        resolved.push(fields);
    }

    // 2. Users.
    for u in &config.users {
        let role = if u.admin { Role::Admin } else { Role::User };
        match service.store().get_user(&u.name) {
            Ok(existing) => {
                if existing.role != role {
                    tracing::warn!(user = %u.name, "provision: user `{}` exists with role {:?}; the config says {:?} (roles are not changed)",
                        u.name, existing.role, role);
                }
            }
            Err(StoreError::NotFound) => {
                service.store().add_user(ACTOR, &u.name, role).map_err(|e| format!("creating user `{}`: {e}", u.name))?;
                tracing::info!(user = %u.name, "provision: created user `{}` (no token issued; run `credhost tokens create {}`)", u.name, u.name);
                report.users_created.push(u.name.clone());
            }
            Err(e) => return Err(format!("reading user `{}`: {e}", u.name)),
        }
    }

    // 3. Credentials, user by user.
    for u in &config.users {
        let p = principal(service, &u.name)?;
        let mut existing: BTreeMap<String, Credential> =
            all_credentials(service, &p)?.into_iter().map(|c| (c.name.clone(), c)).collect();
        let mut declared = BTreeSet::new();
        for (c, fields) in config.credentials.iter().zip(resolved.iter_mut()) {
            if c.user != u.name {
                continue;
            }
            // Stored names are canonical (NFC): an NFD spelling in the file names the same one.
            let canonical = crate::names::name(&c.name).unwrap_or_else(|_| c.name.clone());
            declared.insert(canonical.clone());
            let fields = std::mem::take(fields);
            apply(service, &p, c, fields, existing.remove(&canonical), &mut report)?;
        }
        if config.provision.prune {
            for (name, cred) in existing {
                if cred.deleted_at.is_some() || declared.contains(&name) {
                    continue;
                }
                service
                    .delete(&p, &cred.id.to_string(), false)
                    .map_err(|e| format!("pruning credential `{}/{name}`: {e}", u.name))?;
                tracing::info!(user = %u.name, credential = %name, "provision: pruned credential `{}/{name}` (soft-deleted)", u.name);
                report.pruned.push(format!("{}/{name}", u.name));
            }
        }
    }
    tracing::info!(
        users_created = report.users_created.len(),
        created = report.created.len(),
        updated = report.updated.len(),
        unchanged = report.unchanged.len(),
        restored = report.restored.len(),
        pruned = report.pruned.len(),
        "provision: done"
    );
    Ok(report)
}

/// Creates, restores or updates one declared credential.
fn apply(
    service: &Service,
    p: &Principal,
    c: &CredentialEntry,
    fields: BTreeMap<String, SecretString>,
    current: Option<Credential>,
    report: &mut Report,
) -> Result<(), String> {
    let name = label(c);
    let fail = |e: ServiceError| format!("credential `{name}`: {}", describe(e));
    let inputs = |fields: &BTreeMap<String, SecretString>| -> BTreeMap<String, FieldInput> {
        fields.iter().map(|(k, v)| (k.clone(), FieldInput(v.clone()))).collect()
    };
    let Some(current) = current else {
        let req = CreateCredential {
            name: c.name.clone(),
            kind: c.kind.clone(),
            description: c.description.clone(),
            tags: c.tags.clone(),
            environment: c.environment.clone(),
            fields: inputs(&fields),
            monitor: None,
        };
        let view = service.create(p, req).map_err(fail)?;
        tracing::info!(user = %c.user, credential = %c.name, id = %view.id, "provision: created credential `{name}` ({})", c.kind);
        report.created.push(name);
        return Ok(());
    };
    if current.kind != c.kind {
        return Err(format!(
            "credential `{name}` exists with type `{}` but the config says `{}`; delete (purge) or rename it first",
            current.kind, c.kind
        ));
    }
    let id = current.id.to_string();
    let restored = current.deleted_at.is_some();
    if restored {
        service.restore(p, &id).map_err(fail)?;
    }
    // Compared in stored (canonical) form, so duplicates or NFD in the file are no change.
    let tags = crate::names::tags(&c.tags).unwrap_or_else(|_| c.tags.clone());
    let result = (|| {
        let diff = service.compare_fields(p, &id, c.environment.clone(), inputs(&fields))?;
        let meta = current.description != c.description || current.tags != tags;
        if diff.is_empty() && !meta {
            return Ok(None);
        }
        let mut upd = UpdateCredential {
            description: (current.description != c.description).then(|| c.description.clone()),
            tags: (current.tags != tags).then(|| tags.clone()),
            ..UpdateCredential::default()
        };
        if !diff.is_empty() {
            upd.environment = Some(c.environment.clone());
            upd.fields = inputs(&fields).into_iter().map(|(k, v)| (k, Some(v))).collect();
            for removed in &diff.removed {
                upd.fields.insert(removed.clone(), None);
            }
        }
        service.update(p, &id, upd)?;
        let mut what: Vec<String> = diff.changed.iter().chain(diff.removed.iter()).cloned().collect();
        if diff.environment {
            what.push("environment".into());
        }
        if current.description != c.description {
            what.push("description".into());
        }
        if current.tags != tags {
            what.push("tags".into());
        }
        Ok(Some(what))
    })();
    match result {
        Ok(changed) => {
            if restored {
                tracing::info!(user = %c.user, credential = %c.name, id = %id, "provision: restored credential `{name}`");
                report.restored.push(name.clone());
            }
            match changed {
                Some(what) => {
                    tracing::info!(user = %c.user, credential = %c.name, id = %id, "provision: updated credential `{name}` ({})", what.join(", "));
                    report.updated.push(name);
                }
                None => {
                    tracing::info!(user = %c.user, credential = %c.name, id = %id, "provision: unchanged credential `{name}`");
                    report.unchanged.push(name);
                }
            }
            Ok(())
        }
        Err(e) => {
            if restored {
                // Leave it as it was: soft-deleted.
                let _ = service.delete(p, &id, false);
            }
            Err(fail(e))
        }
    }
}

/// A service error for a log line: field errors spelled out (they never carry values).
fn describe(e: ServiceError) -> String {
    match e {
        ServiceError::InvalidFields(errors) => {
            let list: Vec<String> = errors.iter().map(|f| format!("field `{}`: {}", f.field, f.message)).collect();
            list.join("; ")
        }
        other => other.to_string(),
    }
}

fn principal(service: &Service, user: &str) -> Result<Principal, String> {
    let u = service.store().get_user(user).map_err(|e| format!("user `{user}`: {e}"))?;
    Ok(Principal::operator(&u, ACTOR))
}

/// Every credential of the user, soft-deleted ones included.
fn all_credentials(service: &Service, p: &Principal) -> Result<Vec<Credential>, String> {
    let mut out = Vec::new();
    let mut query = ListQuery { include_deleted: true, limit: 1000, ..ListQuery::default() };
    loop {
        let page = service
            .store()
            .list_credentials(p.namespace, &query)
            .map_err(|e| format!("listing credentials of `{}`: {e}", p.user))?;
        out.extend(page.items);
        match page.next_cursor {
            Some(c) => query.cursor = Some(c),
            None => return Ok(out),
        }
    }
}

// ---- check-config ----

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Where the entries of a file start, for line numbers of semantic problems.
#[derive(Default)]
struct Lines {
    users: Vec<usize>,
    credentials: Vec<(usize, BTreeMap<String, usize>)>,
}

/// Parses `text` as leniently as possible: every syntax error, every section or entry
/// that does not deserialize (unknown keys, wrong types) becomes a problem with its
/// offset, and everything that does parse is kept for the semantic checks.
fn parse_all(text: &str) -> (Config, Lines, Vec<Problem>) {
    use toml::de::{DeTable, DeValue, ValueDeserializer};

    fn de<T: serde::de::DeserializeOwned>(
        text: &str,
        section: &str,
        v: &toml::Spanned<DeValue<'_>>,
        problems: &mut Vec<Problem>,
    ) -> Option<T> {
        match T::deserialize(ValueDeserializer::from(v.clone())) {
            Ok(t) => Some(t),
            Err(e) => {
                let at = e.span().map_or(v.span().start, |s| s.start);
                let why = e.message().trim();
                // Name the key and quote the bad value, except in `[[credentials]]` and
                // `[[webhooks]]`: a literal there may be a secret given by mistake.
                let message = match e.span().and_then(|s| key_at(v, &s)) {
                    Some((key, value)) if section != "[credentials]" && section != "[webhooks]" => {
                        let shown: String = text.get(value).unwrap_or("").chars().take(80).collect();
                        let sep = if why.starts_with("is ") { " " } else { ": " };
                        format!("[{section}] {key}: {shown}{sep}{why}")
                    }
                    Some((key, _)) => format!("[{section}] {key}: {why}"),
                    None => format!("[{section}]: {why}"),
                };
                problems.push(Problem::new(Loc::Offset(at), message));
                None
            }
        }
    }

    /// The dotted key whose value holds `span`, and that value's span; none when `span`
    /// is a key itself (an unknown key, which the message already names).
    fn key_at(v: &toml::Spanned<DeValue<'_>>, span: &std::ops::Range<usize>) -> Option<(String, std::ops::Range<usize>)> {
        let DeValue::Table(table) = v.get_ref() else { return None };
        for (k, value) in table.iter() {
            let vs = value.span();
            if vs.start <= span.start && span.end <= vs.end {
                return Some(match key_at(value, span) {
                    Some((inner, at)) => (format!("{}.{inner}", k.get_ref()), at),
                    None => (k.get_ref().to_string(), vs),
                });
            }
        }
        None
    }

    let mut problems = Vec::new();
    let mut config = Config::default();
    let mut lines = Lines::default();
    let (root, errors) = DeTable::parse_recoverable(text);
    for e in errors {
        let at = e.span().map_or(0, |s| s.start);
        problems.push(Problem::new(Loc::Offset(at), e.message().trim().to_string()));
    }
    for (key, value) in root.get_ref().iter() {
        let p = &mut problems;
        match key.get_ref().as_ref() {
            "server" => config.server = de(text, "server", value, p).unwrap_or(config.server),
            "storage" => config.storage = de(text, "storage", value, p).unwrap_or(config.storage),
            "keys" => config.keys = de(text, "keys", value, p).unwrap_or(config.keys),
            "plugins" => config.plugins = de(text, "plugins", value, p).unwrap_or(config.plugins),
            "provision" => config.provision = de(text, "provision", value, p).unwrap_or(config.provision),
            "webhooks" => config.webhooks = de(text, "[webhooks]", value, p).unwrap_or_default(),
            "webhook_delivery" => {
                config.webhook_delivery = de(text, "webhook_delivery", value, p).unwrap_or(config.webhook_delivery)
            }
            "users" | "credentials" => {
                let DeValue::Array(items) = value.get_ref() else {
                    p.push(Problem::new(Loc::Offset(key.span().start), format!("`{}` must be an array of tables ([[{}]])", key.get_ref(), key.get_ref())));
                    continue;
                };
                for item in items.iter() {
                    let at = line_of(text, item.span().start);
                    if key.get_ref() == "users" {
                        if let Some(u) = de(text, "[users]", item, p) {
                            config.users.push(u);
                            lines.users.push(at);
                        }
                    } else if let Some(c) = de::<CredentialEntry>(text, "[credentials]", item, p) {
                        let mut field_lines = BTreeMap::new();
                        if let Some(DeValue::Table(f)) = item.get_ref().get("fields").map(|v| v.get_ref()) {
                            for (k, v) in f.iter() {
                                field_lines.insert(k.get_ref().to_string(), line_of(text, v.span().start));
                            }
                        }
                        config.credentials.push(c);
                        lines.credentials.push((at, field_lines));
                    }
                }
            }
            other => p.push(Problem::new(
                Loc::Offset(key.span().start),
                format!("unknown key `{other}`, expected one of `server`, `storage`, `keys`, `plugins`, `provision`, `users`, `credentials`, `webhooks`, `webhook_delivery`"),
            )),
        }
    }
    (config, lines, problems)
}

/// `credhost check-config FILE`: every problem of the file as `(line, message)`, sorted
/// by line (0 = not tied to a line). Environment overrides apply, as they do for `serve`.
/// Nothing is read from or written to the data dir.
pub fn check_file(path: &Path) -> Vec<(usize, String)> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => return vec![(0, format!("cannot read {}: {e}", path.display()))],
    };
    let (mut config, lines, mut problems) = parse_all(&text);
    if let Err(e) = config.apply_env(|k| std::env::var(k).ok()) {
        problems.push(Problem::new(Loc::File, e));
    }
    if let Err(e) = config.server.check() {
        problems.push(Problem::new(Loc::File, e));
    }
    if let Err(e) = config.monitor.check() {
        problems.push(Problem::new(Loc::File, e));
    }
    if let Err(e) = config.storage.check() {
        problems.push(Problem::new(Loc::File, e));
    }
    // `[[webhooks]]`, `[webhook_delivery]`: the check `serve` runs (secrets read, URLs checked).
    let hooks = config.clone();
    match crate::plugins::caps::netio::run(async move { crate::service::webhooks::Deployment::from_config(&hooks).await.map(|_| ()) }) {
        Ok(Err(e)) => problems.push(Problem::new(Loc::File, e)),
        Err(e) => problems.push(Problem::new(Loc::File, format!("webhooks: {e}"))),
        Ok(Ok(())) => {}
    }
    if let Some(dir) = &config.plugins.dir {
        if !dir.is_dir() {
            problems.push(Problem::new(Loc::File, format!("plugins.dir `{}` is not a directory", dir.display())));
        }
    }
    if std::env::var_os(crate::crypto::MASTER_KEY_ENV).is_none() {
        if let Some(file) = &config.keys.master_key_file {
            if !file.is_file() {
                problems.push(Problem::new(Loc::File, format!("keys.master_key_file `{}` does not exist", file.display())));
            }
        }
    }
    let registry = match crate::app::registry(&config, None) {
        Ok(r) => {
            for lp in r.problems() {
                // A missing plugins.dir is reported above already.
                if config.plugins.dir.as_ref().is_none_or(|d| d.is_dir()) {
                    problems.push(Problem::new(Loc::File, format!("plugin {} not loaded: {}", lp.origin, lp.message)));
                }
            }
            Some(r)
        }
        Err(e) => {
            problems.push(Problem::new(Loc::File, format!("plugins: {e}")));
            None
        }
    };
    problems.extend(check(&config, registry.as_ref(), true));
    let mut out: Vec<(usize, String)> = problems
        .into_iter()
        .map(|p| {
            let line = match &p.loc {
                Loc::File => 0,
                Loc::Offset(o) => line_of(&text, *o),
                Loc::User(i) => lines.users.get(*i).copied().unwrap_or(0),
                Loc::Credential(i) => lines.credentials.get(*i).map_or(0, |c| c.0),
                Loc::Field(i, f) => lines.credentials.get(*i).map_or(0, |c| c.1.get(f).copied().unwrap_or(c.0)),
            };
            (line, p.message)
        })
        .collect();
    out.sort_by_key(|(l, _)| *l);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenient_parse_reports_every_section_with_lines() {
        let text = "[server]\nlisen = 1\n\n[[users]]\nname = \"a\"\nadmn = true\n\n[[users]]\nname = \"b\"\n\n\
                    [[credentials]]\nuser = \"b\"\nname = \"x\"\ntype = \"bearer_token\"\n[credentials.fields]\ntoken = \"env:X\"\n\nbogus = 1\n";
        let (config, lines, problems) = parse_all(text);
        let at: Vec<usize> = problems.iter().map(|p| match p.loc {
            Loc::Offset(o) => line_of(text, o),
            _ => 0,
        }).collect();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].message.contains("lisen") || problems[1].message.contains("lisen"), "{problems:?}");
        assert!(at.contains(&2) && at.contains(&6), "{at:?} {problems:?}");
        assert_eq!(config.users.len(), 1);
        assert_eq!(lines.users, vec![8]);
        assert_eq!(config.credentials.len(), 1);
        assert_eq!(lines.credentials[0].0, 11);
        assert_eq!(lines.credentials[0].1["token"], 16);
        assert_eq!(config.credentials[0].fields["token"], FieldSource::Env("X".into()));
    }

    #[test]
    fn file_values_lose_trailing_newlines_only() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("v");
        std::fs::write(&f, "  abc \n\n").unwrap();
        let v = resolve(&FieldSource::File(f)).unwrap();
        assert_eq!(secrecy::ExposeSecret::expose_secret(&v), "  abc ");
        let e = resolve(&FieldSource::Env("CREDHOST_TEST_SURELY_UNSET_VAR".into())).unwrap_err();
        assert!(e.contains("CREDHOST_TEST_SURELY_UNSET_VAR"), "{e}");
    }
}

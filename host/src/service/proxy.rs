//! Using a credential through the host: the proxy. The caller (an app, or an agent
//! holding a grant) sends a request; the host checks it against the type's `[use]`
//! policy and the grant, applies the type's auth plan with the secrets filled in, sends
//! it through the one egress path, and returns the response with every form of every
//! secret of the credential scrubbed out. The caller never holds the secret.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::header::{HeaderName, HeaderValue};

use super::{audit_entry, require, Result, Service, ServiceError};
use crate::egress::{self, FillError, Filler};
use crate::plugins::manifest::under_prefix;
use crate::plugins::{AuthPlan, Bound, Plugin, PlanValue};
use crate::redact::Scrubber;
use crate::store::{AuditEntry, Outcome, Principal, Scope};

/// The audit action of every proxied use (and refused attempt).
const USE_ACTION: &str = "credential.use";

/// Largest upstream response body returned; the rest is cut (after scrubbing).
pub const MAX_PROXY_RESPONSE: usize = 8 * 1024 * 1024;
/// Time one proxied exchange may take, redirects included.
pub const PROXY_TIMEOUT: Duration = Duration::from_secs(30);

/// Request headers a caller may pass on; everything else (cookies, authorization, the
/// type's own auth headers, hop-by-hop headers) is dropped.
const FORWARDED_REQUEST_HEADERS: &[&str] = &[
    "accept",
    "accept-language",
    "cache-control",
    "content-type",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "idempotency-key",
    "prefer",
    "user-agent",
    "x-request-id",
];

/// Response headers handed back (values scrubbed); `set-cookie` and the rest stay behind.
const RETURNED_RESPONSE_HEADERS: &[&str] = &[
    "content-type",
    "content-language",
    "cache-control",
    "etag",
    "last-modified",
    "link",
    "location",
    "retry-after",
    "x-request-id",
];

/// A request to send through the proxy.
#[derive(Debug)]
pub struct ProxyRequest {
    pub method: String,
    /// Path below the credential's base URL, starting with `/`.
    pub path: String,
    pub query: Option<String>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

/// The upstream's answer, scrubbed.
#[derive(Debug)]
pub struct ProxyResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// A proxied request, ready to send.
struct Prepared {
    request: egress::Request,
    policy: egress::Policy,
    finish: Finish,
}

/// What the answer needs: the credential's scrubber, and what the audit record names.
struct Finish {
    scrubber: Scrubber,
    credential: crate::store::CredentialId,
    method: String,
    path: String,
}

/// Auth plans by (credential, secret version, plugin sha256): `authenticate` runs once
/// per credential version and plugin build, not per request.
#[derive(Default)]
pub(crate) struct PlanCache {
    plans: Mutex<HashMap<(u128, u32, String), Arc<AuthPlan>>>,
}

const PLAN_CACHE_MAX: usize = 10_000;

impl Service {
    /// Sends `req` to the credential's service with the credential applied (scope `use`).
    ///
    /// The one async operation: the checks before and the scrubbing and audit after are
    /// quick synchronous steps run in place, and the exchange itself is awaited on the
    /// caller's runtime, so a call in flight holds no thread (the proxy is a hot path).
    pub async fn proxy(&self, p: &Principal, id: &str, req: ProxyRequest) -> Result<ProxyResponse> {
        let started = Instant::now();
        // Both steps are short (a read transaction, a non-durable commit); `block_in_place`
        // around them cost more than it saved. Only a plan-cache miss runs a plugin.
        let (method, path) = (req.method.to_ascii_uppercase(), clip(&req.path));
        let prepared = self.proxy_prepare(p, id, req);
        // Refusals by policy, grant limits or budget are uses attempted: audited too.
        if let Err(e @ (ServiceError::UseDenied(_) | ServiceError::GrantExhausted)) = &prepared {
            let why = if matches!(e, ServiceError::GrantExhausted) { "grant_exhausted" } else { "use_denied" };
            let detail = format!("{method} {path} status={why} via={}", p.token_id);
            self.audit_later(audit_entry(p, super::parse_id(id).ok(), USE_ACTION, Outcome::Denied, detail));
        }
        let Prepared { request, policy, finish } = prepared?;
        let outcome = egress::send(request, policy).await;
        self.proxy_finish(p, finish, outcome, started)
    }

    /// Checks scope, policy and grant, reads the credential and fills in the plan.
    fn proxy_prepare(&self, p: &Principal, id: &str, req: ProxyRequest) -> Result<Prepared> {
        require(p, Scope::Use)?;
        let id = super::parse_id(id)?;
        super::grant_reaches(p, id)?;
        // One read transaction for the (live) credential and its secrets: this is a hot path.
        let (c, mut secrets) = match self.store().credential_for_use(p.namespace, id) {
            Err(crate::store::StoreError::NotFound) => return Err(self.not_found(p, id)),
            r => r?,
        };
        let plugin = self.registry().get(&c.kind)?;
        let denied = |why: String| ServiceError::UseDenied(why);
        let policy = http_use(&plugin)?;
        let method = req.method.to_ascii_uppercase();
        if !policy.allows(&method, &req.path) {
            return Err(denied(format!(
                "{method} {} is not allowed for type `{}` (methods {}; paths under {})",
                clip(&req.path),
                c.kind,
                policy.methods.join(", "),
                policy.path_prefixes.join(", ")
            )));
        }
        if let Some(g) = &p.grant {
            if !g.methods.is_empty() && !g.methods.contains(&method) {
                return Err(denied(format!("this grant allows only {}", g.methods.join(", "))));
            }
            if !g.path_prefixes.is_empty() && !g.path_prefixes.iter().any(|pre| under_prefix(&req.path, pre)) {
                return Err(denied(format!("this grant allows only paths under {}", g.path_prefixes.join(", "))));
            }
            if g.max_calls.is_some() && !self.store().consume_grant_call(&p.token_id)? {
                return Err(ServiceError::GrantExhausted);
            }
        }
        self.check_binding(p, &plugin, &c, &mut secrets, "proxy")?;
        let base = plugin
            .manifest
            .use_base_url(c.environment.as_deref(), &c.fields)
            .map_err(|m| ServiceError::NotImplemented(format!("credential cannot be used: {m}")))?;
        let plan = self.plan_for(p, &plugin, &c)?;

        // The request: caller's path and query on the credential's origin, the plan applied.
        let mut url = base.clone();
        url.set_path(&req.path);
        url.set_query(req.query.as_deref().filter(|q| !q.is_empty()));
        let filler = Filler { fields: &c.fields, secrets: &secrets };
        let fill = |v: &PlanValue| -> Result<(String, bool)> {
            let v = match v {
                PlanValue::Plain(s) => egress::Value::Plain(s),
                PlanValue::Field(f) => egress::Value::Field(f),
                PlanValue::Template(t) => egress::Value::Template(t),
                PlanValue::Basic(u, pw) => egress::Value::Basic(u, pw),
            };
            filler.fill(v).map_err(|e| match e {
                FillError::Missing(name) => ServiceError::BadInput(format!("the credential has no `{name}` set, which its type needs to use it")),
                FillError::Invalid(m) => ServiceError::Plugin(crate::plugins::PluginError::Contract { plugin: plugin.manifest.id.clone(), message: m }),
            })
        };
        if !plan.query.is_empty() {
            let mut pairs = Vec::new();
            for (name, v) in &plan.query {
                pairs.push((name.clone(), fill(v)?.0));
            }
            url.query_pairs_mut().extend_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            for (_, v) in &mut pairs {
                zeroize::Zeroize::zeroize(v);
            }
        }
        let plan_headers: Vec<&str> = plan.headers.iter().map(|(n, _)| n.as_str()).collect();
        let mut headers = Vec::new();
        for (name, value) in &req.headers {
            let lower = name.to_ascii_lowercase();
            if !FORWARDED_REQUEST_HEADERS.contains(&lower.as_str()) || plan_headers.contains(&lower.as_str()) {
                continue;
            }
            if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(lower.as_bytes()), HeaderValue::from_bytes(value)) {
                headers.push((n, v));
            }
        }
        for (name, v) in &plan.headers {
            let (mut text, secret) = fill(v)?;
            let hv = HeaderValue::from_str(&text);
            zeroize::Zeroize::zeroize(&mut text);
            let mut hv = hv.map_err(|_| ServiceError::BadInput(format!("the value for header `{name}` cannot be sent in a header")))?;
            hv.set_sensitive(secret);
            let hn = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| ServiceError::Internal(format!("plan header {name:?} is not a header name")))?;
            headers.push((hn, hv));
        }
        let method_v = reqwest::Method::from_bytes(method.as_bytes()).map_err(|_| denied(format!("bad method {method:?}")))?;
        let body = (!req.body.is_empty()).then(|| req.body.clone());
        let request = egress::Request { method: method_v, url, headers, body };
        let scrubber = Scrubber::new(secrets.values());
        let egress_policy = egress::Policy {
            allowed: plugin.manifest.allowed_hosts.clone(),
            fields: c.fields.clone(),
            allow_private: self.registry().runtime().allow_private_networks(),
            timeout: PROXY_TIMEOUT,
            read_limit: MAX_PROXY_RESPONSE + scrubber.margin(),
        };
        let finish = Finish { scrubber, credential: c.id, method, path: clip(&req.path) };
        Ok(Prepared { request, policy: egress_policy, finish })
    }

    /// Scrubs the answer and audits the use.
    fn proxy_finish(
        &self,
        p: &Principal,
        finish: Finish,
        outcome: std::result::Result<egress::Raw, egress::Fail>,
        started: Instant,
    ) -> Result<ProxyResponse> {
        let Finish { scrubber, credential, method, path } = finish;
        let result = match outcome {
            Ok(raw) => {
                let text = String::from_utf8_lossy(&raw.body);
                let (body, _cut) = scrubber.scrub_capped(&text, MAX_PROXY_RESPONSE, raw.more);
                let headers = raw
                    .headers
                    .iter()
                    .filter(|(k, _)| RETURNED_RESPONSE_HEADERS.contains(&k.as_str()))
                    .map(|(k, v)| (k.as_str().to_string(), scrubber.scrub(&String::from_utf8_lossy(v.as_bytes()))))
                    .collect();
                Ok(ProxyResponse { status: raw.status, headers, body: body.into_bytes() })
            }
            Err(egress::Fail::Refused(detail, why)) => Err(ServiceError::Egress { refused: true, message: scrubber.scrub(&format!("{detail}: {why}")) }),
            Err(egress::Fail::Unreachable(m)) | Err(egress::Fail::Internal(m)) => {
                Err(ServiceError::Egress { refused: false, message: scrubber.scrub(&m) })
            }
        };
        let (outcome, status) = match &result {
            Ok(r) => (Outcome::Ok, r.status.to_string()),
            Err(ServiceError::Egress { refused: true, .. }) => (Outcome::Denied, "refused".into()),
            Err(_) => (Outcome::Failed, "unreachable".into()),
        };
        let detail = format!("{method} {path} status={status} ms={} via={}", started.elapsed().as_millis(), p.token_id);
        self.audit_later(audit_entry(p, Some(credential), USE_ACTION, outcome, detail));
        result
    }

    /// Writes a use's audit record off the response path; the next flush (within a
    /// second) makes it durable.
    fn audit_later(&self, entry: AuditEntry) {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = store.append_audit_lazy(entry) {
                tracing::error!(error = %e, "could not write the audit record of a proxy call");
            }
        });
    }

    /// The type's auth plan for this credential version (cached).
    fn plan_for(&self, p: &Principal, plugin: &Plugin, c: &crate::store::Credential) -> Result<Arc<AuthPlan>> {
        let key = (c.id.key(), c.version, plugin.sha256.clone());
        if let Some(plan) = self.plans.plans.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Ok(plan.clone());
        }
        // The plugin sees clear fields and the *names* of the secrets, never their values.
        let bound = Bound {
            environment: c.environment.clone(),
            fields: c.fields.clone(),
            secrets: c.secrets.keys().map(|k| (k.clone(), secrecy::SecretString::from(String::new()))).collect(),
        };
        let call = self.registry().runtime().authenticate(plugin, bound);
        self.audit_events(p, Some(c.id), &call.events);
        let plan = Arc::new(call.result?);
        let mut plans = self.plans.plans.lock().unwrap_or_else(|e| e.into_inner());
        if plans.len() >= PLAN_CACHE_MAX {
            plans.clear();
        }
        plans.insert(key, plan.clone());
        Ok(plan)
    }
}

/// The type's `[use]` policy for HTTP requests, or 501 for a type that has none.
pub(crate) fn http_use(plugin: &Plugin) -> Result<&crate::plugins::UsePolicy> {
    plugin
        .manifest
        .use_policy
        .as_ref()
        .filter(|u| u.proxy())
        .ok_or_else(|| ServiceError::NotImplemented(format!("type `{}` has no HTTP use", plugin.manifest.id)))
}

fn clip(s: &str) -> String {
    s.chars().take(200).collect()
}

//! Host-side views of what plugins return: serialisable, and with secrets kept
//! out of `Debug`.

use std::collections::BTreeMap;

use secrecy::SecretString;
use serde::Serialize;

use super::bindings::credhost::provider::http;
use super::bindings::credhost::provider::types as wit;

/// How a field is entered; mirrors the WIT `field-kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FieldKind {
    Text,
    Multiline,
    Choice,
    Number,
    Boolean,
    Url,
}

/// One field of a credential type (a form can be built from these).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct FieldSpec {
    pub name: String,
    pub label: String,
    pub kind: FieldKind,
    pub secret: bool,
    pub required: bool,
    pub help: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub choices: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
}

/// A credential type as its plugin describes it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct TypeDescriptor {
    pub id: String,
    pub display_name: String,
    pub version: String,
    pub description: String,
    pub fields: Vec<FieldSpec>,
    pub environments: Vec<String>,
}

impl TypeDescriptor {
    pub(crate) fn from_wit(d: wit::Descriptor) -> Self {
        TypeDescriptor {
            id: d.id,
            display_name: d.display_name,
            version: d.version,
            description: d.description,
            fields: d
                .fields
                .into_iter()
                .map(|f| FieldSpec {
                    name: f.name,
                    label: f.label,
                    kind: match f.kind {
                        wit::FieldKind::Text => FieldKind::Text,
                        wit::FieldKind::Multiline => FieldKind::Multiline,
                        wit::FieldKind::Choice => FieldKind::Choice,
                        wit::FieldKind::Number => FieldKind::Number,
                        wit::FieldKind::Boolean => FieldKind::Boolean,
                        wit::FieldKind::Url => FieldKind::Url,
                    },
                    secret: f.secret,
                    required: f.required,
                    help: f.help,
                    choices: f.choices,
                    default: f.default,
                })
                .collect(),
            environments: d.environments,
        }
    }

    pub fn field(&self, name: &str) -> Option<&FieldSpec> {
        self.fields.iter().find(|f| f.name == name)
    }
}

/// A problem with one field, from `validate` (secret values scrubbed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// `validate`'s normalised output, split by the descriptor's `secret` flags.
#[derive(Default)]
pub struct Validated {
    pub environment: Option<String>,
    pub fields: BTreeMap<String, String>,
    pub secrets: BTreeMap<String, SecretString>,
}

impl std::fmt::Debug for Validated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Validated")
            .field("environment", &self.environment)
            .field("fields", &self.fields)
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Verdict of a live test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TestStatus {
    Valid,
    Invalid,
    Indeterminate,
}

impl TestStatus {
    /// The serialised name (`valid`, `invalid`, `indeterminate`).
    pub fn as_str(self) -> &'static str {
        match self {
            TestStatus::Valid => "valid",
            TestStatus::Invalid => "invalid",
            TestStatus::Indeterminate => "indeterminate",
        }
    }
}

impl From<wit::TestStatus> for TestStatus {
    fn from(s: wit::TestStatus) -> Self {
        match s {
            wit::TestStatus::Valid => TestStatus::Valid,
            wit::TestStatus::Invalid => TestStatus::Invalid,
            wit::TestStatus::Indeterminate => TestStatus::Indeterminate,
        }
    }
}

/// Result of a live test (secret values scrubbed from summary and facts).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct TestReport {
    pub status: TestStatus,
    pub summary: String,
    pub facts: BTreeMap<String, String>,
    pub latency_ms: u64,
}

impl TestReport {
    pub fn ok(&self) -> bool {
        self.status == TestStatus::Valid
    }
}

/// A header or query value of an [`AuthPlan`]; mirrors the WIT `http.value`. The host
/// fills `Field`, `Template` and `Basic` in from the stored credential when it applies the
/// plan; the plugin only ever names fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PlanValue {
    /// Sent as given.
    Plain(String),
    /// The value of the named field (secret or not).
    Field(String),
    /// `{field}` placeholders filled in; `{{` and `}}` are literal braces.
    Template(String),
    /// `Basic base64(user:password)`; both parts are templates.
    Basic(String, String),
}

impl PlanValue {
    pub(crate) fn from_wit(v: http::Value) -> Self {
        match v {
            http::Value::Plain(s) => PlanValue::Plain(s),
            http::Value::Field(s) => PlanValue::Field(s),
            http::Value::Template(s) => PlanValue::Template(s),
            http::Value::Basic((u, p)) => PlanValue::Basic(u, p),
        }
    }

    /// The WIT value, for the host's existing filler (`caps/http.rs`).
    pub fn to_wit(&self) -> http::Value {
        match self {
            PlanValue::Plain(s) => http::Value::Plain(s.clone()),
            PlanValue::Field(s) => http::Value::Field(s.clone()),
            PlanValue::Template(s) => http::Value::Template(s.clone()),
            PlanValue::Basic(u, p) => http::Value::Basic((u.clone(), p.clone())),
        }
    }

    /// Names of the fields this value is built from, in order (repeats kept); an error
    /// says what is wrong with a malformed template.
    pub fn fields(&self) -> Result<Vec<&str>, String> {
        match self {
            PlanValue::Plain(_) => Ok(Vec::new()),
            PlanValue::Field(name) => Ok(vec![name.as_str()]),
            PlanValue::Template(t) => template_fields(t),
            PlanValue::Basic(u, p) => Ok(template_fields(u)?.into_iter().chain(template_fields(p)?).collect()),
        }
    }
}

/// The `{field}` names of a template (`{{`/`}}` are literal braces), as `caps/http.rs` fills them.
pub fn template_fields(t: &str) -> Result<Vec<&str>, String> {
    let mut out = Vec::new();
    let mut rest = t;
    while let Some(i) = rest.find(['{', '}']) {
        let tail = &rest[i..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            rest = &tail[2..];
        } else if tail.starts_with('}') {
            return Err("has a `}` without `{` (write `}}` for a literal brace)".into());
        } else {
            let end = tail.find('}').ok_or("has a `{` without `}` (write `{{` for a literal brace)")?;
            out.push(&tail[1..end]);
            rest = &tail[end + 1..];
        }
    }
    Ok(out)
}

/// Headers only the host sets: it derives `Host` from the URL and owns framing and
/// hop-by-hop headers. Neither `http.send` nor an auth plan may set them.
pub const HOST_CONTROLLED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

/// Most headers or query parameters one plan may set.
pub const MAX_PLAN_ENTRIES: usize = 64;

/// How to apply a credential to an HTTP request, from the type's `authenticate`, checked:
/// header names are valid, lower-cased and not host-controlled; every field named exists
/// in the type. Values still name fields: the caller fills them in from the credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuthPlan {
    /// Headers to set (names lower-case), replacing any of the same name on the request.
    pub headers: Vec<(String, PlanValue)>,
    /// Query parameters to append.
    pub query: Vec<(String, PlanValue)>,
}

impl AuthPlan {
    /// Checks a plan from the plugin against its descriptor; the error names the header,
    /// parameter or field at fault (plugin text is clipped, and never holds a secret: the
    /// plugin saw none).
    pub(crate) fn from_wit(plan: http::AuthPlan, descriptor: &TypeDescriptor) -> Result<AuthPlan, String> {
        let clip = |s: &str| s.chars().take(64).collect::<String>();
        if plan.headers.len() > MAX_PLAN_ENTRIES || plan.query.len() > MAX_PLAN_ENTRIES {
            return Err(format!("the plan sets more than {MAX_PLAN_ENTRIES} headers or query parameters"));
        }
        let check_value = |what: &str, v: &PlanValue| -> Result<(), String> {
            for name in v.fields().map_err(|e| format!("{what}: the template {e}"))? {
                if descriptor.field(name).is_none() {
                    return Err(format!("{what} names field `{}`, which the type does not declare", clip(name)));
                }
            }
            Ok(())
        };
        let mut headers = Vec::with_capacity(plan.headers.len());
        for (name, value) in plan.headers {
            let value = PlanValue::from_wit(value);
            let parsed = reqwest::header::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("header {:?} is not a valid header name", clip(&name)))?;
            let lower = parsed.as_str().to_string();
            if HOST_CONTROLLED_HEADERS.contains(&lower.as_str()) {
                return Err(format!(
                    "header `{lower}` is set by the host only (Host comes from the URL; hop-by-hop and \
                     framing headers are not allowed)"
                ));
            }
            if let PlanValue::Plain(text) = &value {
                if reqwest::header::HeaderValue::from_str(text).is_err() {
                    return Err(format!("the plain value of header `{lower}` cannot be sent in a header"));
                }
            }
            check_value(&format!("header `{lower}`"), &value)?;
            headers.push((lower, value));
        }
        let mut query = Vec::with_capacity(plan.query.len());
        for (name, value) in plan.query {
            let value = PlanValue::from_wit(value);
            if name.is_empty() || name.len() > 256 || name.chars().any(char::is_control) {
                return Err(format!("query parameter {:?} is not a usable name", clip(&name)));
            }
            check_value(&format!("query parameter `{name}`"), &value)?;
            query.push((name, value));
        }
        Ok(AuthPlan { headers, query })
    }

    /// Every field the plan applies (secret or not), each once, in order of appearance.
    pub fn fields(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for (_, v) in self.headers.iter().chain(&self.query) {
            for f in v.fields().unwrap_or_default() {
                if !out.contains(&f) {
                    out.push(f);
                }
            }
        }
        out
    }

    /// The (lower-case) header names the plan sets: a proxy drops caller-supplied ones.
    pub fn header_names(&self) -> impl Iterator<Item = &str> {
        self.headers.iter().map(|(n, _)| n.as_str())
    }
}

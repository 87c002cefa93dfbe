//! Host-side views of what plugins return: serialisable, and with secrets kept
//! out of `Debug`.

use std::collections::BTreeMap;

use secrecy::SecretString;
use serde::Serialize;

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

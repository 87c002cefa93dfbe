//! Field-spec builders for `describe`.
//!
//! ```ignore
//! spec::number("port", "Port").default("22").help("TCP port of the SSH server.")
//! ```

use crate::types::{FieldKind, FieldSpec};

fn field(name: &str, label: &str, kind: FieldKind) -> FieldSpec {
    FieldSpec {
        name: name.into(),
        label: label.into(),
        kind,
        secret: false,
        required: false,
        help: String::new(),
        choices: Vec::new(),
        default: None,
    }
}

/// A single line of text.
pub fn text(name: &str, label: &str) -> FieldSpec {
    field(name, label, FieldKind::Text)
}

/// A single-line secret (token, password, key).
pub fn secret(name: &str, label: &str) -> FieldSpec {
    text(name, label).secret()
}

/// Several lines (PEM keys, certificates).
pub fn multiline(name: &str, label: &str) -> FieldSpec {
    field(name, label, FieldKind::Multiline)
}

/// One of `choices`.
pub fn choice(name: &str, label: &str, choices: &[&str]) -> FieldSpec {
    FieldSpec {
        choices: choices.iter().map(|c| c.to_string()).collect(),
        ..field(name, label, FieldKind::Choice)
    }
}

/// An absolute URL.
pub fn url(name: &str, label: &str) -> FieldSpec {
    field(name, label, FieldKind::Url)
}

/// An integer.
pub fn number(name: &str, label: &str) -> FieldSpec {
    field(name, label, FieldKind::Number)
}

/// Chainable modifiers for a [`FieldSpec`].
pub trait SpecExt {
    fn required(self) -> Self;
    fn secret(self) -> Self;
    fn help(self, help: &str) -> Self;
    fn default(self, value: &str) -> Self;
}

impl SpecExt for FieldSpec {
    fn required(self) -> Self {
        FieldSpec {
            required: true,
            ..self
        }
    }

    fn secret(self) -> Self {
        FieldSpec {
            secret: true,
            ..self
        }
    }

    fn help(self, help: &str) -> Self {
        FieldSpec {
            help: help.into(),
            ..self
        }
    }

    fn default(self, value: &str) -> Self {
        FieldSpec {
            default: Some(value.into()),
            ..self
        }
    }
}

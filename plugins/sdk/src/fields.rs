//! A read-only view over `list<field-value>`, mainly for `test`.

use crate::errors::invalid_field;
use crate::types::{Error, FieldValue, TestContext};
use crate::url::{self, Url};

/// Looks fields up by name. In a test context, secret fields are only named
/// (`is_set`), never carried.
#[derive(Clone, Copy)]
pub struct Fields<'a> {
    values: &'a [FieldValue],
    secret_names: &'a [String],
}

impl<'a> Fields<'a> {
    pub fn new(values: &'a [FieldValue]) -> Self {
        Self {
            values,
            secret_names: &[],
        }
    }

    /// The non-secret values and the set secret names of a test context.
    pub fn of(ctx: &'a TestContext) -> Self {
        Self {
            values: &ctx.fields,
            secret_names: &ctx.secret_fields,
        }
    }

    /// The value as given.
    pub fn get(&self, name: &str) -> Option<&'a str> {
        self.values
            .iter()
            .find(|f| f.name == name)
            .map(|f| f.value.as_str())
    }

    /// The trimmed value; `None` when absent or blank.
    pub fn get_trimmed(&self, name: &str) -> Option<&'a str> {
        self.get(name).map(str::trim).filter(|v| !v.is_empty())
    }

    /// Whether a secret field is set or a plain field has a non-blank value.
    pub fn is_set(&self, name: &str) -> bool {
        self.secret_names.iter().any(|n| n == name) || self.get_trimmed(name).is_some()
    }

    /// The trimmed value, or `error.invalid` naming the field.
    pub fn require(&self, name: &str) -> Result<&'a str, Error> {
        self.get_trimmed(name)
            .ok_or_else(|| invalid_field(name, format!("{name} is required.")))
    }

    /// The value as an integer, `None` when absent.
    pub fn number(&self, name: &str) -> Result<Option<i64>, Error> {
        self.parsed(name, |v| {
            parse_number(v).ok_or_else(|| number_message(name))
        })
    }

    /// The value as `true`/`false` (also yes/no, on/off, 1/0), `None` when absent.
    pub fn boolean(&self, name: &str) -> Result<Option<bool>, Error> {
        self.parsed(name, |v| {
            parse_bool(v).ok_or_else(|| format!("{name} must be true or false."))
        })
    }

    /// The value as an absolute URL, `None` when absent.
    pub fn url(&self, name: &str) -> Result<Option<Url<'a>>, Error> {
        self.parsed(name, |v| url::parse(v).map_err(|p| format!("{name} {p}.")))
    }

    fn parsed<T>(
        &self,
        name: &str,
        parse: impl FnOnce(&'a str) -> Result<T, String>,
    ) -> Result<Option<T>, Error> {
        match self.get_trimmed(name) {
            None => Ok(None),
            Some(v) => parse(v).map(Some).map_err(|m| invalid_field(name, m)),
        }
    }
}

pub(crate) fn parse_number(v: &str) -> Option<i64> {
    v.parse().ok()
}

pub(crate) fn number_message(name: &str) -> String {
    format!("{name} must be a whole number.")
}

pub(crate) fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Some(true),
        "false" | "no" | "off" | "0" => Some(false),
        _ => None,
    }
}

/// `(name, value)` pairs as a field list, for building `validate` input in tests.
pub fn values(pairs: &[(&str, &str)]) -> Vec<FieldValue> {
    pairs
        .iter()
        .map(|(name, value)| FieldValue {
            name: name.to_string(),
            value: value.to_string(),
        })
        .collect()
}

//! `validate` input checked against the type's descriptor.
//!
//! [`Form::new`] does the checks every type needs (unknown and repeated fields, the
//! environment, number/boolean/choice/url syntax, single-line text); the plugin adds
//! its own problems to an [`Errors`] and calls [`Form::finish`], which adds missing
//! required fields and returns the normalised list: the descriptor's fields in order,
//! trimmed, defaults filled, blank optional fields left out. `environment` is not part
//! of the output; the host keeps it with the credential.

use crate::errors::Errors;
use crate::fields::{number_message, parse_bool, parse_number};
use crate::types::{Descriptor, FieldError, FieldKind, FieldSpec, FieldValue};
use crate::url::{self, Url};

/// The input field that carries the credential's environment.
pub const ENVIRONMENT: &str = "environment";

pub struct Form {
    descriptor: Descriptor,
    /// Known fields only; number/boolean/choice/url values already in canonical form.
    values: Vec<FieldValue>,
    environment: Option<String>,
    errors: Errors,
    keep_whitespace: Vec<&'static str>,
    allow_empty: Vec<&'static str>,
}

impl Form {
    pub fn new(descriptor: Descriptor, input: Vec<FieldValue>) -> Self {
        let mut form = Form {
            descriptor,
            values: Vec::with_capacity(input.len()),
            environment: None,
            errors: Errors::new(),
            keep_whitespace: Vec::new(),
            allow_empty: Vec::new(),
        };
        for field in input {
            form.accept(field);
        }
        form
    }

    /// Keeps the field's value exactly as given (passwords may start or end with spaces).
    pub fn keep_whitespace(mut self, name: &'static str) -> Self {
        self.keep_whitespace.push(name);
        self
    }

    /// Lets a blank value stand instead of the default (e.g. an empty prefix).
    pub fn allow_empty(mut self, name: &'static str) -> Self {
        self.allow_empty.push(name);
        self
    }

    /// The normalised value: trimmed, or the default when absent or blank.
    pub fn get(&self, name: &str) -> Option<&str> {
        let spec = self.spec(name)?;
        let given = self.values.iter().find(|f| f.name == name).map(|f| {
            if self.keep_whitespace.contains(&name) {
                f.value.as_str()
            } else {
                f.value.trim()
            }
        });
        match given {
            Some(v) if !v.is_empty() || self.allow_empty.contains(&name) => Some(v),
            _ => spec.default.as_deref(),
        }
    }

    /// Replaces a field's value with the plugin's own normal form (e.g. a lower-cased host).
    pub fn set(&mut self, name: &str, value: String) {
        match self.values.iter_mut().find(|f| f.name == name) {
            Some(f) => f.value = value,
            None => self.values.push(FieldValue {
                name: name.into(),
                value,
            }),
        }
    }

    /// A `number` field's value.
    pub fn number(&self, name: &str) -> Option<i64> {
        self.get(name).and_then(parse_number)
    }

    /// A `url` field's value, which must be `http` or `https`; other schemes are reported.
    pub fn http_url(&self, name: &str, errors: &mut Errors) -> Option<Url<'_>> {
        let url = url::parse(self.get(name)?).ok()?;
        if url.is_http() {
            Some(url)
        } else {
            errors.add(name, format!("{name} must be an http:// or https:// URL."));
            None
        }
    }

    /// The environment the credential is bound to, if any.
    pub fn environment(&self) -> Option<&str> {
        self.environment.as_deref()
    }

    /// The environment, reporting its absence.
    pub fn require_environment(&self, errors: &mut Errors) -> Option<&str> {
        if self.environment.is_none() && !self.errors.has(ENVIRONMENT) {
            let choices = self.descriptor.environments.join(", ");
            errors.add(
                ENVIRONMENT,
                format!("environment is required for this type: one of {choices}."),
            );
        }
        self.environment()
    }

    /// Adds missing required fields to the problems; returns the normalised fields or
    /// every problem, in the descriptor's field order (others last).
    pub fn finish(self, errors: Errors) -> Result<Vec<FieldValue>, Vec<FieldError>> {
        let mut all = Errors::new();
        let mut out = Vec::new();
        for spec in &self.descriptor.fields {
            match self.get(&spec.name) {
                Some(v) => out.push(FieldValue {
                    name: spec.name.clone(),
                    value: v.to_string(),
                }),
                None if spec.required
                    && !self.errors.has(&spec.name)
                    && !errors.has(&spec.name) =>
                {
                    all.add(&spec.name, format!("{} is required.", spec.name));
                }
                None => {}
            }
        }
        let Form {
            descriptor,
            errors: mut mine,
            ..
        } = self;
        mine.extend(all);
        mine.extend(errors);
        mine.sort_by_key(|field| {
            descriptor
                .fields
                .iter()
                .position(|f| f.name == field)
                .unwrap_or(usize::MAX)
        });
        mine.into_result(out)
    }

    fn spec(&self, name: &str) -> Option<&FieldSpec> {
        self.descriptor.fields.iter().find(|f| f.name == name)
    }

    fn accept(&mut self, field: FieldValue) {
        let name = short(&field.name);
        let seen = self.values.iter().any(|f| f.name == field.name)
            || (field.name == ENVIRONMENT && self.environment.is_some());
        if seen {
            self.errors
                .add(&name, format!("{name} is given more than once."));
            return;
        }
        if field.name == ENVIRONMENT {
            self.accept_environment(field.value);
            return;
        }
        let Some(spec) = self.spec(&field.name) else {
            let known: Vec<&str> = self
                .descriptor
                .fields
                .iter()
                .map(|f| f.name.as_str())
                .collect();
            let message = format!(
                "{name} is not a field of this type; its fields are: {}.",
                known.join(", ")
            );
            self.errors.add(&name, message);
            return;
        };
        match normalise(spec, &field.value) {
            Ok(value) => self.values.push(FieldValue {
                name: field.name,
                value,
            }),
            Err(message) => self.errors.add(&name, message),
        }
    }

    fn accept_environment(&mut self, value: String) {
        let envs = &self.descriptor.environments;
        let value = value.trim();
        if value.is_empty() {
            // Same as absent: `require_environment` reports it where it matters.
        } else if envs.is_empty() {
            self.errors.add(
                ENVIRONMENT,
                "this type has no environments; leave environment unset.",
            );
        } else if let Some(env) = envs.iter().find(|e| e.eq_ignore_ascii_case(value)) {
            self.environment = Some(env.clone());
        } else {
            self.errors.add(
                ENVIRONMENT,
                format!("environment must be one of: {}.", envs.join(", ")),
            );
        }
    }
}

/// Checks the syntax the field kind promises; returns the value in canonical form.
fn normalise(spec: &FieldSpec, value: &str) -> Result<String, String> {
    let name = &spec.name;
    let trimmed = value.trim();
    match spec.kind {
        FieldKind::Text if trimmed.chars().any(|c| c.is_control() && c != '\t') => Err(format!(
            "{name} must be a single line without control characters."
        )),
        FieldKind::Multiline
            if trimmed
                .chars()
                .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r')) =>
        {
            Err(format!("{name} must not contain control characters."))
        }
        FieldKind::Text | FieldKind::Multiline => Ok(value.to_string()),
        _ if trimmed.is_empty() => Ok(String::new()),
        FieldKind::Number => parse_number(trimmed)
            .map(|n| n.to_string())
            .ok_or_else(|| number_message(name)),
        FieldKind::Boolean => parse_bool(trimmed)
            .map(|b| b.to_string())
            .ok_or_else(|| format!("{name} must be true or false.")),
        FieldKind::Choice => spec
            .choices
            .iter()
            .find(|c| c.eq_ignore_ascii_case(trimmed))
            .cloned()
            .ok_or_else(|| format!("{name} must be one of: {}.", spec.choices.join(", "))),
        FieldKind::Url => url::parse(trimmed)
            .map(|_| trimmed.to_string())
            .map_err(|p| format!("{name} {p}.")),
    }
}

/// Field names from input are echoed in messages; keep a hostile one from flooding them.
fn short(name: &str) -> String {
    name.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fields::values;
    use crate::spec::{self, SpecExt};

    fn descriptor() -> Descriptor {
        Descriptor {
            id: "t".into(),
            display_name: "T".into(),
            version: "0.1.0".into(),
            description: String::new(),
            fields: vec![
                spec::text("user", "User").required(),
                spec::secret("password", "Password").required(),
                spec::number("port", "Port").default("22"),
                spec::choice("mode", "Mode", &["header", "query"]).default("header"),
                spec::text("prefix", "Prefix").default("Bearer"),
                spec::url("test_url", "Test URL"),
            ],
            environments: vec!["paper".into(), "live".into()],
        }
    }

    type Pairs = Vec<(String, String)>;

    fn run(pairs: &[(&str, &str)]) -> Result<Pairs, Pairs> {
        let form = Form::new(descriptor(), values(pairs))
            .keep_whitespace("password")
            .allow_empty("prefix");
        form.finish(Errors::new())
            .map(|v| v.into_iter().map(|f| (f.name, f.value)).collect())
            .map_err(|e| e.into_iter().map(|f| (f.field, f.message)).collect())
    }

    #[test]
    fn normalises_and_fills_defaults() {
        let out = run(&[
            ("user", "  bob "),
            ("password", " pw "),
            ("mode", "QUERY"),
            ("prefix", ""),
        ])
        .unwrap();
        let expect = [
            ("user", "bob"),
            ("password", " pw "),
            ("port", "22"),
            ("mode", "query"),
            ("prefix", ""),
        ];
        assert_eq!(out, expect.map(|(a, b)| (a.to_string(), b.to_string())));
    }

    #[test]
    fn reports_every_problem_without_values() {
        let errs = run(&[
            ("user", "a\nb"),
            ("port", "x2x"),
            ("mode", "cookie"),
            ("nope", "s3cret"),
            ("test_url", "notaurl"),
            ("environment", "demo"),
        ])
        .unwrap_err();
        let fields: Vec<&str> = errs.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "user",
                "password",
                "port",
                "mode",
                "test_url",
                "nope",
                "environment"
            ]
        );
        for (_, m) in &errs {
            assert!(
                !m.contains("s3cret")
                    && !m.contains("x2x")
                    && !m.contains("cookie")
                    && !m.contains("demo"),
                "{m}"
            );
        }
    }

    #[test]
    fn duplicates_and_environment() {
        let errs = run(&[("user", "a"), ("user", "b"), ("password", "p")]).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert!(errs[0].1.contains("more than once"));
        let form = Form::new(descriptor(), values(&[("environment", " Live ")]));
        assert_eq!(form.environment(), Some("live"));
        let mut errors = Errors::new();
        let form = Form::new(descriptor(), values(&[]));
        assert_eq!(form.require_environment(&mut errors), None);
        assert!(errors.has("environment"));
    }
}

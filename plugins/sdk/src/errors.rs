//! Collecting `field-error`s.
//!
//! Messages name the field and say what to do; they must never repeat the value
//! (a secret may sit in any field). Write them as full sentences.

use crate::types::{Error, FieldError};

/// An ordered list of field problems.
#[derive(Debug, Default)]
pub struct Errors(Vec<FieldError>);

impl Errors {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a problem with `field`.
    pub fn add(&mut self, field: &str, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.to_string(),
            message: message.into(),
        });
    }

    /// Records `result`'s error (if any) against `field` and returns its value.
    pub fn check<T, M: Into<String>>(&mut self, field: &str, result: Result<T, M>) -> Option<T> {
        result.map_err(|m| self.add(field, m)).ok()
    }

    /// Whether `field` already has a problem (to skip checks that depend on it).
    pub fn has(&self, field: &str) -> bool {
        self.0.iter().any(|e| e.field == field)
    }

    /// Moves `other`'s problems after this one's.
    pub fn extend(&mut self, other: Errors) {
        self.0.extend(other.0);
    }

    /// Orders the problems by `key` of their field, keeping the order within a field.
    pub fn sort_by_key(&mut self, key: impl Fn(&str) -> usize) {
        self.0.sort_by_key(|e| key(&e.field));
    }

    pub fn into_vec(self) -> Vec<FieldError> {
        self.0
    }

    /// `Ok(value)` when nothing was recorded, else every problem.
    pub fn into_result<T>(self, value: T) -> Result<T, Vec<FieldError>> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self.0)
        }
    }
}

/// An `error.invalid` naming one field, for `test` when a stored field is unusable.
pub fn invalid_field(field: &str, message: impl Into<String>) -> Error {
    let mut errors = Errors::new();
    errors.add(field, message);
    Error::Invalid(errors.into_vec())
}

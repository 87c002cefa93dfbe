//! Building `test-outcome`s. Summaries are one line for humans and carry no secret.
//!
//! ```ignore
//! valid("account is ACTIVE").fact("environment", "paper")
//! ```

use crate::types::{Error, Fact, TestOutcome, TestStatus};

pub fn outcome(status: TestStatus, summary: impl Into<String>) -> TestOutcome {
    TestOutcome {
        status,
        summary: summary.into(),
        facts: Vec::new(),
    }
}

/// The service accepted the credential.
pub fn valid(summary: impl Into<String>) -> TestOutcome {
    outcome(TestStatus::Valid, summary)
}

/// The service rejected the credential.
pub fn invalid(summary: impl Into<String>) -> TestOutcome {
    outcome(TestStatus::Invalid, summary)
}

/// Could not tell (timeout, 5xx, rate limit, unexpected answer).
pub fn indeterminate(summary: impl Into<String>) -> TestOutcome {
    outcome(TestStatus::Indeterminate, summary)
}

/// Chainable facts for a [`TestOutcome`].
pub trait OutcomeExt {
    /// Adds a non-secret fact the test learned.
    fn fact(self, key: &str, value: impl ToString) -> Self;
}

impl OutcomeExt for TestOutcome {
    fn fact(mut self, key: &str, value: impl ToString) -> Self {
        self.facts.push(Fact {
            key: key.into(),
            value: value.to_string(),
        });
        self
    }
}

/// A failed host call as a test result: `unreachable` means "could not tell"; every
/// other error (denied, rejected by the host's limits, …) is a fault of the test.
pub fn from_error(error: Error) -> Result<TestOutcome, Error> {
    match error {
        Error::Unreachable(why) => Ok(indeterminate(format!("could not reach the service: {why}"))),
        other => Err(other),
    }
}

/// Text from a service or host, made fit for a one-line summary or fact: control
/// characters dropped, at most 120 characters.
pub fn clip(text: &str) -> String {
    const MAX: usize = 120;
    let mut out: String = text
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX + 1)
        .collect();
    if out.chars().count() > MAX {
        out = out.chars().take(MAX - 1).collect();
        out.push('…');
    }
    out
}

//! Alpaca trading API keys: a key id and a secret key, bound to `paper` or `live`.
//!
//! `validate` checks the key formats and that the key id's prefix (PK paper, AK live)
//! matches the environment. `test` reads `GET /v2/account` and trusts only a JSON
//! account payload; a rejected key is retried against the other environment so the
//! summary can say where it belongs.

mod keys;

use credhost_sdk::json::{self, Value as Json};
use credhost_sdk::log::{self, Level};
use credhost_sdk::outcome::{self, OutcomeExt};
use credhost_sdk::prelude::*;
use credhost_sdk::{errors::invalid_field, settings};
use keys::{check_key_id, check_secret_key, other_environment, LIVE, PAPER};

struct Alpaca;

credhost_sdk::export!(Alpaca);

fn descriptor() -> Descriptor {
    Descriptor {
        id: "alpaca".into(),
        display_name: "Alpaca API key".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        description: "An Alpaca trading API key pair. Paper keys (PK…) work only against \
                      the paper API, live keys (AK…) only against the live API."
            .into(),
        fields: vec![
            spec::text("key_id", "API key ID")
                .required()
                .help("The key ID from the Alpaca dashboard: PK… for paper, AK… for live."),
            spec::secret("secret_key", "Secret key")
                .required()
                .help("The secret shown once when the key was generated."),
        ],
        environments: vec![PAPER.into(), LIVE.into()],
    }
}

impl Guest for Alpaca {
    fn describe() -> Descriptor {
        descriptor()
    }

    fn validate(input: Vec<FieldValue>) -> Result<Vec<FieldValue>, Vec<FieldError>> {
        let form = Form::new(descriptor(), input);
        let mut errors = Errors::new();
        let key_env = form
            .get("key_id")
            .and_then(|k| errors.check("key_id", check_key_id(k)));
        if let Some(secret) = form.get("secret_key") {
            errors.check("secret_key", check_secret_key(secret));
        }
        if let (Some(env), Some(key_env)) = (form.require_environment(&mut errors), key_env) {
            if env != key_env {
                errors.add("environment", keys::mismatch(key_env, env));
            }
        }
        form.finish(errors)
    }

    fn test(ctx: TestContext) -> Result<TestOutcome, Error> {
        let key_env = Fields::of(&ctx)
            .get_trimmed("key_id")
            .and_then(|k| check_key_id(k).ok());
        let env = match ctx.environment.as_deref().or(key_env) {
            Some(e @ (PAPER | LIVE)) => e,
            _ => {
                return Err(invalid_field(
                    "environment",
                    "environment must be paper or live.",
                ))
            }
        };
        let answer = match account(env) {
            Ok(answer) => answer,
            Err(e) => return outcome::from_error(e).map(|o| o.fact("environment", env)),
        };
        let verdict = match answer {
            Answer::Account(account) => account_verdict(&account),
            Answer::Unclear(verdict) => verdict,
            Answer::Rejected(status) => {
                let other = other_environment(env);
                log::write(
                    Level::Info,
                    &format!("{env} API rejected the key; trying {other}"),
                );
                match account(other) {
                    Ok(Answer::Account(_)) => {
                        invalid(format!("key belongs to the {other} environment"))
                            .fact("correct_environment", other)
                    }
                    _ => invalid(format!("key rejected (HTTP {status})")),
                }
            }
        };
        Ok(verdict.fact("environment", env))
    }

    /// Alpaca's own headers; the base URL (paper or live) comes from the manifest's `[use]`.
    fn authenticate(_ctx: TestContext) -> Result<AuthPlan, Error> {
        Ok(AuthPlan::new()
            .header("APCA-API-KEY-ID", field("key_id"))
            .header("APCA-API-SECRET-KEY", field("secret_key")))
    }
}

/// What `GET /v2/account` said.
enum Answer {
    /// 200 with a JSON object that has a `status`.
    Account(Json),
    /// 401/403.
    Rejected(u16),
    /// Anything that proves nothing either way.
    Unclear(TestOutcome),
}

fn base_url(env: &str) -> String {
    let default = if env == LIVE {
        "https://api.alpaca.markets"
    } else {
        "https://paper-api.alpaca.markets"
    };
    let base = settings::get(&format!("{env}_base_url")).unwrap_or_else(|| default.into());
    base.trim().trim_end_matches('/').to_string()
}

fn account(env: &str) -> Result<Answer, Error> {
    let response = request::get(format!("{}/v2/account", base_url(env)))
        .header("APCA-API-KEY-ID", field("key_id"))
        .header("APCA-API-SECRET-KEY", field("secret_key"))
        .header("Accept", plain("application/json"))
        .send()?;
    Ok(match response.status {
        200 => match json::parse(&response.body) {
            Some(account) if account.get("status").and_then(Json::as_str).is_some() => {
                Answer::Account(account)
            }
            _ => Answer::Unclear(indeterminate(format!(
                "HTTP 200 without an Alpaca account payload; check the {env}_base_url setting"
            ))),
        },
        401 | 403 => Answer::Rejected(response.status),
        429 => Answer::Unclear(indeterminate("rate limited (HTTP 429); try again later")),
        s @ 500..=599 => Answer::Unclear(indeterminate(format!(
            "Alpaca service error (HTTP {s}); try again later"
        ))),
        s => Answer::Unclear(indeterminate(format!(
            "unexpected HTTP {s} from the {env} API"
        ))),
    })
}

fn account_verdict(account: &Json) -> TestOutcome {
    let status = account
        .get("status")
        .and_then(Json::as_str)
        .map(outcome::clip)
        .unwrap_or_default();
    let verdict = if status == "ACTIVE" {
        valid("account is ACTIVE")
    } else {
        invalid(format!("account status is {status}, not ACTIVE"))
    };
    let verdict = verdict.fact("account_status", &status);
    match account.get("account_number").and_then(Json::as_text) {
        Some(number) => verdict.fact("account_number", outcome::clip(number)),
        None => verdict,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use credhost_sdk::fields::values;

    const SECRET: &str = "abcdefghijABCDEFGHIJ0123456789abcdefghij";

    fn validate(pairs: &[(&str, &str)]) -> Result<Vec<(String, String)>, Vec<FieldError>> {
        Alpaca::validate(values(pairs)).map(|v| v.into_iter().map(|f| (f.name, f.value)).collect())
    }

    #[test]
    fn accepts_a_matching_pair_without_the_environment_in_the_output() {
        let out = validate(&[
            ("key_id", " PKABCDEFGHIJ0123456789 "),
            ("secret_key", SECRET),
            ("environment", "paper"),
        ]);
        assert_eq!(
            out.unwrap(),
            [
                ("key_id".into(), "PKABCDEFGHIJ0123456789".into()),
                ("secret_key".into(), SECRET.into())
            ]
        );
    }

    #[test]
    fn flags_the_wrong_environment() {
        let errs = validate(&[
            ("key_id", "PKABCDEFGHIJ0123456789"),
            ("secret_key", SECRET),
            ("environment", "live"),
        ])
        .unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].field, "environment");
        assert!(errs[0].message.contains("paper key"), "{}", errs[0].message);
    }

    #[test]
    fn requires_everything_and_never_quotes_values() {
        let errs = validate(&[("secret_key", "hunter2 hunter2"), ("key", "PK1")]).unwrap_err();
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["key_id", "secret_key", "key", "environment"]);
        assert!(errs
            .iter()
            .all(|e| !e.message.contains("hunter2") && !e.message.contains("PK1")));
    }
}

//! A bearer token sent in a header (`Authorization: Bearer <token>` by default).
//!
//! `validate` checks that the token can travel in a header and that the header name and
//! prefix are usable; `test` sends `GET test_url` with the token and reads the status;
//! `authenticate` sets the same header on requests made with the credential.

use credhost_sdk::errors::invalid_field;
use credhost_sdk::names::{header_name_problem, is_token};
use credhost_sdk::prelude::*;
use credhost_sdk::request::template_literal;

struct BearerToken;

credhost_sdk::export!(BearerToken);

const DEFAULT_HEADER: &str = "Authorization";
const DEFAULT_PREFIX: &str = "Bearer";

fn descriptor() -> Descriptor {
    Descriptor {
        id: "bearer_token".into(),
        display_name: "Bearer token".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        description: "An API token sent in a request header, such as a personal access token \
                      or an OAuth access token."
            .into(),
        fields: vec![
            spec::secret("token", "Token").required(),
            spec::text("header_name", "Header name")
                .default(DEFAULT_HEADER)
                .help("The request header that carries the token."),
            spec::text("prefix", "Prefix").default(DEFAULT_PREFIX).help(
                "Word sent before the token, such as Bearer or Token; empty sends the token alone.",
            ),
            spec::url("test_url", "Test URL").help(
                "An http(s) URL that answers 2xx with a valid token and 401/403 without one.",
            ),
        ],
        environments: vec![],
    }
}

impl Guest for BearerToken {
    fn describe() -> Descriptor {
        descriptor()
    }

    fn validate(input: Vec<FieldValue>) -> Result<Vec<FieldValue>, Vec<FieldError>> {
        let form = Form::new(descriptor(), input).allow_empty("prefix");
        let mut errors = Errors::new();
        let prefix = form.get("prefix").unwrap_or(DEFAULT_PREFIX);
        if !prefix.is_empty() && !is_token(prefix) {
            errors.add(
                "prefix",
                "prefix must be a single word such as Bearer or Token, or empty.",
            );
        }
        if let Some(token) = form.get("token") {
            errors.check("token", check_token(token, prefix));
        }
        if let Some(problem) = form.get("header_name").and_then(header_name_problem) {
            errors.add("header_name", format!("header_name {problem}."));
        }
        form.http_url("test_url", &mut errors);
        form.finish(errors)
    }

    fn test(ctx: TestContext) -> Result<TestOutcome, Error> {
        let fields = Fields::of(&ctx);
        let Some(url) = fields.get_trimmed("test_url") else {
            return Err(Error::Unsupported("no test_url set".into()));
        };
        let (header, value) = auth_header(fields)?;
        request::auth_verdict(request::get(url).header(header, value).send())
    }

    fn authenticate(ctx: TestContext) -> Result<AuthPlan, Error> {
        let (header, value) = auth_header(Fields::of(&ctx))?;
        Ok(AuthPlan::new().header(header, value))
    }
}

/// `header_name: prefix {token}` (or the token alone with an empty prefix).
fn auth_header(fields: Fields<'_>) -> Result<(&str, Value), Error> {
    let header = fields.get_trimmed("header_name").unwrap_or(DEFAULT_HEADER);
    let prefix = fields.get("prefix").map_or(DEFAULT_PREFIX, str::trim);
    if header_name_problem(header).is_some() {
        return Err(invalid_field(
            "header_name",
            "header_name is not a valid header name.",
        ));
    }
    let value = if prefix.is_empty() {
        field("token")
    } else {
        template(&format!("{} {{token}}", template_literal(prefix)))
    };
    Ok((header, value))
}

/// A token must fit in a header value as one word.
fn check_token(token: &str, prefix: &str) -> Result<(), &'static str> {
    let first_word = token.split_whitespace().next().unwrap_or_default();
    if token.contains(char::is_whitespace)
        && !prefix.is_empty()
        && first_word.eq_ignore_ascii_case(prefix)
    {
        return Err(
            "token starts with its prefix; paste only the token, the prefix field adds the rest.",
        );
    }
    if token.contains(char::is_whitespace) {
        return Err("token must not contain spaces or line breaks.");
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(
            "token must be printable ASCII; non-ASCII characters cannot be sent in a header.",
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use credhost_sdk::fields::values;

    fn validate(pairs: &[(&str, &str)]) -> Result<Vec<(String, String)>, Vec<String>> {
        BearerToken::validate(values(pairs))
            .map(|v| v.into_iter().map(|f| (f.name, f.value)).collect())
            .map_err(|e| e.into_iter().map(|e| e.field).collect())
    }

    #[test]
    fn fills_defaults_and_keeps_an_empty_prefix() {
        let out = validate(&[("token", " abc.def-123 ")]).unwrap();
        assert_eq!(out[0], ("token".into(), "abc.def-123".into()));
        assert_eq!(out[1], ("header_name".into(), "Authorization".into()));
        assert_eq!(out[2], ("prefix".into(), "Bearer".into()));
        let out =
            validate(&[("token", "abc"), ("prefix", ""), ("header_name", "X-Token")]).unwrap();
        assert_eq!(out[2], ("prefix".into(), "".into()));
    }

    #[test]
    fn rejects_bad_fields() {
        let errs = validate(&[
            ("token", "ab cd"),
            ("header_name", "Host"),
            ("prefix", "Two words"),
            ("test_url", "ftp://example.com/"),
        ])
        .unwrap_err();
        assert_eq!(errs, ["token", "header_name", "prefix", "test_url"]);
        assert_eq!(validate(&[]).unwrap_err(), ["token"]);
        assert_eq!(
            validate(&[("token", "x"), ("extra", "1")]).unwrap_err(),
            ["extra"]
        );
    }

    #[test]
    fn tokens() {
        assert!(check_token("Bearer abc", "Bearer")
            .unwrap_err()
            .contains("prefix"));
        assert!(check_token("abc\ndef", "Bearer")
            .unwrap_err()
            .contains("spaces"));
        assert!(check_token("abcé", "").unwrap_err().contains("ASCII"));
        assert!(check_token("ghp_abc123", "token").is_ok());
    }
}

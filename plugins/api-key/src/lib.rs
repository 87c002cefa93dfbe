//! An API key sent in a header or a query parameter of the caller's choice.
//!
//! `validate` checks the key can travel in either place and that the header or parameter
//! name is usable; `test` sends `GET test_url` with the key where it belongs, and
//! `authenticate` puts it there on requests made with the credential.

use credhost_sdk::names::header_name_problem;
use credhost_sdk::prelude::*;

struct ApiKey;

credhost_sdk::export!(ApiKey);

const HEADER: &str = "header";
const QUERY: &str = "query";
const DEFAULT_NAME: &str = "X-API-Key";

fn descriptor() -> Descriptor {
    Descriptor {
        id: "api_key".into(),
        display_name: "API key".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        description: "A static API key sent in a request header or a query parameter.".into(),
        fields: vec![
            spec::secret("key", "API key").required(),
            spec::choice("placement", "Sent in", &[HEADER, QUERY])
                .default(HEADER)
                .help("Whether the key travels in a header or in the query string."),
            spec::text("name", "Header or parameter name")
                .default(DEFAULT_NAME)
                .help("Name of the header or query parameter that carries the key."),
            spec::url("test_url", "Test URL")
                .help("An http(s) URL that answers 2xx with a valid key and 401/403 otherwise."),
        ],
        environments: vec![],
    }
}

impl Guest for ApiKey {
    fn describe() -> Descriptor {
        descriptor()
    }

    fn validate(input: Vec<FieldValue>) -> Result<Vec<FieldValue>, Vec<FieldError>> {
        let form = Form::new(descriptor(), input);
        let mut errors = Errors::new();
        if let Some(key) = form.get("key") {
            errors.check("key", check_key(key));
        }
        let placement = form.get("placement").unwrap_or(HEADER);
        if let Some(problem) = form.get("name").and_then(|n| name_problem(placement, n)) {
            errors.add("name", format!("name {problem}."));
        }
        form.http_url("test_url", &mut errors);
        form.finish(errors)
    }

    fn test(ctx: TestContext) -> Result<TestOutcome, Error> {
        let fields = Fields::of(&ctx);
        let Some(url) = fields.get_trimmed("test_url") else {
            return Err(Error::Unsupported("no test_url set".into()));
        };
        let name = fields.get_trimmed("name").unwrap_or(DEFAULT_NAME);
        let call = request::get(url);
        let call = match fields.get_trimmed("placement") {
            Some(QUERY) => call.query(name, field("key")),
            _ => call.header(name, field("key")),
        };
        request::auth_verdict(call.send())
    }

    fn authenticate(ctx: TestContext) -> Result<AuthPlan, Error> {
        let fields = Fields::of(&ctx);
        let name = fields.get_trimmed("name").unwrap_or(DEFAULT_NAME);
        match fields.get_trimmed("placement").unwrap_or(HEADER) {
            QUERY => Ok(AuthPlan::new().query(name, field("key"))),
            HEADER => Ok(AuthPlan::new().header(name, field("key"))),
            _ => Err(credhost_sdk::errors::invalid_field(
                "placement",
                "placement must be header or query.",
            )),
        }
    }
}

/// A key must travel unchanged as a header value or a query value.
fn check_key(key: &str) -> Result<(), &'static str> {
    if key.contains(char::is_whitespace) {
        Err("key must not contain spaces or line breaks; check that only the key was copied.")
    } else if !key.bytes().all(|b| b.is_ascii_graphic()) {
        Err("key must be printable ASCII.")
    } else {
        Ok(())
    }
}

fn name_problem(placement: &str, name: &str) -> Option<&'static str> {
    if placement == QUERY {
        let ok = name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b));
        (!ok).then_some("must be a query parameter name of up to 64 letters, digits and - _ . ~")
    } else {
        header_name_problem(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use credhost_sdk::fields::values;

    fn validate(pairs: &[(&str, &str)]) -> Result<Vec<(String, String)>, Vec<String>> {
        ApiKey::validate(values(pairs))
            .map(|v| v.into_iter().map(|f| (f.name, f.value)).collect())
            .map_err(|e| e.into_iter().map(|e| e.field).collect())
    }

    #[test]
    fn defaults_and_placements() {
        let out = validate(&[("key", "k-123")]).unwrap();
        assert_eq!(
            out[1..],
            [
                ("placement".into(), "header".into()),
                ("name".into(), "X-API-Key".into())
            ]
        );
        let out = validate(&[("key", "k"), ("placement", "Query"), ("name", "api_key")]).unwrap();
        assert_eq!(out[1], ("placement".into(), "query".into()));
    }

    #[test]
    fn names_follow_placement() {
        assert_eq!(
            validate(&[("key", "k"), ("placement", "query"), ("name", "a&b")]).unwrap_err(),
            ["name"]
        );
        assert_eq!(
            validate(&[("key", "k"), ("name", "Content-Length")]).unwrap_err(),
            ["name"]
        );
        assert_eq!(
            validate(&[("key", "k"), ("placement", "cookie")]).unwrap_err(),
            ["placement"]
        );
        assert_eq!(validate(&[("key", "a b")]).unwrap_err(), ["key"]);
    }
}

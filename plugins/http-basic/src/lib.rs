//! A user name and password for HTTP Basic authentication.
//!
//! `validate` checks what Basic authentication can carry; `test` sends `GET test_url`
//! with `Authorization: Basic …` built by the host from the two fields.

use credhost_sdk::prelude::*;

struct HttpBasic;

credhost_sdk::export!(HttpBasic);

fn descriptor() -> Descriptor {
    Descriptor {
        id: "http_basic".into(),
        display_name: "HTTP Basic login".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        description: "A user name and password sent with HTTP Basic authentication.".into(),
        fields: vec![
            spec::text("username", "User name").required(),
            spec::secret("password", "Password").required(),
            spec::url("test_url", "Test URL").help(
                "An http(s) URL that answers 2xx with valid credentials and 401/403 otherwise.",
            ),
        ],
        environments: vec![],
    }
}

impl Guest for HttpBasic {
    fn describe() -> Descriptor {
        descriptor()
    }

    fn validate(input: Vec<FieldValue>) -> Result<Vec<FieldValue>, Vec<FieldError>> {
        let form = Form::new(descriptor(), input).keep_whitespace("password");
        let mut errors = Errors::new();
        if form.get("username").is_some_and(|u| u.contains(':')) {
            errors.add("username", "username must not contain a colon: Basic authentication uses it to separate user and password.");
        }
        form.http_url("test_url", &mut errors);
        form.finish(errors)
    }

    fn test(ctx: TestContext) -> Result<TestOutcome, Error> {
        let Some(url) = Fields::of(&ctx).get_trimmed("test_url") else {
            return Err(Error::Unsupported("no test_url set".into()));
        };
        let auth = basic("{username}", "{password}");
        request::auth_verdict(request::get(url).header("Authorization", auth).send())
    }

    fn authenticate(_ctx: TestContext) -> Result<AuthPlan, Error> {
        Ok(AuthPlan::new().header("Authorization", basic("{username}", "{password}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use credhost_sdk::fields::values;

    fn validate(pairs: &[(&str, &str)]) -> Result<Vec<(String, String)>, Vec<String>> {
        HttpBasic::validate(values(pairs))
            .map(|v| v.into_iter().map(|f| (f.name, f.value)).collect())
            .map_err(|e| e.into_iter().map(|e| e.field).collect())
    }

    #[test]
    fn keeps_password_spaces_and_checks_fields() {
        let out = validate(&[("username", " alice "), ("password", " pw ")]).unwrap();
        assert_eq!(
            out,
            [
                ("username".into(), "alice".into()),
                ("password".into(), " pw ".into())
            ]
        );
        let errs = validate(&[
            ("username", "a:b"),
            ("test_url", "https://u:p@example.com/"),
        ])
        .unwrap_err();
        assert_eq!(errs, ["username", "password", "test_url"]);
    }
}

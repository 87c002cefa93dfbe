//! Template credential type: an account name plus an API token for a service whose
//! `GET {base_url}/v1/me` answers 200 for a good token and 401/403 for a bad one.
//!
//! Copy this crate, change the id, fields and checks; see docs/plugin-guide.md.

use credhost_sdk::prelude::*;

struct ExampleService;

credhost_sdk::export!(ExampleService);

fn descriptor() -> Descriptor {
    Descriptor {
        id: "example_service".into(),
        display_name: "Example service token".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        description: "An account name and API token for the Example service.".into(),
        fields: vec![
            spec::text("account", "Account").required().help("Your account name, lower-case letters and digits."),
            spec::secret("api_token", "API token").required().help("Starts with ex_ and is at least 20 characters."),
            spec::url("base_url", "Base URL").default("https://api.example.com").help("Where the service's API lives."),
        ],
        environments: vec![],
    }
}

impl Guest for ExampleService {
    fn describe() -> Descriptor {
        descriptor()
    }

    /// Offline checks only: the host denies network access here.
    fn validate(input: Vec<FieldValue>) -> Result<Vec<FieldValue>, Vec<FieldError>> {
        let form = Form::new(descriptor(), input);
        let mut errors = Errors::new();
        if let Some(account) = form.get("account") {
            if !account.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
                errors.add("account", "account must be lower-case letters and digits.");
            }
        }
        if let Some(token) = form.get("api_token") {
            // Never repeat the value in a message: say what is wrong with it.
            if !token.starts_with("ex_") || token.len() < 20 {
                errors.add("api_token", "api_token must start with ex_ and be at least 20 characters.");
            }
        }
        form.http_url("base_url", &mut errors);
        form.finish(errors)
    }

    /// The host fills in `{api_token}`; this plugin never sees the value.
    fn test(ctx: TestContext) -> Result<TestOutcome, Error> {
        let fields = Fields::of(&ctx);
        let base = fields.get_trimmed("base_url").unwrap_or("https://api.example.com").trim_end_matches('/');
        let url = format!("{base}/v1/me");
        request::auth_verdict(request::get(&url).header("Authorization", template("Bearer {api_token}")).send())
    }

    /// How requests made with the credential (the proxy) carry it: the same header as `test`.
    /// Without an HTTP use, return `Err(no_http_use("Example service"))`.
    fn authenticate(_ctx: TestContext) -> Result<AuthPlan, Error> {
        Ok(AuthPlan::new().header("Authorization", template("Bearer {api_token}")))
    }
}

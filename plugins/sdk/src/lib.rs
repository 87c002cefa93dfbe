//! Guest-side SDK for credhost credential-type plugins.
//!
//! It generates the bindings for the `credential-type` world in `wit/provider.wit`
//! once, re-exports them, and adds the helpers that keep a plugin short:
//!
//! - [`spec`]: field-spec builders (`text`, `secret`, `choice`, …) for `describe`;
//! - [`Form`]: `validate` input checked against the descriptor (unknown, duplicate and
//!   missing fields, kinds, environments), trimmed and defaulted;
//! - [`Errors`]: collects `field-error`s whose messages never repeat a value;
//! - [`Fields`]: a read-only view over `list<field-value>` (e.g. a test context);
//! - [`outcome`]: `test-outcome` and fact builders;
//! - [`request`]: `http.send` with secret references, and the usual status verdict;
//! - [`plan`]: [`AuthPlan`] builders for `authenticate` (how the host applies the credential);
//! - [`url`], [`names`], [`json`]: small offline parsers.
//!
//! ```no_run
//! use credhost_sdk::prelude::*;
//!
//! struct Token;
//!
//! fn descriptor() -> Descriptor {
//!     Descriptor {
//!         id: "token".into(),
//!         display_name: "Token".into(),
//!         version: env!("CARGO_PKG_VERSION").into(),
//!         description: "A bearer token.".into(),
//!         fields: vec![spec::secret("token", "Token").required(), spec::url("test_url", "Test URL")],
//!         environments: vec![],
//!     }
//! }
//!
//! impl Guest for Token {
//!     fn describe() -> Descriptor {
//!         descriptor()
//!     }
//!     fn validate(input: Vec<FieldValue>) -> Result<Vec<FieldValue>, Vec<FieldError>> {
//!         let form = Form::new(descriptor(), input);
//!         let mut errors = Errors::new();
//!         if form.get("token").is_some_and(|t| t.contains(' ')) {
//!             errors.add("token", "token must not contain spaces.");
//!         }
//!         form.finish(errors)
//!     }
//!     fn test(ctx: TestContext) -> Result<TestOutcome, Error> {
//!         let url = Fields::of(&ctx).require("test_url")?.to_string();
//!         request::auth_verdict(request::get(url).header("Authorization", template("Bearer {token}")).send())
//!     }
//!     fn authenticate(_ctx: TestContext) -> Result<AuthPlan, Error> {
//!         Ok(AuthPlan::new().header("Authorization", template("Bearer {token}")))
//!     }
//! }
//!
//! credhost_sdk::export!(Token);
//! ```
//!
//! Secret values reach a plugin only as `validate` input. The generated `Debug` of
//! `FieldValue` prints the value, so never format input fields with `{:?}`.

/// Bindings generated from `wit/provider.wit` (world `credential-type`).
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "credential-type",
        pub_export_macro: true,
        default_bindings_module: "credhost_sdk::bindings",
    });
}

pub mod errors;
pub mod expiry;
pub mod fields;
pub mod form;
pub mod json;
pub mod names;
pub mod outcome;
pub mod plan;
pub mod request;
pub mod spec;
pub mod url;

pub use bindings::credhost::provider::{http, log, net, secrets, settings, sql, ssh, types};
/// `export!(MyType)` exports `MyType: Guest` as the plugin's implementation.
pub use bindings::export;
pub use bindings::Guest;
pub use errors::Errors;
pub use fields::Fields;
pub use form::Form;
pub use http::AuthPlan;
pub use types::{
    Descriptor, Error, Fact, FieldError, FieldKind, FieldSpec, FieldValue, TestContext,
    TestOutcome, TestStatus,
};

/// Everything a plugin usually needs, in one `use`.
pub mod prelude {
    pub use crate::http::Value;
    pub use crate::outcome::{indeterminate, invalid, valid, OutcomeExt};
    pub use crate::plan::no_http_use;
    pub use crate::request::{basic, field, plain, template};
    pub use crate::spec::{self, SpecExt};
    pub use crate::{
        request, AuthPlan, Descriptor, Error, Errors, FieldError, FieldValue, Fields, Form, Guest,
        TestContext, TestOutcome, TestStatus,
    };
}

//! Host bindings for `wit/provider.wit`, generated once for the whole host.
//!
//! The host binds `credential-type-core` (imports plus `describe`/`validate`/`test`), not
//! `credential-type`: components built against 0.1.0 lack the 0.1.1 export `authenticate`,
//! and binding the full world would make every one of them fail to load. `authenticate`
//! is looked up per component instead (see `Runtime::authenticate`). The types of every
//! imported interface, `http::AuthPlan` included, are generated all the same.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "credential-type-core",
});

/// The exports every credential type has (the core world's generated bindings).
pub use CredentialTypeCore as CredentialType;
pub use CredentialTypeCorePre as CredentialTypePre;

/// Name of the optional export added in 0.1.1.
pub const AUTHENTICATE: &str = "authenticate";

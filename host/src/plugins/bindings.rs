//! Host bindings for `wit/provider.wit`, generated once for the whole host.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "credential-type",
});

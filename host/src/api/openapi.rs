//! `GET /openapi.json`: the OpenAPI document, generated from the handlers.

use axum::routing::get;
use axum::{Json, Router};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::AppState;

#[derive(OpenApi)]
#[openapi(
    info(title = "credhost", description = "Credential host with sandboxed WebAssembly credential types"),
    paths(
        super::credentials::create, super::credentials::list, super::credentials::show,
        super::credentials::update, super::credentials::remove, super::credentials::restore,
        super::credentials::validate, super::credentials::test,
        super::grants::create, super::grants::list, super::grants::revoke,
        super::proxy::proxied,
        super::reveal::reveal,
        super::types::list, super::audit::list,
        super::admin::add_user, super::admin::add_token, super::admin::revoke_token,
        super::admin::plugins, super::admin::reload_plugins,
        super::health::healthz, super::health::readyz, super::health::metrics,
        spec,
    ),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

pub fn router() -> Router<AppState> {
    Router::new().route("/openapi.json", get(spec))
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "health", responses((status = 200)))]
async fn spec() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

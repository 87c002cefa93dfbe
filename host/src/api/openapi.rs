//! `GET /openapi.json`: the OpenAPI document, generated from the handlers. The statuses
//! every operation shares (401 on authenticated routes, 400/413/415 on JSON bodies, 404 on
//! ids, 503 with `Retry-After`) are added here, once, by rule ([`Contract`]); the handlers
//! document what is particular to them. The schemas of limited inputs (names, tags, field
//! values) come from the functions below, which read the server's own limits.

use axum::routing::get;
use axum::{Json, Router};
use utoipa::openapi::path::{Operation, ParameterIn, PathItem};
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{
    AdditionalProperties, ArrayBuilder, KnownFormat, ObjectBuilder, OneOfBuilder, Schema, SchemaFormat, Type,
};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, HeaderBuilder, Ref, RefOr};
use utoipa::{Modify, OpenApi};

use super::AppState;
use crate::names::{MAX_NAME_BYTES, MAX_TAGS, MAX_TAG_BYTES};

#[derive(OpenApi)]
#[openapi(
    info(title = "credhost", description = "Credential host with sandboxed WebAssembly credential types. \
Every error is `{\"error\": {\"code\", \"message\", \"fields\"?}}`; `fields` names the inputs at fault."),
    paths(
        super::credentials::create, super::credentials::list, super::credentials::show,
        super::credentials::update, super::credentials::remove, super::credentials::restore,
        super::credentials::validate, super::credentials::test, super::history::list,
        super::versions::list, super::versions::rotate, super::versions::promote,
        super::grants::create, super::grants::list, super::grants::revoke,
        super::proxy::proxied,
        super::reveal::reveal,
        super::types::list, super::audit::list,
        super::admin::add_user, super::admin::add_token, super::admin::revoke_token,
        super::admin::plugins, super::admin::reload_plugins, super::admin::rotate_master_key,
        super::admin::list_users, super::admin::list_tokens, super::tokens::list, super::tokens::revoke,
        super::webhooks::create, super::webhooks::list, super::webhooks::show, super::webhooks::remove,
        super::webhooks::deliveries, super::webhooks::ping,
        super::health::healthz, super::health::readyz, super::health::metrics,
        spec,
    ),
    modifiers(&BearerAuth, &Contract)
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

/// Adds the responses every operation of a kind can give, so that no handler can forget
/// one: the middleware and extractors produce them for every route alike.
struct Contract;

impl Modify for Contract {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            for op in operations(item) {
                let authenticated = op.security.as_ref().is_some_and(|s| !s.is_empty());
                let json_body = op.request_body.as_ref().is_some_and(|b| b.content.contains_key("application/json"));
                let query = op.parameters.iter().flatten().any(|p| p.parameter_in == ParameterIn::Query);
                // An optional body is read whatever its content type.
                let optional = op.request_body.as_mut().is_some_and(|body| {
                    optional_body(body);
                    body.required == Some(utoipa::openapi::Required::False)
                });
                let responses = &mut op.responses.responses;
                let mut add = |status: &str, response: Response| {
                    responses.entry(status.to_string()).or_insert(RefOr::T(response));
                };
                if authenticated {
                    add("401", unauthorized());
                    add("403", error("the token lacks the scope this operation needs (`insufficient_scope`), or the caller may not do this"));
                }
                if json_body {
                    add("400", error("malformed JSON, a member of the wrong type, or an unknown member"));
                    add("413", error("the body is larger than the server accepts"));
                    if !optional {
                        add("415", error("a body without `Content-Type: application/json`"));
                    }
                }
                if query {
                    add("400", error("a malformed or unknown query parameter"));
                    add("422", error("a query parameter out of range; `fields` names it"));
                }
                if path.contains('{') {
                    add("404", error("no such resource for this caller (another user's ids are not found either)"));
                }
                // Every request runs under the server's time limit; plugin calls may find the sandbox busy.
                add("503", unavailable());
                for (status, response) in responses.iter_mut() {
                    if let RefOr::T(response) = response {
                        with_headers(status, response);
                    }
                }
                if authenticated {
                    op.parameters.iter_mut().flatten().filter(|p| p.parameter_in == ParameterIn::Path).for_each(|p| {
                        if p.name == "id" && path.starts_with("/api/credentials/") {
                            p.schema = Some(uuid());
                            p.description.get_or_insert_with(|| "credential id".into());
                        }
                    });
                }
            }
        }
    }
}

fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch, &mut item.head, &mut item.options]
        .into_iter()
        .filter_map(Option::as_mut)
}

/// An `Option<T>` body is documented by utoipa as "`null` or T"; what the server means is
/// that the body may be left out (see `extract::OptionalJson`): say that instead, which
/// generated clients understand.
fn optional_body(body: &mut utoipa::openapi::request_body::RequestBody) {
    for content in body.content.values_mut() {
        let Some(RefOr::T(Schema::OneOf(one_of))) = &content.schema else { continue };
        let is_null =
            |s: &RefOr<Schema>| matches!(s, RefOr::T(Schema::Object(o)) if o.schema_type == Type::Null.into());
        if one_of.items.len() == 2 && one_of.items.iter().any(is_null) {
            let inner = one_of.items.iter().find(|s| !is_null(s)).cloned();
            content.schema = inner;
            body.required = Some(utoipa::openapi::Required::False);
        }
    }
}

/// An error response in the one error shape.
fn error(description: &str) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content("application/json", ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build())
        .build()
}

fn unauthorized() -> Response {
    error("missing, unknown, expired or revoked bearer token")
}

fn unavailable() -> Response {
    error("the request took longer than the server allows, or the plugin sandbox is busy; nothing was changed. Retry after `Retry-After` seconds")
}

/// The headers a status carries (see `error::with_status_headers` and `reply::Created`).
fn with_headers(status: &str, response: &mut Response) {
    let (name, description, format) = match status {
        "201" => ("Location", "URL of the created resource", None),
        "401" => ("WWW-Authenticate", "`Bearer`: the scheme to authenticate with", None),
        "503" => ("Retry-After", "seconds to wait before retrying", Some(Type::Integer)),
        _ => return,
    };
    let schema = ObjectBuilder::new().schema_type(format.unwrap_or(Type::String));
    response
        .headers
        .entry(name.to_string())
        .or_insert_with(|| HeaderBuilder::new().schema(schema).description(Some(description)).build());
}

fn uuid() -> RefOr<Schema> {
    ObjectBuilder::new().schema_type(Type::String).format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid))).into()
}

fn text(max: usize, description: String) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(max))
        .description(Some(description))
}

/// A credential name, as the server limits it.
pub(crate) fn name_schema() -> ObjectBuilder {
    text(
        MAX_NAME_BYTES,
        format!(
            "Unique among the caller's credentials; 1 to {MAX_NAME_BYTES} bytes of UTF-8 after NFC normalisation, \
             no control, bidi-override or zero-width characters, no surrounding spaces."
        ),
    )
}

/// A credential's tags, as the server limits them.
pub(crate) fn tags_schema() -> ArrayBuilder {
    ArrayBuilder::new()
        .items(text(
            MAX_TAG_BYTES,
            format!("1 to {MAX_TAG_BYTES} bytes of UTF-8 after NFC normalisation, same characters as a name"),
        ))
        .max_items(Some(MAX_TAGS))
        .description(Some(format!("At most {MAX_TAGS} distinct tags; duplicates are dropped.")))
}

fn seconds(max: u64, nullable: bool, description: &str) -> ObjectBuilder {
    let kind = if nullable {
        utoipa::openapi::schema::SchemaType::from_iter([Type::Integer, Type::Null])
    } else {
        Type::Integer.into()
    };
    ObjectBuilder::new()
        .schema_type(kind)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
        .minimum(Some(1))
        .maximum(Some(max))
        .description(Some(description))
}

/// A token's lifetime, as the server limits it.
pub(crate) fn token_lifetime_schema() -> ObjectBuilder {
    seconds(
        crate::service::MAX_TOKEN_LIFETIME_SECS,
        true,
        "Lifetime in seconds (at most 10 years); absent means no expiry.",
    )
}

/// A grant's lifetime, as the server limits it.
pub(crate) fn grant_ttl_schema() -> ObjectBuilder {
    seconds(crate::service::MAX_GRANT_TTL_SECS, false, "Lifetime in seconds (at most 30 days).")
}

/// A field value: text to the type, given as a JSON string, number or boolean.
fn field_value(nullable: bool) -> Schema {
    let mut one_of = OneOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::String))
        .item(ObjectBuilder::new().schema_type(Type::Number))
        .item(ObjectBuilder::new().schema_type(Type::Boolean));
    if nullable {
        one_of = one_of.item(ObjectBuilder::new().schema_type(Type::Null));
    }
    one_of.build().into()
}

/// `fields` of a new credential: values by field name.
pub(crate) fn field_values_schema() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .additional_properties(Some(AdditionalProperties::RefOr(RefOr::T(field_value(false)))))
        .description(Some("Field values by name, secret ones included; numbers and booleans are taken as their text."))
}

/// `fields` of an update: `null` removes an optional field.
pub(crate) fn field_updates_schema() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .additional_properties(Some(AdditionalProperties::RefOr(RefOr::T(field_value(true)))))
        .description(Some("Fields to set; `null` removes an optional field. Secret fields not named keep their value."))
}

/// `GET /healthz`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: String,
}

/// `GET /readyz`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Readiness {
    /// True when the API can serve: start-up done, store answering, types loaded.
    pub ready: bool,
    /// The store answers.
    pub store: bool,
    /// Loaded credential types.
    pub types: u64,
    /// While starting: what is still in progress.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub starting: Option<String>,
}

pub fn router() -> Router<AppState> {
    Router::new().route("/openapi.json", get(spec))
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "health", operation_id = "get_openapi",
    responses((status = 200, description = "the OpenAPI 3.1 document", content_type = "application/json")))]
async fn spec() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Generators name methods after operation ids; two alike break them.
    #[test]
    fn operation_ids_are_unique_and_every_route_says_what_it_answers() {
        let doc = ApiDoc::openapi();
        let mut ids = std::collections::BTreeSet::new();
        let mut paths = doc.paths.paths.clone();
        for (path, item) in paths.iter_mut() {
            for op in operations(item) {
                let id = op.operation_id.clone().unwrap_or_default();
                assert!(!id.is_empty(), "{path}: no operationId");
                assert!(ids.insert(id.clone()), "{path}: operationId {id} is used twice");
                let statuses: Vec<&String> = op.responses.responses.keys().collect();
                assert!(statuses.iter().any(|s| s.starts_with('2')), "{path} {id}: no success status");
                if op.security.is_some() {
                    assert!(op.responses.responses.contains_key("401"), "{path} {id}: no 401");
                }
            }
        }
        // Doc links are for rustdoc; in the published document they are noise.
        let text = serde_json::to_string(&doc).unwrap();
        assert!(!text.contains("[`"), "Rust doc-link text in the document");
    }
}

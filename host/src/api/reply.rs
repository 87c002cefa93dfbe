//! Response shapes shared by handlers.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

/// `201 Created` with the JSON body and a `Location` naming the new resource.
pub struct Created<T>(pub String, pub T);

impl<T: Serialize> IntoResponse for Created<T> {
    fn into_response(self) -> Response {
        let mut response = (StatusCode::CREATED, Json(self.1)).into_response();
        // Ids and names in the path are URL-safe (uuids, token and grant ids); a
        // value that is not a valid header is left out rather than failing the request.
        if let Ok(location) = HeaderValue::from_str(&self.0) {
            response.headers_mut().insert(header::LOCATION, location);
        }
        response
    }
}

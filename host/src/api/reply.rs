//! Response shapes shared by handlers.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

/// A secret handed to its owner once (a new token, a webhook signing secret): serialized
/// as is, never shown by `Debug`.
#[derive(Serialize)]
#[serde(transparent)]
pub struct ShownOnce(pub String);

impl From<&secrecy::SecretString> for ShownOnce {
    fn from(s: &secrecy::SecretString) -> Self {
        use secrecy::ExposeSecret as _;
        ShownOnce(s.expose_secret().to_owned())
    }
}

impl std::fmt::Debug for ShownOnce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ShownOnce(..)")
    }
}

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

#[cfg(test)]
mod tests {
    use super::ShownOnce;

    #[test]
    fn a_secret_shown_once_is_serialized_but_never_debug_printed() {
        let s = ShownOnce("whsec_c2VjcmV0LXNob3duLW9uY2U=".into());
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"whsec_c2VjcmV0LXNob3duLW9uY2U=\"");
        assert!(!format!("{s:?}").contains("c2VjcmV0"), "{s:?}");
    }
}

//! The web console: static files compiled into the binary (`host/console/`), served under
//! `/ui/` with a strict Content-Security-Policy. The console is a client of the public API
//! like any other: it holds an API token in `sessionStorage` and calls `/api/...` on the
//! same origin. Nothing here reads the store.

use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

use super::{ApiError, AppState};
use crate::service::ServiceError;

/// No inline script or style, no eval, nothing from another origin, no framing, no form
/// posts anywhere (forms are handled by script), no `<base>` tricks.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
    connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'";

/// Every file of the console: (name under `/ui/`, content type, bytes).
const FILES: &[(&str, &str, &[u8])] = &[
    ("index.html", "text/html; charset=utf-8", include_bytes!("../../console/index.html")),
    ("app.css", "text/css; charset=utf-8", include_bytes!("../../console/app.css")),
    ("icon.svg", "image/svg+xml", include_bytes!("../../console/icon.svg")),
    ("core.js", "text/javascript; charset=utf-8", include_bytes!("../../console/core.js")),
    ("app.js", "text/javascript; charset=utf-8", include_bytes!("../../console/app.js")),
    ("list.js", "text/javascript; charset=utf-8", include_bytes!("../../console/list.js")),
    ("form.js", "text/javascript; charset=utf-8", include_bytes!("../../console/form.js")),
    ("detail.js", "text/javascript; charset=utf-8", include_bytes!("../../console/detail.js")),
    ("admin.js", "text/javascript; charset=utf-8", include_bytes!("../../console/admin.js")),
];

struct Asset {
    content_type: &'static str,
    body: &'static [u8],
    /// A digest of the bytes: browsers revalidate (`no-cache`) and get a 304 while the
    /// binary is the same, and a new binary's files at once.
    etag: HeaderValue,
}

fn assets() -> &'static [(&'static str, Asset)] {
    static ASSETS: OnceLock<Vec<(&'static str, Asset)>> = OnceLock::new();
    ASSETS.get_or_init(|| {
        use sha2::Digest as _;
        FILES
            .iter()
            .map(|&(name, content_type, body)| {
                let digest = sha2::Sha256::digest(body);
                let tag = format!("\"{}\"", crate::plugins::runtime::hex(&digest[..12]));
                (name, Asset { content_type, body, etag: HeaderValue::from_str(&tag).expect("hex is a valid header") })
            })
            .collect()
    })
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(|headers: HeaderMap| async move { serve("index.html", &headers) }))
        .route("/ui/{file}", get(|Path(file): Path<String>, headers: HeaderMap| async move { serve(&file, &headers) }))
}

fn serve(name: &str, request: &HeaderMap) -> Response {
    let Some((_, asset)) = assets().iter().find(|(n, _)| *n == name) else {
        return ApiError::Service(ServiceError::NotFound).into_response();
    };
    let fresh = request.get(header::IF_NONE_MATCH).is_some_and(|v| v.as_bytes() == asset.etag.as_bytes());
    let mut response =
        if fresh { StatusCode::NOT_MODIFIED.into_response() } else { asset.body.into_response() };
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    h.insert(header::ETAG, asset.etag.clone());
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(HeaderName::from_static("cross-origin-opener-policy"), HeaderValue::from_static("same-origin"));
    h.insert(HeaderName::from_static("cross-origin-resource-policy"), HeaderValue::from_static("same-origin"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_is_served_with_the_policy_and_an_etag() {
        for (name, _, _) in FILES {
            let r = serve(name, &HeaderMap::new());
            assert_eq!(r.status(), StatusCode::OK, "{name}");
            assert_eq!(r.headers()[header::CONTENT_SECURITY_POLICY], CSP);
            let etag = r.headers()[header::ETAG].clone();
            let mut again = HeaderMap::new();
            again.insert(header::IF_NONE_MATCH, etag);
            assert_eq!(serve(name, &again).status(), StatusCode::NOT_MODIFIED, "{name}");
        }
        assert_eq!(serve("../Cargo.toml", &HeaderMap::new()).status(), StatusCode::NOT_FOUND);
    }

    /// The policy forbids inline script and handlers, so the files must not rely on them.
    #[test]
    fn no_inline_script_style_or_handlers_in_the_page() {
        let html = std::str::from_utf8(FILES[0].2).unwrap().to_ascii_lowercase();
        assert!(!html.contains(" on") || !regex_like_handler(&html), "inline event handler in index.html");
        for chunk in html.split("<script").skip(1) {
            let tag_end = chunk.find('>').unwrap();
            assert!(chunk[..tag_end].contains("src="), "inline <script> in index.html");
        }
        assert!(!html.contains("<style"), "inline <style> in index.html");
        assert!(!html.contains("style="), "inline style attribute in index.html");
    }

    /// Every string reaches the page as text: no HTML parsing of data, no eval.
    #[test]
    fn scripts_never_parse_strings_as_html_or_code() {
        for (name, _, body) in FILES.iter().filter(|(n, _, _)| n.ends_with(".js")) {
            let js = std::str::from_utf8(body).unwrap();
            for banned in ["innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function", "setTimeout(\"", "localStorage"] {
                assert!(!js.contains(banned), "{name} uses {banned}");
            }
        }
    }

    fn regex_like_handler(html: &str) -> bool {
        html.split(|c: char| c.is_whitespace()).any(|w| w.starts_with("on") && w.contains('='))
    }
}

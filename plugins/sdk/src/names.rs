//! Checks for names a plugin puts on the wire. Problems complete a sentence that
//! starts with the field name ("header_name must …").

/// An RFC 9110 token: a header name, an auth scheme such as `Bearer`.
pub fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Headers the host derives itself (Spin's CVE-2024-32980 came from a guest-set `Host`).
const HOST_OWNED: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
];

/// Why `name` can't be used as a request header name, if it can't.
pub fn header_name_problem(name: &str) -> Option<&'static str> {
    if !is_token(name) {
        Some("must be a header name (letters, digits and !#$%&'*+-.^_`|~, no spaces)")
    } else if HOST_OWNED.iter().any(|h| h.eq_ignore_ascii_case(name)) {
        Some("names a header the host sets itself; choose another header")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_names() {
        for ok in ["Authorization", "X-API-Key", "x_token", "Private-Token"] {
            assert_eq!(header_name_problem(ok), None, "{ok}");
        }
        for bad in [
            "",
            "X Key",
            "X-Key:",
            "Hösti",
            "Host",
            "content-length",
            "Auth\r\nX",
        ] {
            assert!(header_name_problem(bad).is_some(), "{bad}");
        }
    }
}

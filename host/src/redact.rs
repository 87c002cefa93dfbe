//! Removing secret values from text that leaves the host's trust boundary
//! (plugin output, HTTP responses handed to plugins, log lines).

use base64::Engine as _;
use secrecy::{ExposeSecret, SecretString};

/// What replaces a secret value.
pub const REDACTED: &str = "[REDACTED]";

/// Secrets shorter than this are not scrubbed: replacing every `a` in a text
/// would destroy it and protect nothing. Types should demand longer secrets.
pub const MIN_SCRUB_LEN: usize = 4;

/// Replaces every value in `secrets`, and its base64 and percent-encoded forms,
/// with [`REDACTED`]. Longer values go first so overlapping secrets scrub fully.
pub fn scrub<'a>(text: &str, secrets: impl IntoIterator<Item = &'a SecretString>) -> String {
    let mut needles: Vec<String> = Vec::new();
    for s in secrets {
        let v = s.expose_secret();
        if v.len() < MIN_SCRUB_LEN {
            continue;
        }
        needles.push(v.to_string());
        needles.push(base64::engine::general_purpose::STANDARD.encode(v));
        needles.push(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v));
        let pct = percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC).to_string();
        if pct != v {
            needles.push(pct);
        }
    }
    needles.sort_by_key(|n| std::cmp::Reverse(n.len()));
    needles.dedup();
    let mut out = text.to_string();
    for n in &needles {
        if out.contains(n.as_str()) {
            out = out.replace(n.as_str(), REDACTED);
        }
    }
    // Drop our plaintext copies promptly.
    for n in &mut needles {
        zeroize::Zeroize::zeroize(n);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrubs_plain_base64_and_url_forms() {
        let s = SecretString::from("p@ss word!");
        let b64 = base64::engine::general_purpose::STANDARD.encode("p@ss word!");
        let text = format!("a p@ss word! b {b64} c p%40ss%20word%21 d");
        let out = scrub(&text, [&s]);
        assert_eq!(out, "a [REDACTED] b [REDACTED] c [REDACTED] d");
    }

    #[test]
    fn short_values_are_left_alone() {
        let s = SecretString::from("ab");
        assert_eq!(scrub("abc", [&s]), "abc");
    }
}

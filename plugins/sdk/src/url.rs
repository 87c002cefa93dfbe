//! A strict, small parser for absolute URLs (`scheme://host[:port][/path][?query]`).
//!
//! Enough to check a URL field offline and name its origin; the host does the real
//! parsing before it sends anything. Problems are phrased to follow the field name
//! ("test_url must …") and never repeat the URL.

/// The parts of an absolute URL, borrowed from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Url<'a> {
    pub scheme: &'a str,
    /// A domain, an IPv4 address or a bracketed IPv6 address.
    pub host: &'a str,
    pub port: Option<u16>,
    /// Path, query and fragment, as given (may be empty).
    pub rest: &'a str,
}

impl Url<'_> {
    /// `http` or `https`, whatever the case.
    pub fn is_http(&self) -> bool {
        self.scheme.eq_ignore_ascii_case("http") || self.scheme.eq_ignore_ascii_case("https")
    }
}

const NOT_ABSOLUTE: &str = "must be an absolute URL such as https://example.com/path";

/// Parses `s`; the error completes a sentence that starts with the field name.
pub fn parse(s: &str) -> Result<Url<'_>, &'static str> {
    if !s.is_ascii() {
        return Err(
            "must be plain ASCII (percent-encode other characters, use punycode for domain names)",
        );
    }
    if s.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err("must not contain spaces or control characters");
    }
    let (scheme, after) = s.split_once("://").ok_or(NOT_ABSOLUTE)?;
    let mut chars = scheme.chars();
    let scheme_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    if !scheme_ok {
        return Err(NOT_ABSOLUTE);
    }
    let end = after.find(['/', '?', '#']).unwrap_or(after.len());
    let (authority, rest) = after.split_at(end);
    if authority.contains('@') {
        return Err(
            "must not contain a user name or password; use the credential's fields for those",
        );
    }
    let (host, port) = split_host_port(authority)?;
    Ok(Url {
        scheme,
        host,
        port,
        rest,
    })
}

fn split_host_port(authority: &str) -> Result<(&str, Option<u16>), &'static str> {
    let (host, port) = if authority.starts_with('[') {
        let close = authority
            .find(']')
            .ok_or("has an unclosed [ in its IPv6 address")?;
        let inner = &authority[1..close];
        if inner.is_empty()
            || !inner
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
        {
            return Err("has an invalid IPv6 address");
        }
        match &authority[close + 1..] {
            "" => (&authority[..=close], None),
            p => (
                &authority[..=close],
                Some(p.strip_prefix(':').ok_or("has an invalid port")?),
            ),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("must name a host, as in https://example.com/path");
    }
    if !host.starts_with('[')
        && !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._~%".contains(c))
    {
        return Err("has an invalid host name");
    }
    let port = match port {
        None => None,
        Some(p) => Some(parse_port(p).ok_or("has an invalid port (use 1-65535)")?),
    };
    Ok((host, port))
}

/// A TCP port, 1–65535, digits only.
pub fn parse_port(s: &str) -> Option<u16> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u16>().ok().filter(|&p| p != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_parts() {
        let u = parse("https://api.example.com:8443/v1/me?x=1").unwrap();
        assert_eq!(
            (u.scheme, u.host, u.port, u.rest),
            ("https", "api.example.com", Some(8443), "/v1/me?x=1")
        );
        assert!(u.is_http());
        let u = parse("HTTP://[::1]:9/").unwrap();
        assert_eq!((u.host, u.port), ("[::1]", Some(9)));
        assert!(u.is_http());
        assert!(!parse("ftp://h").unwrap().is_http());
    }

    #[test]
    fn rejects_bad_urls() {
        for bad in [
            "example.com/x",
            "https://",
            "https://user:pw@h/",
            "https://h:0/",
            "https://h:99999/",
            "https://h:/",
            "https://h x/",
            "https://bad host/",
            "https://[zz]/",
            "1http://h/",
            "https://hé/",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ports() {
        assert_eq!(parse_port("22"), Some(22));
        assert_eq!(parse_port("65535"), Some(65535));
        for bad in ["", "0", "65536", "+1", "1a", "000022"] {
            assert_eq!(parse_port(bad), None, "{bad}");
        }
    }
}

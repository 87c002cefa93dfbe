//! Offline checks of the SSH target: host name and pinned host-key fingerprint.

use base64ct::{Base64Unpadded, Encoding};

/// The host in normal form (lower case, IPv6 without brackets), or what is wrong.
pub fn check_host(host: &str) -> Result<String, &'static str> {
    if host.contains("://") {
        return Err("host must be a host name or IP address, not a URL.");
    }
    if host.contains('@') {
        return Err("host must not include a user name; put it in username.");
    }
    let bracketed = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
    let host = bracketed.unwrap_or(host);
    if host.contains(':') {
        let ipv6 = host.matches(':').count() >= 2
            && host
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.');
        return if ipv6 {
            Ok(host.to_ascii_lowercase())
        } else {
            Err("host must not include a port; put it in port.")
        };
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if bracketed.is_some() || name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(
            "host must be a host name (letters, digits, dots and hyphens) or an IP address.",
        );
    }
    Ok(name.to_ascii_lowercase())
}

/// The fingerprint as `SHA256:<43 base64 characters>`, or what is wrong.
pub fn check_fingerprint(fp: &str) -> Result<String, &'static str> {
    let digest = match fp.split_once(':') {
        Some((alg, digest)) if alg.eq_ignore_ascii_case("SHA256") => digest.trim_end_matches('='),
        Some((alg, _)) if alg.eq_ignore_ascii_case("MD5") || alg.len() == 2 => {
            return Err("host_key_fingerprint must be the SHA256 form printed by ssh-keygen -lf (SHA256:…); MD5 fingerprints are not accepted.");
        }
        _ => return Err("host_key_fingerprint must look like SHA256: followed by 43 base64 characters, as printed by ssh-keygen -lf."),
    };
    let mut raw = [0u8; 32];
    match Base64Unpadded::decode(digest, &mut raw) {
        Ok(d) if d.len() == 32 && digest.len() == 43 => Ok(format!("SHA256:{digest}")),
        _ => Err(
            "host_key_fingerprint must have 43 base64 characters after SHA256: (a SHA-256 digest).",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert_eq!(check_host("Example.COM."), Ok("example.com".into()));
        assert_eq!(check_host("10.0.0.1"), Ok("10.0.0.1".into()));
        assert_eq!(check_host("[::1]"), Ok("::1".into()));
        assert_eq!(check_host("fe80::1"), Ok("fe80::1".into()));
        assert!(check_host("example.com:22").unwrap_err().contains("port"));
        assert!(check_host("root@example.com")
            .unwrap_err()
            .contains("username"));
        assert!(check_host("ssh://example.com").unwrap_err().contains("URL"));
        for bad in [
            "-bad.com",
            "a..b",
            "sp ace",
            "[example.com]",
            &"a".repeat(64),
        ] {
            assert!(check_host(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn fingerprints() {
        let fp = "SHA256:Z4/3lQ3YToMJZAi6nDyEy1OT7kLsHE4DB+J0niELzhA";
        assert_eq!(check_fingerprint(fp), Ok(fp.into()));
        assert_eq!(
            check_fingerprint(&format!("sha256:{}=", &fp[7..])),
            Ok(fp.into())
        );
        assert!(
            check_fingerprint("MD5:16:27:ac:a5:76:28:2d:36:63:1b:56:4d:eb:df:a6:48")
                .unwrap_err()
                .contains("MD5")
        );
        assert!(
            check_fingerprint("16:27:ac:a5:76:28:2d:36:63:1b:56:4d:eb:df:a6:48")
                .unwrap_err()
                .contains("MD5")
        );
        for bad in [
            "Z4/3lQ3YToMJZAi6nDyEy1OT7kLsHE4DB+J0niELzhA",
            "SHA256:short",
            "SHA256:Z4/3lQ3YToMJZAi6nDyEy1OT7kLsHE4DB+J0niELzh!",
        ] {
            assert!(check_fingerprint(bad).is_err(), "{bad}");
        }
    }
}

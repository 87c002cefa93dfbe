//! Offline checks of Alpaca key formats.

pub const PAPER: &str = "paper";
pub const LIVE: &str = "live";

pub fn other_environment(env: &str) -> &'static str {
    if env == LIVE {
        PAPER
    } else {
        LIVE
    }
}

fn is_upper_alnum(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

fn looks_like_key_id(s: &str) -> bool {
    (16..=32).contains(&s.len()) && is_upper_alnum(s)
}

/// The environment a key id belongs to (PK… paper, AK… live).
pub fn check_key_id(key_id: &str) -> Result<&'static str, &'static str> {
    if !looks_like_key_id(key_id) {
        return Err("key_id must be 16 to 32 uppercase letters and digits, as shown in the Alpaca dashboard.");
    }
    if key_id.starts_with("PK") {
        Ok(PAPER)
    } else if key_id.starts_with("AK") {
        Ok(LIVE)
    } else {
        Err("key_id must start with PK (paper key) or AK (live key).")
    }
}

pub fn check_secret_key(secret: &str) -> Result<(), &'static str> {
    if looks_like_key_id(secret) && (secret.starts_with("PK") || secret.starts_with("AK")) {
        return Err("secret_key looks like a key ID; paste the secret key that was shown once when the key was generated.");
    }
    let charset_ok = secret
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"+/=_-.".contains(&b));
    if !(30..=64).contains(&secret.len()) || !charset_ok {
        return Err("secret_key must be about 40 letters and digits without spaces; check that the whole secret was copied.");
    }
    Ok(())
}

/// The problem with a key bound to the wrong environment.
pub fn mismatch(key_env: &str, env: &str) -> String {
    let (prefix, other_prefix) = if key_env == PAPER {
        ("PK", "AK")
    } else {
        ("AK", "PK")
    };
    format!(
        "key_id is a {key_env} key (it starts with {prefix}) but the credential is bound to {env}; \
         bind it to {key_env} or use a {env} key ({other_prefix}…)."
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids() {
        assert_eq!(check_key_id("PKABCDEFGHIJ0123456789"), Ok(PAPER));
        assert_eq!(check_key_id("AK0123456789ABCDEFGH"), Ok(LIVE));
        for bad in [
            "PK123",
            "pkabcdefghij0123456789",
            "PKABCDEFGHIJ012345678-",
            "XKABCDEFGHIJ0123456789",
            &"PK".repeat(17),
        ] {
            assert!(check_key_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn secret_keys() {
        assert!(check_secret_key("abcdefghijABCDEFGHIJ0123456789abcdefghij").is_ok());
        assert!(check_secret_key("PKABCDEFGHIJ0123456789")
            .unwrap_err()
            .contains("looks like a key ID"));
        for bad in [
            "short",
            "abcdefghij ABCDEFGHIJ0123456789abcdefghij",
            &"a".repeat(65),
        ] {
            assert!(check_secret_key(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn mismatch_names_both_environments() {
        let m = mismatch(PAPER, LIVE);
        assert!(m.contains("paper key") && m.contains("bound to live") && m.contains("AK"));
    }
}

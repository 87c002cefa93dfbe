//! SSH logins: host, port, user and exactly one of password or private key.
//!
//! `validate` parses the private key (see [`key`]) and checks the target and a pinned
//! host-key fingerprint offline; `test` asks the host to log in (`ssh.check-login`).

mod host;
mod key;

use credhost_sdk::errors::invalid_field;
use credhost_sdk::log::{self, Level};
use credhost_sdk::outcome::{self, clip, OutcomeExt};
use credhost_sdk::prelude::*;
use credhost_sdk::ssh::{self as ssh_host, Auth, Target};

struct Ssh;

credhost_sdk::export!(Ssh);

fn descriptor() -> Descriptor {
    Descriptor {
        id: "ssh".into(),
        display_name: "SSH login".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        description: "A login to an SSH server with a password or a private key, optionally \
                      pinned to the server's host key."
            .into(),
        fields: vec![
            spec::text("host", "Host").required().help("Host name or IP address of the SSH server."),
            spec::number("port", "Port").default("22").help("TCP port of the SSH server."),
            spec::text("username", "User name").required(),
            spec::secret("password", "Password").help("Set either a password or a private key."),
            spec::multiline("private_key", "Private key")
                .secret()
                .help("OpenSSH or PEM private key, including its BEGIN and END lines."),
            spec::secret("passphrase", "Key passphrase").help("Only for an encrypted private key."),
            spec::text("host_key_fingerprint", "Host key fingerprint")
                .help("SHA256:… as printed by ssh-keygen -lf; the test fails if the server shows another key."),
        ],
        environments: vec![],
    }
}

impl Guest for Ssh {
    fn describe() -> Descriptor {
        descriptor()
    }

    fn validate(input: Vec<FieldValue>) -> Result<Vec<FieldValue>, Vec<FieldError>> {
        let mut form = Form::new(descriptor(), input)
            .keep_whitespace("password")
            .keep_whitespace("passphrase");
        let mut errors = Errors::new();
        if let Some(h) = form
            .get("host")
            .and_then(|h| errors.check("host", host::check_host(h)))
        {
            form.set("host", h);
        }
        if form
            .number("port")
            .is_some_and(|p| !(1..=65535).contains(&p))
        {
            errors.add("port", "port must be from 1 to 65535.");
        }
        if form
            .get("username")
            .is_some_and(|u| u.contains(char::is_whitespace))
        {
            errors.add("username", "username must not contain spaces.");
        }
        let fingerprint = form
            .get("host_key_fingerprint")
            .map(host::check_fingerprint);
        if let Some(fp) = fingerprint.and_then(|r| errors.check("host_key_fingerprint", r)) {
            form.set("host_key_fingerprint", fp);
        }
        check_auth(&form, &mut errors);
        form.finish(errors)
    }

    fn test(ctx: TestContext) -> Result<TestOutcome, Error> {
        let fields = Fields::of(&ctx);
        let port = fields.number("port")?.unwrap_or(22);
        let target = Target {
            host: fields.require("host")?.into(),
            port: u16::try_from(port)
                .map_err(|_| invalid_field("port", "port must be from 1 to 65535."))?,
            username: fields.require("username")?.into(),
            // The host refuses to authenticate to a server showing another key.
            expected_host_key: fields
                .get_trimmed("host_key_fingerprint")
                .and_then(|p| host::check_fingerprint(p).ok()),
        };
        let (auth, method) = if fields.is_set("private_key") {
            let passphrase = fields
                .is_set("passphrase")
                .then(|| "passphrase".to_string());
            (
                Auth::PrivateKey(("private_key".into(), passphrase)),
                "private_key",
            )
        } else if fields.is_set("password") {
            (Auth::Password("password".into()), "password")
        } else {
            return Err(invalid_field(
                "password",
                "set a password or a private_key.",
            ));
        };
        let login = match ssh_host::check_login(&target, &auth) {
            Ok(login) => login,
            Err(e) => return outcome::from_error(e),
        };
        let seen = login.host_key_fingerprint;
        let pinned = fields.get_trimmed("host_key_fingerprint");
        let verdict = match pinned {
            Some(pinned)
                if host::check_fingerprint(pinned).ok() != host::check_fingerprint(&seen).ok() =>
            {
                log::write(
                    Level::Warn,
                    &format!("host key mismatch for {}:{}", target.host, target.port),
                );
                invalid(format!(
                    "host key mismatch: the server presented {}, the credential pins {pinned}",
                    clip(&seen)
                ))
            }
            _ if login.authenticated => valid(format!("logged in as {}", target.username)),
            _ if login.message.is_empty() => invalid("login rejected"),
            _ => invalid(format!("login rejected: {}", clip(&login.message))),
        };
        Ok(verdict
            .fact("host_key_fingerprint", clip(&seen))
            .fact("auth_method", method))
    }

    /// An SSH login is not applied to HTTP requests.
    fn authenticate(_ctx: TestContext) -> Result<AuthPlan, Error> {
        Err(no_http_use("SSH login"))
    }
}

/// Exactly one of password and private key; a passphrase exactly when the key is encrypted.
fn check_auth(form: &Form, errors: &mut Errors) {
    let key = form.get("private_key");
    let passphrase = form.get("passphrase").is_some();
    match (form.get("password").is_some(), key) {
        (true, Some(_)) => errors.add("password", "set either password or private_key, not both."),
        (false, None) => errors.add("password", "set a password or a private_key."),
        (true, None) if passphrase => errors.add(
            "passphrase",
            "passphrase is only used with a private_key; remove it.",
        ),
        _ => {}
    }
    match key.map(key::check_private_key) {
        Some(Err(problem)) => errors.add("private_key", problem),
        Some(Ok(true)) if !passphrase => {
            errors.add(
                "passphrase",
                "passphrase is required: the private key is encrypted.",
            );
        }
        Some(Ok(false)) if passphrase => {
            errors.add(
                "passphrase",
                "passphrase is set but the private key is not encrypted; remove the passphrase.",
            );
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use credhost_sdk::fields::values;

    const KEY: &str = "-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW
QyNTUxOQAAACArr2lGqzC9JIEARkpXHwPo0cK5IC+UdTkdnJmg5RylOgAAAIhH62ykR+ts
pAAAAAtzc2gtZWQyNTUxOQAAACArr2lGqzC9JIEARkpXHwPo0cK5IC+UdTkdnJmg5RylOg
AAAEBG93nH0DfVBPC8UsZNAudmVwli7wruhUPPVWRSpX19gSuvaUarML0kgQBGSlcfA+jR
wrkgL5R1OR2cmaDlHKU6AAAAAAECAwQF
-----END OPENSSH PRIVATE KEY-----";

    type Pairs = Vec<(String, String)>;

    fn validate(pairs: &[(&str, &str)]) -> Result<Pairs, Pairs> {
        Ssh::validate(values(pairs))
            .map(|v| v.into_iter().map(|f| (f.name, f.value)).collect())
            .map_err(|e| e.into_iter().map(|e| (e.field, e.message)).collect())
    }

    #[test]
    fn normalises_target_and_keeps_password_spaces() {
        let out = validate(&[
            ("host", "SSH.Example.com"),
            ("username", "deploy"),
            ("password", " pw "),
            (
                "host_key_fingerprint",
                "sha256:Z4/3lQ3YToMJZAi6nDyEy1OT7kLsHE4DB+J0niELzhA",
            ),
        ])
        .unwrap();
        let get = |n: &str| out.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        assert_eq!(get("host"), Some("ssh.example.com"));
        assert_eq!(get("port"), Some("22"));
        assert_eq!(get("password"), Some(" pw "));
        assert_eq!(
            get("host_key_fingerprint"),
            Some("SHA256:Z4/3lQ3YToMJZAi6nDyEy1OT7kLsHE4DB+J0niELzhA")
        );
    }

    #[test]
    fn wants_exactly_one_way_to_log_in() {
        let base = [("host", "h"), ("username", "u")];
        let both =
            validate(&[base[0], base[1], ("password", "p"), ("private_key", KEY)]).unwrap_err();
        assert_eq!(both[0].0, "password");
        let neither = validate(&base).unwrap_err();
        assert_eq!(neither[0].0, "password");
        let stray =
            validate(&[base[0], base[1], ("private_key", KEY), ("passphrase", "x")]).unwrap_err();
        assert_eq!(stray[0].0, "passphrase");
        assert!(validate(&[base[0], base[1], ("private_key", KEY)]).is_ok());
    }

    #[test]
    fn checks_port_and_names_a_pasted_public_key() {
        let errs = validate(&[
            ("host", "h"),
            ("username", "u"),
            ("port", "0"),
            (
                "private_key",
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJfOREsF7Ism user@host",
            ),
        ])
        .unwrap_err();
        assert_eq!(errs[0].0, "port");
        assert_eq!(errs[1].0, "private_key");
        assert!(errs[1].1.contains("public key"));
    }
}

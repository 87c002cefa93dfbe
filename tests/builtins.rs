//! Every built-in type's `describe` and `validate`, on good and bad input, through
//! the real sandbox (the components embedded in the binary).

mod common;

use std::process::Command;

use credhost::plugins::{Bound, FieldError, Plugin, Validated};
use secrecy::{ExposeSecret, SecretString};

fn plugin(id: &str) -> std::sync::Arc<Plugin> {
    common::registry().get(id).unwrap_or_else(|e| panic!("{id}: {e}"))
}

/// Runs validate with `fields` filed as secret or not by the type's descriptor.
fn validate(id: &str, env: Option<&str>, fields: &[(&str, &str)]) -> Result<Validated, Vec<FieldError>> {
    let p = plugin(id);
    let mut b = Bound { environment: env.map(str::to_string), ..Bound::default() };
    for (k, v) in fields {
        if p.descriptor.field(k).is_none_or(|f| f.secret) {
            b.secrets.insert(k.to_string(), SecretString::from(v.to_string()));
        } else {
            b.fields.insert(k.to_string(), v.to_string());
        }
    }
    common::registry().runtime().validate(&p, b).result.unwrap_or_else(|e| panic!("{id}: plugin fault {e}"))
}

/// Asserts validation fails on exactly these fields, and that no message echoes a value.
fn assert_rejects(id: &str, env: Option<&str>, fields: &[(&str, &str)], bad: &[&str]) {
    let errors = match validate(id, env, fields) {
        Ok(v) => panic!("{id}: expected errors on {bad:?}, got valid {v:?}"),
        Err(e) => e,
    };
    let mut got: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    got.sort();
    got.dedup();
    let mut want = bad.to_vec();
    want.sort();
    assert_eq!(got, want, "{id}: {errors:?}");
    for e in &errors {
        assert!(!e.message.is_empty(), "{id}: empty message for {}", e.field);
        for (k, v) in fields {
            if v.len() >= 6 && plugin(id).descriptor.field(k).is_none_or(|f| f.secret) {
                assert!(!e.message.contains(v), "{id}: message for {} echoes {k}: {}", e.field, e.message);
            }
        }
    }
}

#[test]
fn every_builtin_is_loaded_and_described() {
    let ids: Vec<String> = common::registry().list().iter().map(|p| p.manifest.id.clone()).collect();
    assert_eq!(ids, ["alpaca", "api_key", "bearer_token", "db_dsn", "http_basic", "ssh"]);
    for p in common::registry().list() {
        let d = &p.descriptor;
        assert!(!d.display_name.is_empty() && !d.description.is_empty(), "{}", d.id);
        assert!(d.fields.iter().any(|f| f.secret), "{} has no secret field", d.id);
        assert!(d.fields.iter().any(|f| f.required), "{} has no required field", d.id);
        assert!(!p.manifest.has(credhost::plugins::Capability::Secrets), "{} asks for reveal", d.id);
    }
    assert_eq!(plugin("alpaca").descriptor.environments, ["paper", "live"]);
}

const PAPER_ID: &str = "PKABCDEFGHIJ12345678";
const LIVE_ID: &str = "AKABCDEFGHIJ12345678";
const ALPACA_SECRET: &str = "abcdEFGHijklMNOPqrstUVWXyz0123456789abcd";

#[test]
fn alpaca() {
    let v = validate("alpaca", Some("paper"), &[("key_id", PAPER_ID), ("secret_key", ALPACA_SECRET)]).unwrap();
    assert_eq!(v.fields["key_id"], PAPER_ID);
    assert_eq!(v.secrets["secret_key"].expose_secret(), ALPACA_SECRET);
    validate("alpaca", Some("live"), &[("key_id", LIVE_ID), ("secret_key", ALPACA_SECRET)]).unwrap();
    // Surrounding whitespace from a copy-paste is trimmed.
    let v = validate("alpaca", Some("paper"), &[("key_id", " PKABCDEFGHIJ12345678\n"), ("secret_key", ALPACA_SECRET)])
        .unwrap();
    assert_eq!(v.fields["key_id"], PAPER_ID);

    let env_err = validate("alpaca", Some("live"), &[("key_id", PAPER_ID), ("secret_key", ALPACA_SECRET)]).unwrap_err();
    assert_eq!(env_err[0].field, "environment");
    assert!(env_err[0].message.contains("paper"), "{env_err:?}");
    assert_rejects("alpaca", Some("paper"), &[("key_id", LIVE_ID), ("secret_key", ALPACA_SECRET)], &["environment"]);
    assert_rejects("alpaca", Some("paper"), &[("key_id", "pk-lowercase"), ("secret_key", ALPACA_SECRET)], &["key_id"]);
    assert_rejects("alpaca", Some("paper"), &[("key_id", PAPER_ID)], &["secret_key"]);
    assert_rejects("alpaca", Some("paper"), &[("key_id", PAPER_ID), ("secret_key", "short")], &["secret_key"]);
    assert_rejects(
        "alpaca",
        Some("paper"),
        &[("key_id", PAPER_ID), ("secret_key", ALPACA_SECRET), ("colour", "red")],
        &["colour"],
    );
}

#[test]
fn bearer_token() {
    let v = validate("bearer_token", None, &[("token", "tok_0123456789abcdef")]).unwrap();
    assert_eq!(v.fields.get("header_name").map(String::as_str), Some("Authorization"));
    assert_eq!(v.fields.get("prefix").map(String::as_str), Some("Bearer"));
    validate("bearer_token", None, &[("token", "tok_0123456789abcdef"), ("test_url", "https://api.example.com/me")])
        .unwrap();
    assert_rejects("bearer_token", None, &[], &["token"]);
    assert_rejects("bearer_token", None, &[("token", "two words here")], &["token"]);
    assert_rejects("bearer_token", None, &[("token", "tok_0123456789abcdef"), ("test_url", "ftp://x/")], &["test_url"]);
    assert_rejects("bearer_token", None, &[("token", "tok_0123456789abcdef"), ("header_name", "Bad Header")], &["header_name"]);
}

#[test]
fn http_basic() {
    validate("http_basic", None, &[("username", "alice"), ("password", "correct horse")]).unwrap();
    assert_rejects("http_basic", None, &[("username", "al:ice"), ("password", "correct horse")], &["username"]);
    assert_rejects("http_basic", None, &[("username", "alice")], &["password"]);
    assert_rejects(
        "http_basic",
        None,
        &[("username", "alice"), ("password", "pw123456"), ("test_url", "not a url")],
        &["test_url"],
    );
}

#[test]
fn api_key() {
    let v = validate("api_key", None, &[("key", "k_live_0123456789")]).unwrap();
    assert_eq!(v.fields.get("placement").map(String::as_str), Some("header"));
    validate("api_key", None, &[("key", "k_live_0123456789"), ("placement", "query"), ("name", "api_key")]).unwrap();
    assert_rejects("api_key", None, &[("key", "k_live_0123456789"), ("placement", "cookie")], &["placement"]);
    assert_rejects("api_key", None, &[("key", "k_live_0123456789"), ("name", "bad name")], &["name"]);
    assert_rejects("api_key", None, &[], &["key"]);
}

#[test]
fn db_dsn() {
    for good in [
        "postgres://app:s3cr3t-pw@db.internal:5432/app?sslmode=require",
        "postgresql://app@localhost/app",
        "mysql://root:pw%40x@127.0.0.1:3306/shop",
        "host=db.internal port=5432 dbname=app user=app password='s3cr3t pw' sslmode=prefer",
    ] {
        validate("db_dsn", None, &[("dsn", good)]).unwrap_or_else(|e| panic!("{good}: {e:?}"));
    }
    for (bad, part) in [
        ("postgres://app:s3cr3t-pw@db.internal:54x2/app", "port"),
        ("redis://app:s3cr3t-pw@db.internal/0", "redis"),
        ("postgres://app:s3cr3t-pw@db.internal/app?sslmode=maybe", "sslmode"),
        ("host=db.internal port=5432 password='s3cr3t-pw", "quote"),
    ] {
        let errors = validate("db_dsn", None, &[("dsn", bad)]).unwrap_err();
        assert_eq!(errors.len(), 1, "{bad}: {errors:?}");
        assert_eq!(errors[0].field, "dsn");
        assert!(errors[0].message.to_lowercase().contains(part), "{bad}: should name {part}: {}", errors[0].message);
        assert!(!errors[0].message.contains("s3cr3t-pw"), "{bad}: password echoed: {}", errors[0].message);
    }
}

/// Generates an OpenSSH key pair with ssh-keygen (from openssh-client).
fn keygen(dir: &std::path::Path, name: &str, args: &[&str]) -> (String, String) {
    let path = dir.join(name);
    let out = Command::new("ssh-keygen")
        .args(["-q", "-f"])
        .arg(&path)
        .args(args)
        .output()
        .expect("ssh-keygen is missing: install the Debian package openssh-client");
    assert!(out.status.success(), "ssh-keygen: {}", String::from_utf8_lossy(&out.stderr));
    (
        std::fs::read_to_string(&path).unwrap(),
        std::fs::read_to_string(path.with_extension("pub")).unwrap(),
    )
}

#[test]
fn ssh() {
    let dir = tempfile::tempdir().unwrap();
    let (ed25519, ed25519_pub) = keygen(dir.path(), "ed", &["-t", "ed25519", "-N", ""]);
    let (encrypted, _) = keygen(dir.path(), "enc", &["-t", "ed25519", "-N", "open sesame"]);
    let (rsa_pem, _) = keygen(dir.path(), "rsa", &["-t", "rsa", "-b", "2048", "-m", "PEM", "-N", ""]);
    let base = [("host", "ssh.example.com"), ("username", "deploy")];
    let with = |extra: &[(&'static str, &str)]| -> Vec<(&str, String)> {
        base.iter().map(|(k, v)| (*k, v.to_string())).chain(extra.iter().map(|(k, v)| (*k, v.to_string()))).collect()
    };
    let run = |fields: Vec<(&str, String)>| {
        let refs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        validate("ssh", None, &refs)
    };
    let ok = run(with(&[("password", "pw 12345")])).unwrap();
    assert_eq!(ok.fields["port"], "22");
    run(with(&[("private_key", &ed25519)])).unwrap();
    run(with(&[("private_key", &rsa_pem)])).unwrap();
    run(with(&[("private_key", &encrypted), ("passphrase", "open sesame")])).unwrap();
    run(with(&[("password", "pw 12345"), ("host_key_fingerprint", "SHA256:Z4/3lQ3YToMJZAi6nDyEy1OT7kLsHE4DB+J0niELzhA")]))
        .unwrap();

    let fields_of = |r: Result<Validated, Vec<FieldError>>| -> Vec<String> {
        let mut f: Vec<String> = r.unwrap_err().into_iter().map(|e| e.field).collect();
        f.sort();
        f
    };
    assert_eq!(fields_of(run(with(&[]))), ["password"], "neither password nor key");
    assert_eq!(fields_of(run(with(&[("private_key", &encrypted)]))), ["passphrase"], "encrypted key, no passphrase");
    assert_eq!(fields_of(run(with(&[("private_key", &ed25519_pub)]))), ["private_key"], "public key pasted");
    let garbage = "-----BEGIN OPENSSH PRIVATE KEY-----\nnot base64 at all!\n-----END OPENSSH PRIVATE KEY-----\n";
    assert_eq!(fields_of(run(with(&[("private_key", garbage)]))), ["private_key"]);
    assert_eq!(fields_of(run(with(&[("password", "pw 12345"), ("port", "70000")]))), ["port"]);
    assert_eq!(fields_of(run(with(&[("password", "pw 12345"), ("host_key_fingerprint", "MD5:aa:bb")]))), ["host_key_fingerprint"]);
    let no_host: Vec<(&str, String)> = vec![("username", "deploy".into()), ("password", "pw 12345".into())];
    assert_eq!(fields_of(run(no_host)), ["host"]);
}

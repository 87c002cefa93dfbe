use super::*;

#[test]
fn accepts_urls() {
    for ok in [
        "postgres://app:pw@db.example.com:5432/app?sslmode=verify-full&connect_timeout=5",
        "postgresql://app:p%40ss%2Fw@10.0.0.1/app",
        "postgresql://app@[::1]:5433/app",
        "postgresql://app:pw@h1:5432,h2:5433/app?target_session_attrs=read-write",
        "postgres:///app?host=/var/run/postgresql&user=app",
        "postgres://app:pw@db",
        "mysql://root:pw@127.0.0.1:3306/shop?ssl-mode=REQUIRED",
        "mariadb://root:pw@db/shop",
        "POSTGRES://app:pw@db/app",
    ] {
        assert_eq!(check(ok), Ok(()), "{ok}");
    }
}

#[test]
fn accepts_key_values() {
    for ok in [
        "host=db.example.com port=5432 dbname=app user=app password=pw sslmode=require",
        r"host = db user = app password = 'it\'s' dbname=app",
        r"host=db user=app password='sp ace \' quote \\ slash'",
        r"host=db user=app password=bare\ escaped",
        "hostaddr=10.0.0.1 user=app port=5432,5433",
        "host=db user=app password=",
    ] {
        assert_eq!(check(ok), Ok(()), "{ok}");
    }
}

#[test]
fn names_the_problem() {
    let cases = [
        (
            "redis://h/0",
            "unsupported scheme redis://; use postgres://",
        ),
        ("jdbc:postgresql://h/db", "JDBC"),
        ("just a string", "must be a URL"),
        ("postgres://app:pw@db:abc/app", "invalid port"),
        ("postgres://app:pw@db:70000/app", "invalid port"),
        (
            "postgres://app:pw@db/app?sslmode=maybe",
            "sslmode must be one of: disable",
        ),
        (
            "mysql://app:pw@db/app?ssl-mode=require",
            "sslmode must be one of: disabled",
        ),
        ("postgres://db/app", "no user name"),
        ("postgres://app:pw@/app", "no host"),
        ("postgres://app:pw@db/app/extra", "single path segment"),
        (
            "postgres://app:p%zz@db/app",
            "percent-escape in the password",
        ),
        ("postgres://app:pw@db/app?sslmode", "name=value"),
        ("mysql://app:pw@h1,h2/app", "one host"),
        ("host=db password=pw", "no user name"),
        ("user=app password=pw", "no host"),
        ("host=db user=app sslmode=on", "sslmode must be one of"),
        ("host=db user=app port=x", "invalid port"),
        ("host=db user=app dbame=x", "unknown keyword dbame"),
        ("host=db user=app password='open", "no closing '"),
    ];
    for (dsn, expect) in cases {
        let err = check(dsn).unwrap_err();
        assert!(err.contains(expect), "{dsn}: {err}");
        assert!(err.starts_with("dsn"), "{err}");
    }
}

/// Whatever goes wrong, no message quotes password text.
#[test]
fn never_quotes_the_password() {
    let secret = "Zq9xSecretW";
    let dsns = [
        format!("postgres://app:{secret}/x@db/app"),
        format!("postgres://app:{secret}?x@db/app"),
        format!("postgres://app:{secret}#x@db/app"),
        format!("postgres://app:{secret}@x@db/app"),
        format!("postgres://app:{secret}@db:{secret}/app"),
        format!("postgres://app:{secret}%@db/app"),
        format!("postgres://{secret}:x@db/app/{secret}"),
        format!("mysql://app:{secret}:1@h1,h2/app"),
        format!("host=db user=app password={secret} more"),
        format!("host=db user=app password=ab {secret}=1"),
        format!("host=db user=app password=ab {}=1", secret.to_lowercase()),
        format!("host=db user=app password='{secret}"),
        format!("host=db user=app {secret}"),
        secret.to_string(),
        format!("{secret}://x"),
    ];
    for dsn in &dsns {
        let err = check(dsn).expect_err(dsn);
        assert!(
            !err.to_lowercase().contains(&secret.to_lowercase()[..6]),
            "{dsn}: {err}"
        );
    }
}

#[test]
fn percent_decoding() {
    assert_eq!(decode("a%20b%2F"), Ok("a b/".into()));
    assert!(decode("%").is_err());
    assert!(decode("%4").is_err());
    assert!(decode("%g0").is_err());
    assert!(decode("%ff").is_err());
}

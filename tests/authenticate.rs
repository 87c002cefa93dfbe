//! `authenticate` (WIT 0.1.1) and the manifests' `[use]` policies, through the real
//! sandbox: each built-in's auth plan, a component built against WIT 0.1.0 (no
//! `authenticate`) still loading and working, hostile plans refused, base URLs resolved
//! per environment or from a field (origin only), and path/method checks that cannot be
//! walked out of.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use credhost::plugins::manifest::PluginOverride;
use credhost::plugins::{
    AuthPlan, Bound, Capability, Manifest, PlanValue, Plugin, PluginError, Registry, Runtime, Sources,
};
use credhost::plugins::{HostServices, ReportedKind};
use secrecy::{ExposeSecret, SecretString};

fn plugin(id: &str) -> Arc<Plugin> {
    common::registry().get(id).unwrap_or_else(|e| panic!("{id}: {e}"))
}

/// A stored credential as the service holds it: clear fields, secrets, environment.
fn bound(env: Option<&str>, fields: &[(&str, &str)], secrets: &[(&str, &str)]) -> Bound {
    Bound {
        environment: env.map(str::to_string),
        fields: fields.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        secrets: secrets.iter().map(|(k, v)| (k.to_string(), SecretString::from(v.to_string()))).collect(),
    }
}

fn plan(p: &Plugin, b: Bound) -> AuthPlan {
    let call = common::registry().runtime().authenticate(p, b);
    assert!(call.events.is_empty(), "{}: authenticate used capabilities: {:?}", p.manifest.id, call.events);
    call.result.unwrap_or_else(|e| panic!("{}: {e}", p.manifest.id))
}

fn field(s: &str) -> PlanValue {
    PlanValue::Field(s.into())
}

fn header(name: &str, v: PlanValue) -> (String, PlanValue) {
    (name.into(), v)
}

fn no_http_use(result: Result<AuthPlan, PluginError>) -> String {
    match result {
        Err(PluginError::Reported { kind: ReportedKind::Unsupported, message, .. }) => message,
        other => panic!("expected `unsupported` (no HTTP use), got {other:?}"),
    }
}

#[test]
fn alpaca_plan_names_its_key_fields() {
    let p = plugin("alpaca");
    let b = bound(Some("paper"), &[("key_id", "PKABCDEFGHIJ0123456789")], &[("secret_key", "s3cr3t-value-xyz")]);
    let got = plan(&p, b);
    assert_eq!(
        got.headers,
        [header("apca-api-key-id", field("key_id")), header("apca-api-secret-key", field("secret_key"))]
    );
    assert!(got.query.is_empty());
    assert_eq!(got.fields(), ["key_id", "secret_key"]);
}

#[test]
fn bearer_plan_follows_header_name_and_prefix() {
    let p = plugin("bearer_token");
    let got = plan(&p, bound(None, &[("header_name", "Authorization"), ("prefix", "Token")], &[("token", "t")]));
    assert_eq!(got.headers, [header("authorization", PlanValue::Template("Token {token}".into()))]);
    // Defaults (no header_name, no prefix stored): `Authorization: Bearer {token}`.
    let got = plan(&p, bound(None, &[], &[("token", "t")]));
    assert_eq!(got.headers, [header("authorization", PlanValue::Template("Bearer {token}".into()))]);
    // An empty prefix sends the bare token, in a header of the user's choice.
    let got = plan(&p, bound(None, &[("header_name", "X-Auth-Token"), ("prefix", "")], &[("token", "t")]));
    assert_eq!(got.headers, [header("x-auth-token", field("token"))]);
}

#[test]
fn http_basic_plan_is_basic_of_both_fields() {
    let got = plan(&plugin("http_basic"), bound(None, &[("username", "ann")], &[("password", "pw")]));
    assert_eq!(
        got.headers,
        [header("authorization", PlanValue::Basic("{username}".into(), "{password}".into()))]
    );
}

#[test]
fn api_key_plan_follows_placement() {
    let p = plugin("api_key");
    let got = plan(&p, bound(None, &[("placement", "query"), ("name", "api_key")], &[("key", "k")]));
    assert!(got.headers.is_empty());
    assert_eq!(got.query, [("api_key".to_string(), field("key"))]);
    let got = plan(&p, bound(None, &[("placement", "header"), ("name", "X-Api-Key")], &[("key", "k")]));
    assert_eq!(got.headers, [header("x-api-key", field("key"))]);
    assert!(got.query.is_empty());
    let got = plan(&p, bound(None, &[], &[("key", "k")]));
    assert_eq!(got.headers, [header("x-api-key", field("key"))], "default placement is a header");
    // A stored placement the type does not know is the plugin's `invalid`, naming the field.
    match common::registry().runtime().authenticate(&p, bound(None, &[("placement", "cookie")], &[])).result {
        Err(PluginError::Reported { kind: ReportedKind::Invalid, message, .. }) => {
            assert!(message.contains("placement"), "{message}")
        }
        other => panic!("expected invalid placement, got {other:?}"),
    }
}

#[test]
fn template_type_plans_its_bearer_header() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../plugins/template");
    let manifest = Manifest::parse(&std::fs::read_to_string(root.join("manifest.toml")).unwrap()).unwrap();
    let wasm = std::fs::read(common::guest_dir().join("template.wasm")).unwrap();
    let p = common::registry().runtime().load(&wasm, manifest, "fixture:template".into()).expect("template loads");
    let got = plan(&p, bound(None, &[("account", "acme")], &[("api_token", "ex_0123456789abcdefghij")]));
    assert_eq!(got.headers, [header("authorization", PlanValue::Template("Bearer {api_token}".into()))]);
    assert_eq!(p.manifest.destination_fields(), ["base_url"]);
}

#[test]
fn ssh_and_db_dsn_have_no_http_use() {
    for (id, b) in [
        ("ssh", bound(None, &[("host", "h"), ("username", "u")], &[("password", "p")])),
        ("db_dsn", bound(None, &[], &[("dsn", "postgres://u:p@h/db")])),
    ] {
        let p = plugin(id);
        let message = no_http_use(common::registry().runtime().authenticate(&p, b).result);
        assert!(message.contains("no HTTP use"), "{id}: {message}");
        assert!(!p.use_policy().is_some_and(|u| u.proxy()), "{id} must not declare a proxy base_url");
    }
    assert!(plugin("ssh").use_policy().is_none());
    let dsn = plugin("db_dsn");
    let policy = dsn.use_policy().expect("db_dsn declares [use] for reveal/exec");
    assert!(policy.reveal && !policy.allows("GET", "/"));
    let env = policy.env_vars(None, None, &BTreeMap::new(), &bound(None, &[], &[("dsn", "postgres://x")]).secrets);
    assert_eq!(env.unwrap()["DATABASE_URL"].expose_secret(), "postgres://x");
}

/// The 0.1.0 fixture: built against the frozen `plugins/fixtures/legacy/wit` (no
/// `authenticate`). It must load into today's runtime and describe/validate/test as before.
#[test]
fn component_built_against_wit_0_1_0_still_loads_and_works() {
    let (manifest, wasm) = common::fixture("legacy");
    let rt = common::registry().runtime();
    let p = rt.load(&wasm, manifest.clone(), "fixture:legacy".into()).expect("0.1.0 component loads");
    assert_eq!(p.descriptor.id, "legacy");
    assert!(!p.has_authenticate());

    let v = rt.validate(&p, bound(None, &[("label", " x ")], &[("token", "tok-123456")])).result.unwrap().unwrap();
    assert_eq!(v.fields["label"], "x");
    assert_eq!(v.secrets["token"].expose_secret(), "tok-123456");

    let report = rt.test(&p, bound(None, &[("label", "x")], &[("token", "tok-123456")])).result.unwrap();
    assert!(report.ok(), "{report:?}");
    assert_eq!(report.facts["wit"], "0.1.0");
    assert_eq!(report.facts["secret_fields"], "token");

    let message = no_http_use(rt.authenticate(&p, bound(None, &[], &[("token", "t")])).result);
    assert!(message.contains("no HTTP use") && message.contains("0.1.0"), "{message}");

    // A manifest giving it a proxy base URL cannot be honoured: refused at load, clearly.
    let mut with_use = manifest;
    with_use.use_policy = Some(
        toml::from_str("base_url = \"https://api.example.com\"\nmethods = [\"GET\"]\npath_prefixes = [\"/\"]").unwrap(),
    );
    match rt.load(&wasm, with_use, "fixture:legacy".into()) {
        Err(PluginError::Load { message, .. }) => assert!(message.contains("authenticate"), "{message}"),
        other => panic!("expected a load error, got {other:?}"),
    }
}

fn hostile_plan(mode: &str) -> Result<AuthPlan, PluginError> {
    let b = bound(None, &[("mode", mode)], &[("secret", "hunter2-very-secret")]);
    common::registry().runtime().authenticate(common::hostile(), b).result
}

#[test]
fn hostile_plans_are_refused_naming_the_header_or_field() {
    for (mode, needle) in [
        ("plan-host", "`host`"),
        ("plan-hop", "`transfer-encoding`"),
        ("plan-length", "`content-length`"),
        ("plan-bad-name", "not a valid header name"),
        ("plan-undeclared", "`password`"),
        ("plan-template", "`password`"),
        ("plan-basic", "`nobody`"),
    ] {
        match hostile_plan(mode) {
            Err(PluginError::Contract { message, .. }) => {
                assert!(message.contains(needle), "{mode}: {message}");
                assert!(message.contains("authenticate"), "{mode}: {message}");
            }
            other => panic!("{mode}: expected the plan to be refused, got {other:?}"),
        }
    }
    // The well-formed plan of the same plugin is accepted.
    assert_eq!(hostile_plan("ok").unwrap().headers, [header("x-token", field("secret"))]);
}

#[test]
fn authenticate_is_offline_and_never_sees_a_secret() {
    for (mode, cap) in [("reveal", Capability::Secrets), ("http", Capability::Http)] {
        let b = bound(None, &[("mode", mode)], &[("secret", "hunter2-very-secret")]);
        let call = common::registry().runtime().authenticate(common::hostile(), b);
        match &call.result {
            Err(PluginError::Reported { kind: ReportedKind::Internal, message, .. }) => {
                assert!(message.contains("Denied"), "{mode}: {message}");
                assert!(!message.contains("hunter2"), "{mode}: {message}");
            }
            other => panic!("{mode}: expected the plugin to report the denial, got {other:?}"),
        }
        assert!(call.events.iter().any(|e| e.capability == cap && !e.allowed), "{mode}: {:?}", call.events);
    }
}

#[test]
fn authenticate_runs_within_the_validate_budget() {
    let started = std::time::Instant::now();
    let limit = common::hostile().manifest.limits.validate_ms;
    match hostile_plan("loop") {
        Err(PluginError::Timeout { limit_ms, .. }) => assert_eq!(limit_ms, limit),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(started.elapsed().as_millis() < u128::from(limit) + 1000);
    assert!(hostile_plan("ok").is_ok(), "the next call works");
}

#[test]
fn alpaca_base_url_follows_the_environment_and_operator_settings() {
    let p = plugin("alpaca");
    let none = BTreeMap::new();
    let m = &p.manifest;
    assert_eq!(m.use_base_url(Some("paper"), &none).unwrap().as_str(), "https://paper-api.alpaca.markets/");
    assert_eq!(m.use_base_url(Some("live"), &none).unwrap().as_str(), "https://api.alpaca.markets/");
    let e = m.use_base_url(None, &none).unwrap_err();
    assert!(e.contains("environment") && e.contains("paper"), "{e}");
    let e = m.use_base_url(Some("demo"), &none).unwrap_err();
    assert!(e.contains("demo"), "{e}");

    // Operators point the settings at a mock (and allow it), as tests do.
    let o: PluginOverride = toml::from_str(
        "settings = { paper_base_url = \"http://127.0.0.1:18080/base/\", live_base_url = \"http://127.0.0.1:18081\" }\n\
         allowed_hosts = [\"http://127.0.0.1:18080\", \"http://127.0.0.1:18081\"]",
    )
    .unwrap();
    let runtime = Arc::new(Runtime::new(HostServices { allow_private_networks: true }).unwrap());
    let reg = Registry::load(runtime, Sources { overrides: BTreeMap::from([("alpaca".into(), o)]), ..Sources::default() })
        .expect("override applies");
    let p = reg.get("alpaca").unwrap();
    assert_eq!(p.manifest.use_base_url(Some("paper"), &none).unwrap().as_str(), "http://127.0.0.1:18080/");
    assert_eq!(p.manifest.use_base_url(Some("live"), &none).unwrap().as_str(), "http://127.0.0.1:18081/");

    // A setting pointed off the allow-list is refused by the one-call resolver.
    let o: PluginOverride = toml::from_str("settings = { paper_base_url = \"https://evil.example\" }").unwrap();
    let mut m2 = (*plugin("alpaca").manifest).clone();
    m2.apply_override(&o).unwrap();
    let e = m2.use_base_url(Some("paper"), &none).unwrap_err();
    assert!(e.contains("allowed hosts") && e.contains("evil.example"), "{e}");

    // exec's variables: the base URL follows the environment too.
    let b = bound(Some("paper"), &[("key_id", "PKABCDEFGHIJ0123456789")], &[("secret_key", "sk-value")]);
    let url = plugin("alpaca").manifest.use_base_url(Some("paper"), &b.fields).unwrap();
    let env = plugin("alpaca").use_policy().unwrap().env_vars(Some(&url), Some("paper"), &b.fields, &b.secrets).unwrap();
    assert_eq!(env["APCA_API_KEY_ID"].expose_secret(), "PKABCDEFGHIJ0123456789");
    assert_eq!(env["APCA_API_SECRET_KEY"].expose_secret(), "sk-value");
    assert_eq!(env["APCA_API_BASE_URL"].expose_secret(), "https://paper-api.alpaca.markets");
    assert!(plugin("alpaca").use_policy().unwrap().reveal);
}

#[test]
fn field_base_url_is_the_origin_of_the_field() {
    for id in ["bearer_token", "http_basic", "api_key"] {
        let p = plugin(id);
        let fields = BTreeMap::from([("test_url".to_string(), "https://API.example.com:8443/v1/me?x=1".to_string())]);
        let url = p.manifest.use_base_url(None, &fields).unwrap();
        assert_eq!(url.as_str(), "https://api.example.com:8443/", "{id}");
        let e = p.manifest.use_base_url(None, &BTreeMap::new()).unwrap_err();
        assert!(e.contains("test_url"), "{id}: {e}");
        assert_eq!(p.manifest.destination_fields(), ["test_url"], "{id}");
        let policy = p.use_policy().unwrap();
        assert!(!policy.reveal, "{id} must not allow reveal");
        assert!(policy.allows("DELETE", "/anything/at/all"), "{id}");
    }
    assert_eq!(plugin("ssh").manifest.destination_fields(), ["host", "port", "host_key_fingerprint"], "the pinned host key binds too");
    assert!(plugin("alpaca").manifest.destination_fields().is_empty(), "alpaca's destinations are settings");
}

#[test]
fn allowed_paths_cannot_be_walked_out_of() {
    let policy = plugin("alpaca").use_policy().unwrap().clone();
    for ok in [("GET", "/v2/positions"), ("get", "/v2/account?x=1"), ("DELETE", "/v2/orders/abc"), ("POST", "/v2")] {
        assert!(policy.allows(ok.0, ok.1), "{ok:?}");
    }
    for bad in [
        ("GET", "/v2/../admin"),
        ("GET", "/v2/%2e%2e/admin"),
        ("GET", "/v2/%2E%2e/admin"),
        ("GET", "/v2/./x"),
        ("GET", "/v2evil"),
        ("GET", "/v2evil/x"),
        ("GET", "/v1/account"),
        ("GET", "/"),
        ("GET", "v2/positions"),
        ("GET", "/v2/..%2fadmin"),
        ("GET", "/v2\\..\\admin"),
        ("GET", "/v2/\nx"),
        ("HEAD", "/v2/positions"),
        ("TRACE", "/v2/positions"),
    ] {
        assert!(!policy.allows(bad.0, bad.1), "{bad:?} must be refused");
    }
}

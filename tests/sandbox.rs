//! The sandbox against a deliberately hostile component: every misbehaviour ends
//! that one call with a typed error, and the next call works.

mod common;

use std::collections::BTreeMap;

use credhost::plugins::{Bound, Capability, PluginError};
use secrecy::SecretString;

fn input(mode: &str) -> Bound {
    Bound {
        environment: None,
        fields: BTreeMap::from([("mode".to_string(), mode.to_string())]),
        secrets: BTreeMap::from([("secret".to_string(), SecretString::from("hunter2-very-secret"))]),
    }
}

/// A well-behaved call right after a hostile one must succeed.
fn assert_still_serving() {
    let call = common::registry().runtime().validate(common::hostile(), input("ok"));
    let validated = call.result.expect("normal call after a hostile one").expect("valid");
    assert_eq!(validated.fields.get("mode").map(String::as_str), Some("ok"));
}

#[test]
fn infinite_loop_is_stopped_by_the_deadline() {
    let started = std::time::Instant::now();
    let call = common::registry().runtime().validate(common::hostile(), input("loop"));
    let limit = common::hostile().manifest.limits.validate_ms;
    match call.result {
        Err(PluginError::Timeout { limit_ms, .. }) => assert_eq!(limit_ms, limit),
        other => panic!("expected a timeout, got {other:?}"),
    }
    let elapsed = started.elapsed().as_millis() as u32;
    assert!(elapsed < limit + 1000, "stopped after {elapsed} ms, budget {limit} ms");
    assert_still_serving();
}

#[test]
fn memory_bomb_traps_at_the_cap() {
    let call = common::registry().runtime().validate(common::hostile(), input("grow"));
    match call.result {
        Err(PluginError::MemoryLimit { limit_mib, .. }) => {
            assert_eq!(limit_mib, common::hostile().manifest.limits.memory_mib)
        }
        other => panic!("expected a memory limit error, got {other:?}"),
    }
    assert_still_serving();
}

#[test]
fn undeclared_capability_is_denied_and_recorded() {
    for (mode, cap) in [("reveal", Capability::Secrets), ("http", Capability::Http)] {
        let call = common::registry().runtime().validate(common::hostile(), input(mode));
        let errors = call.result.expect("plugin survives a denial").expect_err("fixture reports the result");
        let msg = &errors[0].message;
        assert!(msg.contains("Denied"), "{mode}: {msg}");
        assert!(!msg.contains("hunter2"), "{mode}: secret leaked: {msg}");
        let denied: Vec<_> = call.events.iter().filter(|e| !e.allowed).collect();
        assert_eq!(denied.len(), 1, "{mode}: {:?}", call.events);
        assert_eq!(denied[0].capability, cap);
    }
    assert_still_serving();
}

#[test]
fn oversize_output_is_cut_off() {
    let call = common::registry().runtime().validate(common::hostile(), input("huge"));
    match call.result {
        Err(PluginError::OutputTooLarge { size, limit, .. }) => assert!(size > limit),
        other => panic!("expected output too large, got {:?}", other.map(|_| ())),
    }
    assert_still_serving();
}

#[test]
fn guest_panic_is_a_clean_error() {
    let call = common::registry().runtime().validate(common::hostile(), input("panic"));
    assert!(matches!(call.result, Err(PluginError::Trap { .. })), "{:?}", call.result.map(|_| ()));
    assert_still_serving();
}

#[test]
fn sha256_pin_mismatch_is_refused() {
    let (mut manifest, wasm) = common::fixture("hostile");
    manifest.sha256 = Some("0".repeat(64));
    let err = common::registry().runtime().load(&wasm, manifest, "fixture:hostile".into()).unwrap_err();
    assert!(err.to_string().contains("sha256 mismatch"), "{err}");
}

#[test]
fn manifest_id_must_match_describe() {
    let (mut manifest, wasm) = common::fixture("hostile");
    manifest.id = "not_hostile".into();
    let err = common::registry().runtime().load(&wasm, manifest, "fixture:hostile".into()).unwrap_err();
    assert!(err.to_string().contains("describe() says type id `hostile`"), "{err}");
}

#[test]
fn non_component_bytes_are_refused() {
    let (manifest, _) = common::fixture("hostile");
    let err = common::registry().runtime().load(b"\0asm\x01\0\0\0", manifest, "junk".into()).unwrap_err();
    assert!(err.to_string().contains("not a valid component"), "{err}");
}

#[test]
fn debug_output_never_shows_secrets() {
    let b = input("ok");
    let dbg = format!("{b:?}");
    assert!(dbg.contains("secret") && !dbg.contains("hunter2"), "{dbg}");
    let validated = common::registry().runtime().validate(common::hostile(), input("ok")).result.unwrap().unwrap();
    let dbg = format!("{validated:?} {validated:#?}");
    assert!(!dbg.contains("hunter2"), "{dbg}");
}

//! Names, ids, listing filters and the audit log, against the real `credhost` binary over
//! HTTP (issue 13, items 3 and 4): canonical (NFC) names and tags with hidden characters
//! refused, one spelling per id, the 409 for a name a soft-deleted credential holds,
//! listing filters with a total, audit pages with a cursor and filters (a bounded scan per
//! page that resumes from the cursor), and cross-user probes answered like a missing id
//! while an admin sees them.

mod common;

use std::time::{Duration, Instant, SystemTime};

use common::server::{create, id_of, names, random_alnum, world, Api, Env, LeakGuard, Server};
use serde_json::{json, Value};

fn bearer(name: &str, tags: &[&str]) -> Value {
    json!({"name": name, "type": "bearer_token", "tags": tags, "fields": {"token": format!("tok-{}", random_alnum(32))}})
}

fn fields(err: &Value) -> Vec<String> {
    err["error"]["fields"].as_array().map_or_else(Vec::new, |f| {
        f.iter().map(|f| f["field"].as_str().unwrap().to_string()).collect()
    })
}

/// Percent-encodes a query value (every byte outside A-Z a-z 0-9 - _ . ~).
fn enc(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn logs_clean(guard: &LeakGuard, server: &Server) {
    guard.check("server stderr (logs)", &server.stderr());
    guard.check("server stdout", &server.stdout().join("\n"));
    assert!(!server.stderr().contains("panicked"), "{}", server.stderr());
}

/// Names and tags are stored NFC-normalised, so two spellings of one name collide;
/// controls, bidi overrides and zero-width characters are refused naming the field (all
/// problems at once, nothing stored); duplicate tags are dropped and the count capped;
/// only the canonical spelling of an id finds a credential; the 409 for a name held by a
/// soft-deleted credential says how to restore or purge it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_are_canonical_and_ids_have_one_spelling() {
    let w = world().await;
    let (api, alice) = (&w.api, w.alice.as_str());

    // NFD in, NFC stored; the NFC spelling is then taken.
    let decomposed = "cafe\u{301}-prod";
    let c = create(api, alice, bearer(decomposed, &["x", "x", "te\u{301}st", "t\u{e9}st"])).await;
    assert_eq!(c["name"], "caf\u{e9}-prod");
    assert_eq!(c["tags"], json!(["x", "t\u{e9}st"]), "duplicates (after NFC) dropped: {c}");
    let id = id_of(&c);
    let e = api.post("/api/credentials", Some(alice), bearer("caf\u{e9}-prod", &[])).await.expect_error(409, "conflict");
    assert_eq!(fields(&e), ["name"], "{e}");
    assert!(!e["error"]["message"].as_str().unwrap().contains("soft-deleted"), "{e}");

    // Hidden characters: each refused by code point, the name and every bad tag at once.
    for (bad, point) in [
        ("pay\u{202E}lpa", "U+202E"),
        ("a\u{200B}b", "U+200B"),
        ("a\u{2067}b", "U+2067"),
        ("line\nbreak", "U+000A"),
        ("bom\u{FEFF}", "U+FEFF"),
    ] {
        let e = api
            .post("/api/credentials", Some(alice), bearer(bad, &["fine", bad, "a\u{200D}"]))
            .await
            .expect_error(422, "invalid_fields");
        assert_eq!(fields(&e), ["name", "tags[1]", "tags[2]"], "{e}");
        assert!(e["error"]["fields"][0]["message"].as_str().unwrap().contains(point), "{e}");
    }
    let e = api.post("/api/credentials", Some(alice), bearer(" padded", &[])).await.expect_error(422, "invalid_fields");
    assert_eq!(fields(&e), ["name"], "{e}");
    // The cap counts distinct tags: 32 are fine (even given three times), 33 are not.
    let tags: Vec<String> = (0..33).map(|i| format!("t{i}")).collect();
    let tag_refs: Vec<&str> = tags.iter().map(String::as_str).collect();
    let e = api.post("/api/credentials", Some(alice), bearer("many", &tag_refs)).await.expect_error(422, "invalid_fields");
    assert_eq!(fields(&e), ["tags"], "{e}");
    let thrice: Vec<&str> = tag_refs[..32].iter().cycle().take(96).copied().collect();
    let many = create(api, alice, bearer("many", &thrice)).await;
    assert_eq!(many["tags"].as_array().unwrap().len(), 32);
    // PATCH follows the same rules.
    let path = format!("/api/credentials/{id}");
    let e = api.patch(&path, Some(alice), json!({"name": "x\u{202D}y", "tags": ["ok", ""]})).await.expect_error(422, "invalid_fields");
    assert_eq!(fields(&e), ["name", "tags[1]"], "{e}");
    let v = api.patch(&path, Some(alice), json!({"tags": ["b", "b", "a"]})).await;
    v.expect(200);
    assert_eq!(v.json()["tags"], json!(["b", "a"]));
    let e = api.patch(&path, Some(alice), json!({"name": "many"})).await.expect_error(409, "conflict");
    assert_eq!(fields(&e), ["name"], "{e}");
    // Nothing refused was stored, and the credential kept its name.
    let all = api.get("/api/credentials", Some(alice)).await.json();
    assert_eq!(names(&all), ["caf\u{e9}-prod", "many"], "{all}");

    // One spelling per id: the canonical one. Others are 404 everywhere and change nothing.
    let upper = id.to_uppercase();
    let simple = id.replace('-', "");
    for other in [upper.clone(), format!("{{{id}}}"), simple, format!("urn:uuid:{id}"), format!(" {id}")] {
        let p = format!("/api/credentials/{}", enc(&other));
        api.get(&p, Some(alice)).await.expect_error(404, "not_found");
        api.patch(&p, Some(alice), json!({"description": "changed"})).await.expect_error(404, "not_found");
        api.delete(&p, Some(alice)).await.expect_error(404, "not_found");
        api.post_empty(&format!("{p}/restore"), Some(alice)).await.expect_error(404, "not_found");
    }
    let same = api.get(&path, Some(alice)).await;
    same.expect(200);
    assert_eq!(same.json()["description"], "", "a non-canonical id changed the credential");
    assert!(same.json()["deleted_at"].is_null());

    // A name held by a soft-deleted credential: the 409 says so, with its id and the way out.
    api.delete(&path, Some(alice)).await.expect(204);
    let e = api.post("/api/credentials", Some(alice), bearer(decomposed, &[])).await.expect_error(409, "conflict");
    let msg = e["error"]["message"].as_str().unwrap();
    assert!(msg.contains("soft-deleted") && msg.contains(&id), "{e}");
    assert!(msg.contains(&format!("/api/credentials/{id}/restore")) && msg.contains("purge=true"), "{e}");
    assert_eq!(fields(&e), ["name"]);
    // Renaming onto it says the same.
    let many_id = id_of(&many);
    let e = api.patch(&format!("/api/credentials/{many_id}"), Some(alice), json!({"name": decomposed})).await.expect_error(409, "conflict");
    assert!(e["error"]["message"].as_str().unwrap().contains("soft-deleted"), "{e}");
    // Purge frees the name.
    api.delete(&format!("{path}?purge=true"), Some(alice)).await.expect(204);
    create(api, alice, bearer(decomposed, &[])).await;

    logs_clean(&w.guard, &w.server);
}

/// A tiny HTTP service for live tests: `/ok` answers 200 for the good token and 401 for
/// any other, `/flaky` answers 503.
async fn check_service(good: String) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else { return };
            let good = good.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let req = String::from_utf8_lossy(&buf);
                let status = if req.starts_with("GET /flaky") {
                    "503 Service Unavailable"
                } else if req.contains(&format!("Bearer {good}")) {
                    "200 OK"
                } else {
                    "401 Unauthorized"
                };
                let reply = format!("HTTP/1.1 {status}\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{{}}");
                let _ = sock.write_all(reply.as_bytes()).await;
            });
        }
    });
    port
}

/// Listing filters: exact name and prefix (NFC like stored names), last-test status
/// (valid / invalid / indeterminate / untested), deleted-only; a total over all pages;
/// bad filter values are 422s naming the parameter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_filters_by_name_status_and_deletion_with_a_total() {
    let env = Env::new().set("CREDHOST_ALLOW_PRIVATE_NETWORKS", "true");
    let alice = env.add_user("alice", false);
    let bob = env.add_user("bob", false);
    let server = env.start(&[]);
    let guard = LeakGuard::new();
    guard.secret(alice.clone());
    guard.secret(bob.clone());
    let api = server.api(&guard);
    api.learn_secret_fields().await;
    let good = format!("good-{}", random_alnum(24));
    let port = check_service(good.clone()).await;
    let with = |name: &str, token: &str, path: &str| {
        json!({"name": name, "type": "bearer_token",
               "fields": {"token": token, "test_url": format!("http://127.0.0.1:{port}{path}")}})
    };
    let mut ids = std::collections::BTreeMap::new();
    for (name, body) in [
        ("prod-api", with("prod-api", &good, "/ok")),
        ("prod-db", with("prod-db", &format!("bad-{}", random_alnum(20)), "/ok")),
        ("prod-flaky", with("prod-flaky", &good, "/flaky")),
        ("prod-old", bearer("prod-old", &[])),
        ("production", bearer("production", &[])),
        ("staging-x", bearer("staging-x", &["blue"])),
        ("caf\u{e9}", bearer("caf\u{e9}", &[])),
    ] {
        ids.insert(name, id_of(&create(&api, &alice, body).await));
    }
    // Bob's credentials never show in alice's listings or totals.
    create(&api, &bob, bearer("prod-bob", &[])).await;
    for (name, want) in [("prod-api", "valid"), ("prod-db", "invalid"), ("prod-flaky", "indeterminate")] {
        let r = api.post_empty(&format!("/api/credentials/{}/test", ids[name]), Some(&alice)).await;
        r.expect(200);
        assert_eq!(r.json()["status"], want, "{name}: {}", r.text);
        let shown = api.get(&format!("/api/credentials/{}", ids[name]), Some(&alice)).await.json();
        assert_eq!(shown["last_test"]["status"], want, "{shown}");
    }
    api.delete(&format!("/api/credentials/{}", ids["prod-old"]), Some(&alice)).await.expect(204);

    let list = |q: String| {
        let api = api.clone();
        let alice = alice.clone();
        async move {
            let r = api.get(&format!("/api/credentials?{q}"), Some(&alice)).await;
            r.expect(200);
            r.json()
        }
    };
    let all = list(String::new()).await;
    assert_eq!(all["total"], 6, "{all}");
    let cases: Vec<(String, Vec<&str>)> = vec![
        ("name=prod-api".into(), vec!["prod-api"]),
        ("name=prod".into(), vec![]),
        (format!("name={}", enc("cafe\u{301}")), vec!["caf\u{e9}"]),
        ("name_prefix=prod-".into(), vec!["prod-api", "prod-db", "prod-flaky"]),
        ("name_prefix=prod".into(), vec!["prod-api", "prod-db", "prod-flaky", "production"]),
        ("name_prefix=prod-&include_deleted=true".into(), vec!["prod-api", "prod-db", "prod-flaky", "prod-old"]),
        ("deleted_only=true".into(), vec!["prod-old"]),
        ("name_prefix=staging&deleted_only=true".into(), vec![]),
        ("status=valid".into(), vec!["prod-api"]),
        ("status=invalid".into(), vec!["prod-db"]),
        ("status=indeterminate".into(), vec!["prod-flaky"]),
        ("status=untested".into(), vec!["caf\u{e9}", "production", "staging-x"]),
        ("status=untested&name_prefix=st&tag=blue".into(), vec!["staging-x"]),
        ("status=valid&name_prefix=staging".into(), vec![]),
    ];
    for (q, want) in cases {
        let page = list(q.clone()).await;
        assert_eq!(names(&page), want, "{q}: {page}");
        assert_eq!(page["total"], want.len(), "{q}: {page}");
    }

    // Pages: the total is over all of them, whichever page is asked for.
    let first = list("name_prefix=prod&limit=3".into()).await;
    assert_eq!(names(&first), ["prod-api", "prod-db", "prod-flaky"]);
    assert_eq!(first["total"], 4);
    let cursor = first["next_cursor"].as_str().expect("a next page").to_string();
    let second = list(format!("name_prefix=prod&limit=3&cursor={}", enc(&cursor))).await;
    assert_eq!(names(&second), ["production"]);
    assert_eq!(second["total"], 4);
    assert!(second.get("next_cursor").is_none(), "{second}");

    // Bad values name the parameter; the server keeps serving.
    for (q, field) in [
        ("status=broken", "status"),
        ("name_prefix=a%E2%80%AEb", "name_prefix"),
        ("name=%E2%80%8B", "name"),
        ("tag=%0A", "tag"),
        ("cursor=%21%21", "cursor"),
    ] {
        let r = api.get(&format!("/api/credentials?{q}"), Some(&alice)).await;
        let e = r.expect_error(422, "invalid_fields");
        assert_eq!(fields(&e), [field], "{q}: {e}");
    }
    api.get("/api/credentials?deleted_only=maybe", Some(&alice)).await.expect_error(400, "bad_request");
    assert_eq!(list(String::new()).await["total"], 6);

    // Past 64 names in range a listing runs on the blocking pool, below on the request's
    // task: both give the same pages. 70 more: the whole namespace is a long listing, a
    // prefix of a few names a short one.
    for i in 0..70 {
        create(&api, &alice, bearer(&format!("bulk-{i:02}"), &[])).await;
    }
    let long = list("limit=50".into()).await;
    assert_eq!((long["total"].as_u64(), long["items"].as_array().unwrap().len()), (Some(76), 50), "{long}");
    let cursor = long["next_cursor"].as_str().expect("a next page").to_string();
    let rest = list(format!("limit=50&cursor={}", enc(&cursor))).await;
    assert_eq!(rest["items"].as_array().unwrap().len(), 26);
    let mut every = names(&long);
    every.extend(names(&rest));
    assert_eq!(every.len(), 76);
    assert!(every.windows(2).all(|w| w[0] < w[1]), "{every:?}");
    let bulk = list("name_prefix=bulk-&limit=1000".into()).await;
    assert_eq!(bulk["total"], 70);
    let short = list("name_prefix=prod".into()).await;
    assert_eq!(names(&short), ["prod-api", "prod-db", "prod-flaky", "production"]);
    logs_clean(&guard, &server);
}

async fn audit(api: &Api, token: &str, q: &str) -> Value {
    let r = api.get(&format!("/api/audit?{q}"), Some(token)).await;
    r.expect(200);
    r.json()
}

fn seqs(page: &Value) -> Vec<u64> {
    page["items"].as_array().unwrap().iter().map(|r| r["seq"].as_u64().unwrap()).collect()
}

/// Audit pages: following `next_cursor` yields every record once, newest first, even while
/// new records arrive; filters by credential, action (exact or `prefix*`) and time range;
/// bad values are 422s naming the parameter; only admins see everyone's records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_pages_follow_a_cursor_and_filter() {
    let w = world().await;
    let (api, alice, root) = (&w.api, w.alice.as_str(), w.root.as_str());
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(id_of(&create(api, alice, bearer(&format!("early-{i}"), &[])).await));
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    let split = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
    tokio::time::sleep(Duration::from_millis(30)).await;
    for id in &ids[..3] {
        api.patch(&format!("/api/credentials/{id}"), Some(alice), json!({"description": "later"})).await.expect(200);
    }
    api.delete(&format!("/api/credentials/{}", ids[4]), Some(alice)).await.expect(204);

    // The whole log in one page, and the same log in pages of 2 with records added midway.
    let whole = audit(api, alice, "limit=1000").await;
    assert!(whole.get("next_cursor").is_none());
    let want = seqs(&whole);
    assert!(want.len() >= 9, "{whole}");
    let mut got = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let q = match &cursor {
            Some(c) => format!("limit=2&cursor={}", enc(c)),
            None => "limit=2".into(),
        };
        let page = audit(api, alice, &q).await;
        assert!(page["items"].as_array().unwrap().len() <= 2);
        got.extend(seqs(&page));
        pages += 1;
        if pages == 2 {
            // Newer records do not shift the pages that follow.
            create(api, alice, bearer("midway", &[])).await;
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(got, want, "pages give every record once, newest first");

    // Filters.
    let one = audit(api, alice, &format!("credential={}", ids[0])).await;
    let actions: Vec<&str> = one["items"].as_array().unwrap().iter().map(|r| r["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["credential.update", "credential.create"], "{one}");
    let updates = audit(api, alice, "action=credential.update").await;
    assert_eq!(updates["items"].as_array().unwrap().len(), 3, "{updates}");
    let creds = audit(api, alice, "action=credential.*").await;
    assert!(creds["items"].as_array().unwrap().iter().all(|r| r["action"].as_str().unwrap().starts_with("credential.")));
    assert_eq!(creds["items"].as_array().unwrap().len(), 5 + 3 + 1 + 1, "{creds}");
    let later = audit(api, alice, &format!("since={}", enc(&split))).await;
    let later_actions: Vec<&str> = later["items"].as_array().unwrap().iter().map(|r| r["action"].as_str().unwrap()).collect();
    assert_eq!(later_actions.iter().filter(|a| **a == "credential.create").count(), 1, "only `midway`: {later}");
    assert!(later_actions.contains(&"credential.delete") && later_actions.contains(&"credential.update"), "{later}");
    let earlier = audit(api, alice, &format!("until={}&action=credential.*", enc(&split))).await;
    let earlier_actions: Vec<&str> = earlier["items"].as_array().unwrap().iter().map(|r| r["action"].as_str().unwrap()).collect();
    assert_eq!(earlier_actions, ["credential.create"; 5], "{earlier}");
    let combined = audit(api, alice, &format!("since={}&credential={}&limit=1", enc(&split), ids[1])).await;
    assert_eq!(combined["items"][0]["action"], "credential.update");
    assert!(combined.get("next_cursor").is_none(), "{combined}");

    // Bad values: 422 naming the parameter (400 for the unparsable kind, as elsewhere).
    for (q, field) in [
        ("since=yesterday", "since"),
        ("until=2026-13-01T00:00:00Z", "until"),
        ("credential=nope", "credential"),
        ("credential=ABC", "credential"),
        ("action=bad%20action", "action"),
        ("cursor=%21%21", "cursor"),
        ("cursor=c2VxOng", "cursor"),
    ] {
        let e = api.get(&format!("/api/audit?{q}"), Some(alice)).await.expect_error(422, "invalid_fields");
        assert_eq!(fields(&e), [field], "{q}: {e}");
    }
    let e = api.get("/api/audit?since=x&until=y", Some(alice)).await.expect_error(422, "invalid_fields");
    assert_eq!(fields(&e), ["since", "until"], "every bad parameter at once: {e}");
    api.get("/api/audit?limit=-1", Some(alice)).await.expect_error(400, "bad_request");
    api.get("/api/audit?all=true", Some(alice)).await.expect_error(403, "forbidden");
    let e = api.get("/api/audit?all=true&user=alice", Some(root)).await.expect_error(422, "invalid_fields");
    assert_eq!(fields(&e), ["all"]);

    // Admins: another user's records, or everyone's (with system records).
    let hers = audit(api, root, "user=alice&limit=1000").await;
    assert_eq!(seqs(&hers), seqs(&audit(api, alice, "limit=1000").await));
    let everyone = audit(api, root, "all=true&limit=1000").await;
    let actors: std::collections::BTreeSet<&str> =
        everyone["items"].as_array().unwrap().iter().map(|r| r["actor"].as_str().unwrap()).collect();
    assert!(actors.contains("alice") && actors.contains("system"), "{actors:?}");
    logs_clean(&w.guard, &w.server);
}

/// Every record of an audit listing `q`, following `next_cursor` to the end; also how
/// many pages that took and the first page.
async fn audit_all(api: &Api, token: &str, q: &str) -> (Vec<Value>, usize, Value) {
    let (mut items, mut pages, mut first) = (Vec::new(), 0, Value::Null);
    let mut cursor: Option<String> = None;
    loop {
        let page = match &cursor {
            Some(c) => audit(api, token, &format!("{q}&cursor={}", enc(c))).await,
            None => audit(api, token, q).await,
        };
        items.extend(page["items"].as_array().unwrap().iter().cloned());
        pages += 1;
        assert!(pages < 1000, "paging does not end: {page}");
        cursor = page["next_cursor"].as_str().map(String::from);
        if pages == 1 {
            first = page;
        }
        if cursor.is_none() {
            return (items, pages, first);
        }
    }
}

/// One audit page examines at most 1000 records (10 per `limit`, floor 1000): a filter
/// that matches nothing among the newest records (here 1200 of bob's own probes, hidden
/// from him) answers at once with an empty page and a `next_cursor`, and paging on finds
/// the record that lies beyond the cap. The same holds for `all=true` and time filters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_pages_stop_at_the_scan_cap_and_resume_from_the_cursor() {
    const PROBES: usize = 1200;
    let w = world().await;
    let (api, alice, bob, root) = (&w.api, w.alice.as_str(), w.bob.as_str(), w.root.as_str());
    let old = id_of(&create(api, bob, bearer("old", &[])).await);
    let hers = id_of(&create(api, alice, bearer("hers", &[])).await);
    // Bob's probes of alice's id: records in bob's namespace, newer than his `old`.
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..12 {
        let (api, bob, path) = (api.clone(), bob.to_string(), format!("/api/credentials/{hers}"));
        set.spawn(async move {
            for _ in 0..PROBES / 12 {
                api.get(&path, Some(&bob)).await.expect(404);
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    // Probe records are written in the background: wait until the admin sees them all.
    let mut seen = 0;
    for _ in 0..200 {
        seen = audit_all(api, root, "user=bob&action=security.probe&limit=1000").await.0.len();
        if seen >= PROBES {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen, PROBES);

    // Bob's own log: the newest 1000 records are hidden probes, so the first page is empty
    // yet has a cursor, and paging on reaches `old`'s creation and the rest of his log.
    let first = audit(api, bob, "action=credential.create&limit=1").await;
    assert_eq!(first["items"].as_array().unwrap().len(), 0, "{first}");
    assert!(first["next_cursor"].is_string(), "a page cut at the scan cap says to keep paging: {first}");
    let (found, pages, _) = audit_all(api, bob, "action=credential.create&limit=1").await;
    assert_eq!(pages, 2, "1200 hidden records, 1000 per page");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["credential"].as_str(), Some(old.as_str()), "{found:?}");
    // A large page examines more (10 per `limit`): one page is enough there.
    let big = audit(api, bob, "action=credential.create&limit=1000").await;
    assert_eq!(big["items"].as_array().unwrap().len(), 1, "{big}");
    assert!(big.get("next_cursor").is_none(), "{big}");
    // Paging without a filter still gives every visible record once, newest first.
    let (mine, _, _) = audit_all(api, bob, "limit=5").await;
    let seqs: Vec<u64> = mine.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|p| p[0] > p[1]), "{seqs:?}");
    assert!(mine.iter().all(|r| !r["action"].as_str().unwrap().starts_with("security.")));
    assert!(mine.iter().any(|r| r["credential"].as_str() == Some(old.as_str())));

    // Admins over the whole log, and time filters: the same cap, the same cursor.
    let (none, pages, first) = audit_all(api, root, "all=true&action=nothing.here&limit=10").await;
    assert!(none.is_empty() && pages >= 2, "{pages} pages");
    assert!(first["items"].as_array().unwrap().is_empty() && first["next_cursor"].is_string(), "{first}");
    let (future, pages, first) = audit_all(api, root, "user=bob&since=2999-01-01T00:00:00Z&limit=10").await;
    assert!(future.is_empty() && pages >= 2, "{pages} pages");
    assert!(first["next_cursor"].is_string(), "{first}");
    let (past, _, _) = audit_all(api, root, "all=true&until=2000-01-01T00:00:00Z&limit=10").await;
    assert!(past.is_empty());
    let (created, _, _) = audit_all(api, root, &format!("all=true&credential={old}&limit=1")).await;
    assert_eq!(created.iter().map(|r| r["action"].as_str().unwrap()).collect::<Vec<_>>(), ["credential.create"]);
    logs_clean(&w.guard, &w.server);
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// A user naming another user's credential id gets exactly the answer a random id gets
/// (same status and body on every route, no slower), and nothing in their own audit log
/// tells the two apart; an admin finds each probe as `security.probe` (prober, id, owner).
/// Random ids and the owner's own requests record nothing. The host keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_user_probes_look_like_missing_ids_and_admins_see_them() {
    let w = world().await;
    let (api, alice, bob, root) = (&w.api, w.alice.as_str(), w.bob.as_str(), w.root.as_str());
    let theirs = id_of(&create(api, alice, bearer("alices", &[])).await);
    let random = {
        let mut b = [0u8; 16];
        getrandom::fill(&mut b).unwrap();
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
        format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
    };
    let routes: [(&str, &str); 8] = [
        ("GET", ""),
        ("PATCH", ""),
        ("DELETE", ""),
        ("DELETE", "?purge=true"),
        ("POST", "/restore"),
        ("POST", "/test"),
        ("POST", "/validate"),
        ("GET", "/proxy/v1/anything"),
    ];
    let call = |id: String, (method, tail): (&'static str, &'static str)| {
        let api = api.clone();
        let bob = bob.to_string();
        async move {
            let path = format!("/api/credentials/{id}{tail}");
            let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
            let body = if method == "PATCH" {
                common::server::Body::Json(json!({"description": "mine now"}))
            } else {
                common::server::Body::None
            };
            api.request(m, &path, Some(&bob), body).await
        }
    };
    for route in routes {
        let probe = call(theirs.clone(), route).await;
        let missing = call(random.clone(), route).await;
        assert_eq!((probe.status, &probe.text), (missing.status, &missing.text), "{route:?}");
        assert_eq!(probe.status, 404, "{route:?}: {}", probe.text);
    }
    // Timing: the probe's extra work (queueing the event) is not a disk write.
    let (mut probes, mut misses) = (Vec::new(), Vec::new());
    for _ in 0..25 {
        let t = Instant::now();
        call(theirs.clone(), routes[0]).await.expect(404);
        probes.push(t.elapsed());
        let t = Instant::now();
        call(random.clone(), routes[0]).await.expect(404);
        misses.push(t.elapsed());
    }
    let (p, m) = (median(probes), median(misses));
    eprintln!("GET median: cross-user probe {p:?}, missing id {m:?}");
    assert!(p <= m * 3 + Duration::from_millis(2), "probe median {p:?} vs missing-id median {m:?}");

    // Alice's credential is untouched and the host serves her.
    let hers = api.get(&format!("/api/credentials/{theirs}"), Some(alice)).await;
    hers.expect(200);
    assert_eq!(hers.json()["description"], "");

    // The admin sees bob's probes (written in the background: wait briefly).
    let expected = routes.len() + 25;
    let mut found = Value::Null;
    for _ in 0..100 {
        found = audit(api, root, "all=true&action=security.probe&limit=1000").await;
        if found["items"].as_array().unwrap().len() >= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let recs = found["items"].as_array().unwrap();
    assert_eq!(recs.len(), expected, "one record per probe, none for random ids: {found}");
    for r in recs {
        assert_eq!((r["actor"].as_str(), r["credential"].as_str(), r["outcome"].as_str()), (Some("bob"), Some(theirs.as_str()), Some("denied")));
        assert!(r["detail"].as_str().unwrap().contains("owner=alice"), "{r}");
    }
    let by_user = audit(api, root, "user=bob&action=security.*&limit=1000").await;
    assert_eq!(by_user["items"].as_array().unwrap().len(), expected);
    // Bob's own log says nothing that differs between the two ids.
    let own = api.get("/api/audit?limit=1000", Some(bob)).await;
    own.expect(200);
    assert!(!own.text.contains(&theirs) && !own.text.contains("security."), "{}", own.text);
    // Alice's own requests (and her own probe-free log) record no probe.
    api.get(&format!("/api/credentials/{theirs}"), Some(alice)).await.expect(200);
    let all = audit(api, root, "all=true&action=security.probe&limit=1000").await;
    assert_eq!(all["items"].as_array().unwrap().len(), expected);
    assert!(w.server.stderr().contains("security: a caller named another user's credential id"));
    logs_clean(&w.guard, &w.server);
}

/// Waits until the server has loaded its plugins and provisioned the config (`/readyz`).
async fn ready(api: &Api) {
    for _ in 0..600 {
        if api.get("/readyz", None).await.status == 200 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the server never became ready");
}

/// The config file goes through the same name rules: an NFD name and duplicate tags are
/// provisioned in canonical form and found again on the next start (unchanged, no 409);
/// a name with a bidi override is a `check-config` problem naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_provisioning_uses_the_same_name_rules() {
    let guard = LeakGuard::new();
    let token = guard.secret(random_alnum(32));
    let env = Env::new();
    let config = env.dir.path().join("credhost.toml");
    let cfg = config.to_str().unwrap().to_string();
    let text = "[[users]]\nname = \"alice\"\n\n[[credentials]]\nuser = \"alice\"\nname = \"cafe\u{301}\"\ntype = \"bearer_token\"\n\
                tags = [\"ci\", \"ci\", \"te\u{301}st\"]\n[credentials.fields]\ntoken = \"env:LISTINGTEST_TOKEN\"\n";
    std::fs::write(&config, text).unwrap();
    let env = env.set("LISTINGTEST_TOKEN", &token);
    let mut first = env.start(&["--config", &cfg]);
    ready(&first.api(&guard)).await;
    first.stop();
    assert!(first.stderr().contains("created credential `alice/cafe\u{301}`"), "{}", first.stderr());
    let out = env.cli(&["tokens", "create", "alice", "--config", &cfg]);
    let alice = String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or("").trim().to_string();
    assert!(alice.starts_with("chst_"), "tokens create: {}", String::from_utf8_lossy(&out.stderr));
    guard.secret(alice.clone());
    let mut second = env.start(&["--config", &cfg]);
    ready(&second.api(&guard)).await;
    let page = second.api(&guard).get("/api/credentials", Some(&alice)).await.json();
    assert_eq!(names(&page), ["caf\u{e9}"], "{page}");
    assert_eq!(page["items"][0]["tags"], json!(["ci", "t\u{e9}st"]));
    second.stop();
    let log = second.stderr();
    assert!(log.contains("unchanged credential `alice/cafe\u{301}`"), "found again, not re-created: {log}");
    logs_clean(&guard, &second);

    let bad = text.replace("cafe\u{301}", "pay\u{202E}lpa");
    std::fs::write(&config, bad).unwrap();
    let out = env.cli(&["check-config", &cfg]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("field `name`") && stdout.contains("U+202E"), "{stdout}");
}

//! The README's tour runs as written (issue 13, item 9): its shell block is taken from
//! README.md, pointed at a real `credhost serve` on a free port, and run with bash, curl
//! and jq. A tour that stops working fails here.

mod common;

use std::process::Command;

use common::server::Env;

/// The first ```sh block after the tour's heading, without the line that sets the token
/// (the test sets it).
fn tour_block() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).expect("README.md");
    let tour = &readme[readme.find("## A short tour").expect("tour heading")..];
    let start = tour.find("```sh\n").expect("tour code block") + "```sh\n".len();
    let block = &tour[start..];
    let block = &block[..block.find("```").expect("end of block")];
    block.lines().filter(|l| !l.starts_with("export TOKEN=")).collect::<Vec<_>>().join("\n")
}

#[test]
fn the_readme_tour_runs_as_written() {
    for tool in ["bash", "curl", "jq"] {
        let found = Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().unwrap().status.success();
        assert!(found, "`{tool}` is not installed (apt-get install {tool}); the README tour needs it");
    }
    let env = Env::new();
    let token = env.add_user("tourist", true);
    let server = env.start(&[]);
    let addr = server.base.strip_prefix("http://").unwrap();
    let script = format!("set -euo pipefail\n{}\necho \"ID=$ID\"\n", tour_block().replace("localhost:8080", addr));
    let out = Command::new("bash").arg("-c").arg(&script).env("TOKEN", &token).output().expect("run bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tour failed ({}):\n{script}\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines.contains(&"alpaca"), "type listing: {stdout}");
    assert!(lines.contains(&"\"broker\""), "the created credential is listed: {stdout}");
    let id = lines.iter().find_map(|l| l.strip_prefix("ID=")).expect("ID line");
    assert!(uuid_like(id), "create did not answer an id (got {id:?}): {stdout}");
    // The README says what a live test of made-up keys answers.
    assert!(
        lines.iter().any(|l| ["invalid", "indeterminate"].contains(l)),
        "live test outcome of made-up keys: {stdout}"
    );
    assert!(stdout.contains("\"/api/credentials\""), "openapi paths: {stdout}");
}

fn uuid_like(s: &str) -> bool {
    s.len() == 36 && s.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
}

//! The web dashboard in a real browser: `browser/dashboard.mjs` drives Debian's chromium with
//! playwright-core against a real `cairn serve` (and a second one with auth on): a run waiting at
//! a gate appears live, is approved in the page, completes with its graph and timeline; a failed
//! run shows its error and the Retry button completes it; every page renders at 1280×800 and on a
//! phone without a console error. Screenshots land in `target/tmp/dashboard/` (test artifacts).
//!
//! Needs `node`, playwright-core under `CAIRN_TEST_BROWSER_DIR` (default
//! `~/.cache/cairn-ci/browser`) and chromium (`CAIRN_TEST_CHROMIUM`, default `/usr/bin/chromium`);
//! without them the test says so and passes, unless `CAIRN_REQUIRE_BROWSER=1` (as in CI).

mod common;

use common::*;
use std::path::PathBuf;
use std::process::Command;

fn browser_dir() -> Option<PathBuf> {
    let dir = std::env::var("CAIRN_TEST_BROWSER_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/cairn-ci/browser"));
    if dir.join("node_modules/playwright-core/package.json").exists() {
        return Some(dir);
    }
    common::pg::missing(
        "CAIRN_REQUIRE_BROWSER",
        "playwright-core",
        &format!("{} has no node_modules/playwright-core (.ci/run installs it)", dir.display()),
    );
    None
}

fn chromium() -> Option<String> {
    let path = std::env::var("CAIRN_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if std::path::Path::new(&path).exists() {
        return Some(path);
    }
    common::pg::missing(
        "CAIRN_REQUIRE_BROWSER",
        "chromium",
        &format!("{path} does not exist (apt-get install chromium)"),
    );
    None
}

#[test]
fn the_dashboard_shows_runs_live_approves_retries_and_asks_for_a_token_in_a_real_browser() {
    let (Some(dir), Some(chromium)) = (browser_dir(), chromium()) else { return };
    let env = Env::new();
    // The script's own HTTP service (a report uploader that fails until told otherwise, and a
    // notes endpoint a tool writes to) listens on this port.
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
    env.write(
        "cairn.toml",
        &format!(
            "[providers.offline]\ntype = \"mock\"\n\n\
             [[providers.offline.replies]]\nwhen = \"saved\"\nsay = '{{\"final\": \"The note is saved.\"}}'\n\n\
             [[providers.offline.replies]]\nwhen = \"weekly report\"\n\
             say = '{{\"tool\": \"notes\", \"args\": {{\"body\": {{\"text\": \"report ready\"}}}}, \"reason\": \"the task asks for a note\"}}'\n\n\
             [models.quick]\nprovider = \"offline\"\nmodel = \"scripted\"\n\
             input_usd_per_mtok = 0.5\noutput_usd_per_mtok = 1.5\n\n\
             [tools.notes]\ntype = \"http_request\"\nurl = \"http://127.0.0.1:{port}/notes\"\nmethod = \"POST\"\n\
             description = \"Save a note for the team\"\n"
        ),
    );
    let server = env.serve(&[]);
    // The same database behind a second server that wants tokens.
    let out = env.run(&["tokens", "create", "--role", "operator", "--name", "browser"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let token = stdout(&out).trim().to_string();
    let guarded = env.serve(&["--auth", "on", "--no-worker"]);
    let shots = std::env::var("CAIRN_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard"));
    // Screenshots from an earlier run must not pass for this one's.
    let _ = std::fs::remove_dir_all(&shots);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser/dashboard.mjs");
    let out = Command::new("node")
        .arg(&script)
        .env("CAIRN_URL", server.url())
        .env("CAIRN_AUTH_URL", guarded.url())
        .env("CAIRN_TOKEN", &token)
        .env("CAIRN_SERVICE_PORT", port.to_string())
        .env("CAIRN_BROWSER_DIR", &dir)
        .env("CAIRN_CHROMIUM", chromium)
        .env("CAIRN_SHOTS", &shots)
        .output()
        .expect("run node (Node.js is required for the browser test)");
    let said = format!("{}{}", stdout(&out), stderr(&out));
    assert!(out.status.success(), "the browser test failed:\n{said}");
    assert!(said.contains("dashboard: all checks passed"), "{said}");
    for page in [
        "runs",
        "approvals",
        "run",
        "run-failed",
        "tool-approval",
        "agent",
        "workflows",
        "models",
        "runs-phone",
        "run-phone",
    ] {
        let png = shots.join(format!("{page}.png"));
        let bytes = std::fs::read(&png).unwrap_or_else(|e| panic!("{}: {e}", png.display()));
        assert!(bytes.starts_with(b"\x89PNG") && bytes.len() > 5_000, "{} is not a screenshot", png.display());
    }
}

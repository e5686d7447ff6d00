//! A fresh PostgreSQL database per test, for the tests that run the binary against PostgreSQL.

use std::process::Command;

pub fn base_url() -> String {
    std::env::var("CAIRN_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A fresh database for this test, dropped at the end; `None` (after a notice) without PostgreSQL.
pub struct Database {
    pub url: String,
    pub name: String,
}

/// A test needs something this machine may not have (PostgreSQL, a tmpfs): without it the test
/// says so and passes — unless `required_by` is set to `1` (as in CI), then it fails.
pub fn missing(required_by: &str, what: &str, why: &str) {
    assert!(std::env::var(required_by).as_deref() != Ok("1"), "{what} is required ({required_by}=1) but {why}");
    eprintln!("NOTICE: skipping a test that needs {what}: {why}");
}

/// PostgreSQL answers at `base_url()`; otherwise see [`missing`].
pub fn reachable() -> bool {
    let base = base_url();
    match Command::new("psql").args([base.as_str(), "-qAtc", "SELECT 1"]).output() {
        Ok(o) if o.status.success() => true,
        other => {
            let why = match other {
                Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
                Err(e) => e.to_string(),
            };
            missing("CAIRN_REQUIRE_POSTGRES", "PostgreSQL", &format!("{base} is unreachable ({why})"));
            false
        }
    }
}

impl Database {
    pub fn create(tag: &str) -> Option<Database> {
        if !reachable() {
            return None;
        }
        let base = base_url();
        let name = format!("cairn_{tag}_{}", std::process::id());
        let psql = |sql: &str| Command::new("psql").args([base.as_str(), "-qAtc", sql]).output();
        let _ = psql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
        let out = psql(&format!("CREATE DATABASE {name}")).expect("psql");
        assert!(out.status.success(), "CREATE DATABASE failed: {}", String::from_utf8_lossy(&out.stderr));
        let url = match base.rsplit_once('/') {
            Some((server, _)) => format!("{server}/{name}"),
            None => panic!("CAIRN_TEST_POSTGRES should end with /DATABASE: {base}"),
        };
        Some(Database { url, name })
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([base_url().as_str(), "-qAtc", &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)])
            .output();
    }
}

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

impl Database {
    pub fn create(tag: &str) -> Option<Database> {
        let base = base_url();
        let name = format!("cairn_{tag}_{}", std::process::id());
        let psql = |sql: &str| Command::new("psql").args([base.as_str(), "-qAtc", sql]).output();
        match psql("SELECT 1") {
            Ok(o) if o.status.success() => {}
            other => {
                let why = match other {
                    Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
                    Err(e) => e.to_string(),
                };
                assert!(
                    std::env::var("CAIRN_REQUIRE_POSTGRES").as_deref() != Ok("1"),
                    "PostgreSQL is required (CAIRN_REQUIRE_POSTGRES=1) but unreachable at {base}: {why}"
                );
                eprintln!("NOTICE: skipping a PostgreSQL test: {base} unreachable ({why})");
                return None;
            }
        }
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

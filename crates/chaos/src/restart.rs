//! The schedule's database restart, as the processes using the database see one: every
//! connection to it is cut at once (`pg_terminate_backend`), and each must reconnect. Only the
//! workload's own database is touched, never another one on the same server.

/// Cuts every other connection to the database at `url`; how many were cut.
pub async fn cut_connections(url: &str) -> Result<u64, String> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("cannot connect to {url}: {e}"))?;
    let driver = tokio::spawn(connection);
    let row = client
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| format!("cannot cut the connections: {e}"))?;
    driver.abort();
    Ok(row.get::<_, i64>(0).max(0) as u64)
}

//! What the store tells the process's metrics recorder about its commits: how long each group
//! commit took and how many writes it carried. Without a recorder installed (`cairn run`, the
//! benchmarks) these are no-ops.

use std::time::Duration;

/// A group commit that succeeded.
pub(crate) fn committed(backend: &'static str, writes: usize, took: Duration) {
    metrics::histogram!("cairn_store_commit_seconds", "backend" => backend).record(took.as_secs_f64());
    metrics::histogram!("cairn_store_commit_group_size", "backend" => backend).record(writes as f64);
}

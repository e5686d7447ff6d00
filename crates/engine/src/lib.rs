//! Cairn's engine: drives runs. For each run it feeds events to the pure core's `decide`, journals
//! what was decided in one transaction (group-committed with other runs), and only then performs
//! the effects: starting activities, arming timers.
//!
//! **Invariant: an activity starts only after its `AttemptStarted` is committed, and a result is
//! journaled only by the process that still owns the run (the store fences on journal position
//! and owner).** A crash at any point therefore loses at most an attempt in flight, which resume
//! reports as an interrupted (transient) failure and retries under the step's policy.

pub mod activity;
pub mod breakers;
pub mod calls;
mod children;
pub mod context;
mod definitions;
pub mod diff;
mod driver;
mod engine;
mod http;
pub mod kinds;
pub mod log;
pub mod metrics;
pub mod models;
#[cfg(feature = "otel")]
pub mod otel;
pub mod planner;
mod providers;
mod requests;
pub mod secrets;
pub mod tls;
mod tokens;
pub mod tools;
mod waiting;

pub use cairn_core::links::{RunLink, RunLinks};
pub use engine::{Delta, Driving, Engine, EngineConfig, ForkChanges, NewRun, Notice, RunOutcome, Submit};
pub use requests::{Control, Delivery, EscalationChoice, Raise, RequestView, check_signal_name};
pub use waiting::{WaitingApproval, waiting_approvals};

use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] cairn_store::Error),
    #[error("run {run_id}: journal does not fold: {source}")]
    Journal { run_id: String, source: cairn_core::state::Error },
    #[error("run {0} is owned by another live process; wait for it, or for its lease to expire")]
    Owned(String),
    #[error("run {run_id} was taken over by another process; this process stopped driving it")]
    Lost { run_id: String },
    #[error("{0}")]
    Invalid(String),
    /// The request is not legal for the run's current state (pause a finished run ...).
    #[error("{0}")]
    Illegal(String),
    /// An operator request was refused when its turn came; `code` is stable (`already_paused`,
    /// `not_waiting` ...), `message` says why and what to do instead.
    #[error("{message}")]
    Refused { code: &'static str, message: String },
}

static CLOCK_OFFSET_MS: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

/// Wall-clock milliseconds by the database's clock (this host's clock plus the offset the engine
/// measured against the store), so leases and timers mean the same on every host. The engine is
/// the only place that reads the clock; the time travels into the core inside events.
pub fn now_ms() -> i64 {
    let local = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
    local + CLOCK_OFFSET_MS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Sets the offset `now_ms` adds to this host's clock.
pub fn set_clock_offset(ms: i64) {
    CLOCK_OFFSET_MS.store(ms, std::sync::atomic::Ordering::Relaxed);
}

/// A fresh run id (time-ordered, 80 random bits).
pub fn new_run_id() -> cairn_core::RunId {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    let hi = h.finish();
    let mut h2 = std::collections::hash_map::RandomState::new().build_hasher();
    h2.write_u64(hi);
    let random = ((hi as u128) << 64) | h2.finish() as u128;
    cairn_core::RunId::from_parts(now_ms() as u64, random)
}

/// This host's name, for lease owners.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// An owner id `host:pid:nonce` for this process.
pub fn owner_id() -> String {
    let nonce = new_run_id();
    format!("{}:{}:{}", hostname(), std::process::id(), &nonce.as_str()[19..])
}

/// True if the owner is a process on this host that no longer exists, so its runs can be
/// resumed without waiting for the lease to expire.
pub fn owner_is_dead(owner: &str) -> bool {
    let mut parts = owner.rsplitn(3, ':');
    let (_nonce, pid, host) = (parts.next(), parts.next(), parts.next());
    match (host, pid.and_then(|p| p.parse::<u32>().ok())) {
        (Some(h), Some(pid)) if h == hostname() => {
            pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        }
        _ => false,
    }
}

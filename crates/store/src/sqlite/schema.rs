//! The SQLite schema, as ordered migrations (`PRAGMA user_version` counts those applied).

pub const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE runs (
    id TEXT PRIMARY KEY,
    workflow TEXT NOT NULL,
    definition_version INTEGER,
    status TEXT NOT NULL,
    goal TEXT,
    current_step TEXT,
    failure_class TEXT,
    failure_message TEXT,
    failed_step TEXT,
    last_seq INTEGER NOT NULL,
    owner TEXT,
    lease_expires_at INTEGER,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    finished_at INTEGER,
    definition_hash TEXT,
    output_hash TEXT,
    artifact TEXT,
    wake_at INTEGER,
    retain_until INTEGER
);
CREATE INDEX runs_by_status ON runs(status, created_at);
CREATE INDEX runs_by_created ON runs(created_at, id);
-- Only runs nobody holds have a wake time (see writer.rs), so driving a run never touches this index.
CREATE INDEX runs_by_wake ON runs(wake_at) WHERE wake_at IS NOT NULL;
CREATE TABLE steps (
    run_id TEXT NOT NULL,
    step_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    not_before INTEGER,
    started_at INTEGER,
    finished_at INTEGER,
    busy_ms INTEGER NOT NULL,
    error_class TEXT,
    error_message TEXT,
    output_hash TEXT,
    skip_reason TEXT,
    PRIMARY KEY (run_id, step_id)
) WITHOUT ROWID;
-- gid orders the all-runs event feed; AUTOINCREMENT so ids are never reused after gc.
CREATE TABLE events (
    gid INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    at INTEGER NOT NULL,
    kind TEXT NOT NULL,
    schema INTEGER NOT NULL,
    step_id TEXT,
    body TEXT NOT NULL,
    UNIQUE (run_id, seq)
);
CREATE TABLE payloads (
    hash TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    body BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE run_payloads (
    run_id TEXT NOT NULL,
    hash TEXT NOT NULL,
    PRIMARY KEY (run_id, hash)
) WITHOUT ROWID;
CREATE TABLE logs (
    run_id TEXT NOT NULL,
    step_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    at INTEGER NOT NULL,
    level TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX logs_by_run ON logs(run_id, step_id);
CREATE TABLE idempotency (
    key TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX idempotency_by_run ON idempotency(run_id);
CREATE TABLE workflows (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    definition_hash TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (name, version)
) WITHOUT ROWID;
CREATE TABLE tokens (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    actor TEXT NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    status INTEGER NOT NULL,
    run_id TEXT
);
CREATE TABLE inbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX inbox_by_run ON inbox(run_id);
"#,
    // 2: the effect log — the result of each side-effecting call, kept before its step completes.
    r#"
CREATE TABLE effects (
    key TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    at INTEGER NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX effects_by_run ON effects(run_id);
"#,
    // 3: requests are answered, not deleted: each keeps what became of it (applied with the
    // journal position that records it, unchanged, or refused with the reason), written in the
    // same transaction as the events that apply it. And the processes that work runs for anyone.
    r#"
ALTER TABLE inbox ADD COLUMN state TEXT NOT NULL DEFAULT 'pending';
ALTER TABLE inbox ADD COLUMN code TEXT;
ALTER TABLE inbox ADD COLUMN message TEXT;
ALTER TABLE inbox ADD COLUMN journal_seq INTEGER;
ALTER TABLE inbox ADD COLUMN decided_at INTEGER;
CREATE INDEX inbox_pending ON inbox(run_id, id) WHERE state = 'pending';
CREATE TABLE workers (
    owner TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    started_at INTEGER NOT NULL,
    seen_at INTEGER NOT NULL
) WITHOUT ROWID;
"#,
    // 4: calls made inside an attempt, one row per position (`run/step/call-N`): a retried or
    // resumed attempt gets recorded results back in order instead of calling again.
    r#"
CREATE TABLE calls (
    run_id TEXT NOT NULL,
    step TEXT NOT NULL,
    n INTEGER NOT NULL,
    kind TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    outcome TEXT NOT NULL,
    hash TEXT,
    error TEXT,
    attempt INTEGER NOT NULL,
    duration_ms INTEGER NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY (run_id, step, n)
);
"#,
    // 5: what model calls cost, recorded with their results, and what a budgeted call reserved
    // before it was sent (`outcome = 'reserved'` until it is settled).
    r#"
ALTER TABLE calls ADD COLUMN model TEXT;
ALTER TABLE calls ADD COLUMN tokens_in INTEGER;
ALTER TABLE calls ADD COLUMN tokens_out INTEGER;
ALTER TABLE calls ADD COLUMN cost_usd REAL;
ALTER TABLE calls ADD COLUMN reserved_usd REAL;
ALTER TABLE calls ADD COLUMN reserved_tokens INTEGER;
CREATE INDEX calls_priced_at ON calls(at) WHERE model IS NOT NULL;
"#,
    // 6: the opt-in cache of model answers across runs (`cache: {ttl}`), by the hash of the
    // canonical request; entries past `expires_at` are never returned and go with `gc`.
    r#"
CREATE TABLE response_cache (
    key TEXT PRIMARY KEY,
    answer TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX response_cache_expiry ON response_cache(expires_at);
"#,
    // 7: tasks for external workers, one per attempt of an external step, named by its fencing
    // token; `ready` ones wait in their queue, `claimed` ones are held under a lease.
    r#"
CREATE TABLE tasks (
    token TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    step TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    queue TEXT NOT NULL,
    kind TEXT NOT NULL,
    input TEXT NOT NULL,
    deadline_at INTEGER,
    state TEXT NOT NULL,
    worker TEXT,
    lease_expires_at INTEGER,
    created_at INTEGER NOT NULL,
    output TEXT,
    error_class TEXT,
    error_message TEXT,
    retry_after_ms INTEGER
) WITHOUT ROWID;
CREATE INDEX tasks_ready ON tasks(queue, created_at) WHERE state = 'ready';
CREATE INDEX tasks_by_run ON tasks(run_id);
"#,
];

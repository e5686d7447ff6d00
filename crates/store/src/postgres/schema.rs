//! The PostgreSQL schema, kept in step with the SQLite one (same tables, same meaning); the
//! applied version lives in `cairn_meta`.

pub const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE runs (
    id TEXT PRIMARY KEY,
    workflow TEXT NOT NULL,
    definition_version BIGINT,
    status TEXT NOT NULL,
    goal TEXT,
    current_step TEXT,
    failure_class TEXT,
    failure_message TEXT,
    failed_step TEXT,
    last_seq BIGINT NOT NULL,
    owner TEXT,
    lease_expires_at BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    finished_at BIGINT,
    definition_hash TEXT,
    output_hash TEXT,
    artifact TEXT,
    wake_at BIGINT,
    retain_until BIGINT
);
CREATE INDEX runs_by_status ON runs(status, created_at);
CREATE INDEX runs_by_created ON runs(created_at, id);
CREATE INDEX runs_by_wake ON runs(wake_at) WHERE wake_at IS NOT NULL;
CREATE INDEX runs_by_owner ON runs(owner) WHERE owner IS NOT NULL;
CREATE TABLE steps (
    run_id TEXT NOT NULL,
    step_id TEXT NOT NULL,
    position BIGINT NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    not_before BIGINT,
    started_at BIGINT,
    finished_at BIGINT,
    busy_ms BIGINT NOT NULL,
    error_class TEXT,
    error_message TEXT,
    output_hash TEXT,
    skip_reason TEXT,
    PRIMARY KEY (run_id, step_id)
);
CREATE TABLE events (
    gid BIGSERIAL PRIMARY KEY,
    run_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    at BIGINT NOT NULL,
    kind TEXT NOT NULL,
    schema BIGINT NOT NULL,
    step_id TEXT,
    body TEXT NOT NULL,
    UNIQUE (run_id, seq)
);
CREATE TABLE payloads (
    hash TEXT PRIMARY KEY,
    size BIGINT NOT NULL,
    body BYTEA NOT NULL
);
CREATE TABLE run_payloads (
    run_id TEXT NOT NULL,
    hash TEXT NOT NULL,
    PRIMARY KEY (run_id, hash)
);
CREATE TABLE logs (
    id BIGSERIAL PRIMARY KEY,
    run_id TEXT NOT NULL,
    step_id TEXT NOT NULL,
    attempt BIGINT NOT NULL,
    at BIGINT NOT NULL,
    level TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX logs_by_run ON logs(run_id, step_id);
CREATE TABLE idempotency (
    key TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX idempotency_by_run ON idempotency(run_id);
CREATE TABLE workflows (
    name TEXT NOT NULL,
    version BIGINT NOT NULL,
    definition_hash TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TABLE tokens (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE TABLE audit (
    id BIGSERIAL PRIMARY KEY,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    status BIGINT NOT NULL,
    run_id TEXT
);
CREATE TABLE inbox (
    id BIGSERIAL PRIMARY KEY,
    run_id TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX inbox_by_run ON inbox(run_id);
"#,
    // 2: the effect log — the result of each side-effecting call, kept before its step completes.
    r#"
CREATE TABLE effects (
    key TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    at BIGINT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX effects_by_run ON effects(run_id);
"#,
    // 3: requests are answered, not deleted (see the SQLite schema); serving/working processes.
    r#"
ALTER TABLE inbox ADD COLUMN state TEXT NOT NULL DEFAULT 'pending';
ALTER TABLE inbox ADD COLUMN code TEXT;
ALTER TABLE inbox ADD COLUMN message TEXT;
ALTER TABLE inbox ADD COLUMN journal_seq BIGINT;
ALTER TABLE inbox ADD COLUMN decided_at BIGINT;
CREATE INDEX inbox_pending ON inbox(run_id, id) WHERE state = 'pending';
CREATE TABLE workers (
    owner TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    seen_at BIGINT NOT NULL
);
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
    duration_ms BIGINT NOT NULL,
    at BIGINT NOT NULL,
    PRIMARY KEY (run_id, step, n)
);
"#,
    // 5: what model calls cost, recorded with their results, and what a budgeted call reserved
    // before it was sent (`outcome = 'reserved'` until it is settled).
    r#"
ALTER TABLE calls ADD COLUMN model TEXT;
ALTER TABLE calls ADD COLUMN tokens_in BIGINT;
ALTER TABLE calls ADD COLUMN tokens_out BIGINT;
ALTER TABLE calls ADD COLUMN cost_usd DOUBLE PRECISION;
ALTER TABLE calls ADD COLUMN reserved_usd DOUBLE PRECISION;
ALTER TABLE calls ADD COLUMN reserved_tokens BIGINT;
CREATE INDEX calls_priced_at ON calls(at) WHERE model IS NOT NULL;
"#,
    // 6: the opt-in cache of model answers across runs (`cache: {ttl}`), by the hash of the
    // canonical request; entries past `expires_at` are never returned and go with `gc`.
    r#"
CREATE TABLE response_cache (
    key TEXT PRIMARY KEY,
    answer TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
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
    attempt BIGINT NOT NULL,
    queue TEXT NOT NULL,
    kind TEXT NOT NULL,
    input TEXT NOT NULL,
    deadline_at BIGINT,
    state TEXT NOT NULL,
    worker TEXT,
    lease_expires_at BIGINT,
    created_at BIGINT NOT NULL,
    output TEXT,
    error_class TEXT,
    error_message TEXT,
    retry_after_ms BIGINT
);
CREATE INDEX tasks_ready ON tasks(queue, created_at) WHERE state = 'ready';
CREATE INDEX tasks_by_run ON tasks(run_id);
"#,
];

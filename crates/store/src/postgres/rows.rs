//! PostgreSQL rows to Cairn's types, and the column lists the queries select in that order.

use crate::{Error, RequestOutcome, RequestRow, RequestState, RunRow, StepRow, TokenRow};
use cairn_core::{Envelope, Event, RunId};
use tokio_postgres::Row;

/// A count or position as PostgreSQL's BIGINT.
pub(super) fn i(v: u64) -> i64 {
    v as i64
}
pub(super) const RUN_COLUMNS: &str = "id, workflow, definition_version, status, goal, current_step, failure_class, failure_message, \
     failed_step, last_seq, owner, lease_expires_at, created_at, updated_at, finished_at, definition_hash, output_hash, \
     artifact, wake_at, retain_until";

pub(super) fn run_row(r: &Row) -> RunRow {
    RunRow {
        id: r.get(0),
        workflow: r.get(1),
        definition_version: r.get::<_, Option<i64>>(2).map(|v| v as u32),
        status: r.get(3),
        goal: r.get(4),
        current_step: r.get(5),
        failure_class: r.get(6),
        failure_message: r.get(7),
        failed_step: r.get(8),
        last_seq: r.get::<_, i64>(9) as u64,
        owner: r.get(10),
        lease_expires_at_ms: r.get(11),
        created_at_ms: r.get(12),
        updated_at_ms: r.get(13),
        finished_at_ms: r.get(14),
        definition_hash: r.get(15),
        output_hash: r.get(16),
        artifact: r.get(17),
        wake_at_ms: r.get(18),
        retain_until_ms: r.get(19),
    }
}

pub(super) fn step_row(r: &Row) -> StepRow {
    StepRow {
        step_id: r.get(0),
        position: r.get::<_, i64>(1) as u32,
        kind: r.get(2),
        status: r.get(3),
        attempts: r.get::<_, i64>(4) as u32,
        not_before_ms: r.get(5),
        started_at_ms: r.get(6),
        finished_at_ms: r.get(7),
        busy_ms: r.get::<_, i64>(8) as u64,
        error_class: r.get(9),
        error_message: r.get(10),
        output_hash: r.get(11),
        skip_reason: r.get(12),
    }
}

pub(super) const REQUEST_COLUMNS: &str = "id, run_id, body, created_at, state, code, message, journal_seq, decided_at";

pub(super) fn request_row(r: &Row) -> Result<RequestRow, Error> {
    let id: i64 = r.get(0);
    let state: String = r.get(4);
    let state =
        RequestState::parse(&state).ok_or_else(|| Error::Corrupt(format!("request {id} has state '{state}'")))?;
    Ok(RequestRow {
        id,
        run_id: r.get(1),
        body: r.get(2),
        accepted_at_ms: r.get(3),
        outcome: RequestOutcome {
            id,
            state,
            code: r.get(5),
            message: r.get(6),
            journal_seq: r.get::<_, Option<i64>>(7).map(|s| s as u64),
            decided_at_ms: r.get(8),
        },
    })
}
pub(super) fn token_row(r: &Row) -> TokenRow {
    TokenRow {
        id: r.get(0),
        name: r.get(1),
        role: r.get(2),
        hash: r.get(3),
        created_at_ms: r.get(4),
        revoked_at_ms: r.get(5),
    }
}

pub(super) fn envelope(run: &str, r: &Row, offset: usize) -> Result<Envelope, Error> {
    let seq: i64 = r.get(offset);
    let body: String = r.get(offset + 3);
    let event: Event = serde_json::from_str(&body)
        .map_err(|e| Error::Corrupt(format!("run {run} event {seq} does not parse: {e}")))?;
    Ok(Envelope { seq: seq as u64, at_ms: r.get(offset + 1), schema: r.get::<_, i64>(offset + 2) as u16, event })
}

pub(super) fn parse_id(s: &str) -> Result<RunId, Error> {
    RunId::parse(s).map_err(Error::Corrupt)
}

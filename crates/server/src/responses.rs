//! The error answers as OpenAPI response components: each status's codes, described once with
//! realistic examples, and referred to by the operations that can answer them
//! (`responses((status = 404, response = RunNotFound))`). All share the one `Error` schema.

use serde_json::{Value, json};
use utoipa::ToResponse;
use utoipa::openapi::example::ExampleBuilder;
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Response, ResponseBuilder};

fn error_response(description: &str, examples: &[(&str, &str, Value)]) -> RefOr<Response> {
    let content = ContentBuilder::new()
        .schema(Some(Ref::from_schema_name("Error")))
        .examples_from_iter(examples.iter().map(|(code, message, details)| {
            let value = json!({"error": {"code": code, "message": message, "details": details}});
            (code.to_string(), ExampleBuilder::new().summary(code.to_string()).value(Some(value)).build())
        }))
        .build();
    ResponseBuilder::new().description(description).content("application/json", content).into()
}

macro_rules! error_responses {
    ($($(#[$doc:meta])* $name:ident = $description:literal [$(($code:literal, $message:expr, $details:tt)),+ $(,)?])+) => {
        $(
            $(#[$doc])*
            pub struct $name;

            impl<'s> ToResponse<'s> for $name {
                fn response() -> (&'s str, RefOr<Response>) {
                    (stringify!($name), error_response($description, &[$(($code, $message, json!($details))),+]))
                }
            }
        )+

        /// Every error response, for the document's `components.responses`.
        pub fn all() -> Vec<(&'static str, RefOr<Response>)> {
            vec![$(<$name as ToResponse>::response()),+]
        }
    };
}

const RUN: &str = "wf_01KBC6X8Y2S7J5W0Q3R4T5V6X7";

error_responses! {
    /// 400: the request is malformed (syntax, a path or query value, a header).
    BadRequest = "The request is malformed: broken JSON (`malformed_json`, with line and column), an empty or unreadable body (`empty_body`, `unreadable_body`, `malformed_body`), a bad path or query value (`bad_run_id`, `bad_path`, `bad_query`, `bad_cursor`, `bad_signal_name`), or a bad header (`bad_idempotency_key`, `bad_last_event_id`)." [
        ("malformed_json", "the body is not valid JSON: EOF while parsing an object at line 1 column 9", {"line": 1, "column": 9}),
        ("bad_run_id", "'run-42' is not a run id: run ids look like wf_01JB8Z3K4Q5R6S7T8V9W0XYZAB", null),
        ("bad_query", "limit 0 is out of range: use 1 to 500", null),
        ("empty_body", "the request body is empty: send a JSON object", null),
    ]
    /// 401: auth is on and the request has no valid bearer token.
    Unauthorized = "Auth is on and the request carries no valid bearer token (`unauthorized`): send `Authorization: Bearer <token>`." [
        ("unauthorized", "send `Authorization: Bearer <token>`; create one with `cairn tokens create --role viewer`", null),
    ]
    /// 403: the token's role is below what the route needs.
    Forbidden = "The token's role is below the one the operation needs (`forbidden`; see `x-cairn-role`), or the token is not among a gate's approvers (`not_an_approver`)." [
        ("forbidden", "this needs the operator role; token 'dashboard' is viewer", null),
    ]
    /// 404: the run does not exist.
    RunNotFound = "No run has this id (`run_not_found`)." [
        ("run_not_found", format!("no run with id {RUN}; `cairn runs list` shows the runs in this database").as_str(), null),
    ]
    /// 404: the run or its step does not exist.
    StepNotFound = "No run has this id (`run_not_found`), or the run has no such step (`step_not_found`)." [
        ("step_not_found", format!("run {RUN} has no step 'send_emial'").as_str(), null),
        ("run_not_found", format!("no run with id {RUN}; `cairn runs list` shows the runs in this database").as_str(), null),
    ]
    /// 404: no such registered workflow (or version).
    WorkflowNotFound = "No workflow is registered under this name, or not at this version (`workflow_not_found`)." [
        ("workflow_not_found", "no workflow named 'summary-and-emial'; `GET /v1/workflows` lists the registered ones", null),
    ]
    /// 404: no such token.
    TokenNotFound = "No live token has this id or name (`token_not_found`)." [
        ("token_not_found", "no live token with id or name 'tok_5f1c2a9e07b3d846'; `cairn tokens list` (or `GET /v1/tokens`) shows them", null),
    ]
    /// 404: no task has the token.
    TaskNotFound = "No task has this token (`task_not_found`): use the token a claim answered with." [
        ("task_not_found", "no task has this token; use the token a claim answered with", null),
    ]
    /// 408: the body did not arrive in time.
    RequestTimeout = "The request body did not arrive within `--body-timeout` of its head (`body_timeout`)." [
        ("body_timeout", "the request body did not arrive within 30s of its head (see --body-timeout)", null),
    ]
    /// 409: the run's state does not allow the request.
    RunConflict = "The run's state does not allow this, and the code names why: `illegal_transition`, `run_finished`, `already_paused`, `not_paused`, `not_pausable`, `run_compensating`, `not_waiting`, `no_such_step` (no such step waits for a decision), `already_decided` (the step was decided otherwise, or is no longer waiting), `wrong_decision` (the decision does not fit what the step waits for), `stale_decision` (the step has asked again since the request the decision names), `invalid_request` (the request cannot apply when its turn comes); or another process holds the run (`run_busy`, `run_conflict`: retry)." [
        ("run_finished", format!("run {RUN} already finished (COMPLETED); nothing can change it now").as_str(), null),
        ("already_paused", format!("run {RUN} is already paused; `cairn runs unpause {RUN}` resumes it").as_str(), null),
        ("illegal_transition", format!("run {RUN} is COMPLETED; only a FAILED run can be retried").as_str(), null),
    ]
    /// 409: the workflow version exists with other content.
    VersionExists = "This workflow version is registered with other content (`version_exists`): bump `version`." [
        ("version_exists", "workflow 'summary-and-email' version 1 is already registered with a different definition; raise `version`", null),
    ]
    /// 409: a live token has the name, or several do.
    TokenConflict = "A live token already has this name (`token_name_taken`), or several live tokens share it (`ambiguous_token_name`: revoke by id)." [
        ("token_name_taken", "a live token is already named 'ci' (tok_5f1c2a9e07b3d846); pick another name, or revoke tok_5f1c2a9e07b3d846 first", {"name": "ci", "id": "tok_5f1c2a9e07b3d846"}),
        ("ambiguous_token_name", "'ci' names 2 live tokens (tok_5f1c2a9e07b3d846, tok_0a9b8c7d6e5f4a3b); revoke one by its id", {"name": "ci", "ids": ["tok_5f1c2a9e07b3d846", "tok_0a9b8c7d6e5f4a3b"]}),
    ]
    /// 409: the token no longer holds its task.
    StaleToken = "The token no longer holds its task, and nothing changed (`stale_token`; `details.state` says where the task went: `lost` when its lease lapsed, `cancelled` when its run was cancelled or its attempt superseded, `done`/`failed` when already settled); or a durable call's request differs from the one recorded at its position (`call_divergence`)." [
        ("stale_token", "this token no longer holds its task: its lease lapsed and the attempt was given up (it may be retried under a new token); nothing changed", {"state": "lost"}),
        ("call_divergence", "call 2 was recorded with request hash 3f5a but is now made with 9c1d: the worker's code or input changed; the task cannot go on from the record", {"n": 2, "recorded": "3f5a", "now": "9c1d"}),
    ]
    /// 413: the body is over the limit.
    PayloadTooLarge = "The body is larger than `--max-body-bytes` (`body_too_large`); a declared `Content-Length` over it is refused before any of the body is read." [
        ("body_too_large", "the request declares a 2000000-byte body; the server accepts at most 1048576 bytes (see --max-body-bytes)", {"declared": 2_000_000, "limit": 1_048_576}),
    ]
    /// 415: a content type the operation does not take.
    UnsupportedMediaType = "The body's `Content-Type` is not one the operation takes (`unsupported_media_type`)." [
        ("unsupported_media_type", "expected Content-Type: application/json, got text/plain", null),
    ]
    /// 422: the body is well-formed but does not fit.
    InvalidBody = "The body is well-formed JSON that does not fit the operation: an unknown field, a wrong type or a missing field (`invalid_request`, with line and column)." [
        ("invalid_request", "the body does not fit: unknown field `reson`, expected `reason` at line 1 column 8", {"line": 1, "column": 8}),
    ]
    /// 422: what to run is not something that can run.
    InvalidRun = "What to run does not fit: not exactly one of `goal` and `workflow`, or a bad field (`invalid_request`); a goal the planner cannot plan (`unplannable_goal`); `planner: model` with no model configured (`no_planner_model`); an inline definition with problems (`invalid_definition`, each in `details`); inputs the definition does not declare or lacks (`unknown_inputs`, `missing_inputs`); an `Idempotency-Key` used for another request or still being answered (`idempotency_key_reused`, `idempotency_in_progress`)." [
        ("unknown_inputs", "workflow 'summary-and-email' does not declare input 'tpoic' (did you mean 'topic'?); it declares: topic", {"unknown": ["tpoic"], "suggestions": {"tpoic": "topic"}, "declared": ["topic"], "missing": []}),
        ("unplannable_goal", "no recipe or step in the catalog matches the goal 'xyzzy'", null),
        ("invalid_request", "give exactly one of `goal` (a goal to plan) or `workflow` (a name or a definition)", null),
        ("idempotency_key_reused", format!("Idempotency-Key 'order-42' was used for a different request (run {RUN})").as_str(), {"run_id": RUN}),
    ]
    /// 422: a rerun or retry the run cannot do.
    InvalidFork = "The body does not fit (`invalid_request`), or the run cannot be forked from that step (`invalid_request`, saying why)." [
        ("invalid_request", format!("run {RUN} has no step 'publsh'").as_str(), null),
    ]
    /// 422: a decision that does not apply.
    InvalidDecision = "The decision is not one of `approve`, `reject` (a gate) or `retry`, `skip`, `abort` (an escalation) (`bad_decision`); `skip` without `output` (`missing_output`); `output` with anything but `skip` (`unexpected_output`); `budget` with anything but `retry` (`unexpected_budget`); `args` with anything but `approve` (`unexpected_args`); edited `args` that do not fit the waiting tool's input schema (`invalid_args`); or the body does not fit, or asks to raise the budget of a step that did not stop at one (`invalid_request`)." [
        ("bad_decision", "decision 'maybe' is not approve, reject (a gate) or retry, skip, abort (an escalation)", null),
        ("missing_output", "`skip` needs the step's `output` (any JSON)", null),
    ]
    /// 422: a workflow definition with problems.
    InvalidDefinition = "The definition has problems (`invalid_definition`): `details` lists each with its line and column." [
        ("invalid_definition", "the workflow definition has 1 problem(s); see details", ["<request.yaml>:4:11: step `b`: needs unknown step `c`"]),
    ]
    /// 422: a token request that does not fit.
    InvalidToken = "The role is not `viewer`, `worker`, `operator` or `admin` (`bad_role`), the name is not allowed (`bad_name`), or the body does not fit (`invalid_request`)." [
        ("bad_role", "role 'root' is not one of viewer, worker, operator, admin", null),
        ("bad_name", "token name 'tok_1' starts with `tok_`, which would read as a token id; pick another", null),
    ]
    /// 422: a worker request that does not fit.
    InvalidWorkerRequest = "The body does not fit (`invalid_request`): an unknown or missing field, a value out of range (`max_tasks`, `wait_ms`, `lease_ms`, `n`), a name that is not one (`queues`, `kinds`, `name`), a failure class a worker cannot report, or an output nested too deep." [
        ("invalid_request", "`class` `approval_required` is not one of transient, timeout, rate_limited, permanent, malformed_output", null),
    ]
    /// 503: the server cannot answer now.
    Unavailable = "The server cannot answer now; retry shortly: every connection is busy (`too_many_connections`), the database is busy, unreachable or its disk is full (`database_busy`, `database_unavailable`, `disk_full`), the planner model does not answer (`planner_unavailable`), or the server is shutting down (`shutting_down`; `/readyz` answers `draining`, or `not_ready` when the database does not answer)." [
        ("too_many_connections", "every connection is busy; retry shortly (the server's --max-connections is reached)", null),
        ("database_unavailable", "the database is unreachable (connection refused)", null),
    ]
    /// 500: the server failed.
    Internal = "The server or its database failed (`store_error`, `journal_error`, `internal`); the message says what." [
        ("store_error", "database error: disk I/O error", null),
    ]
}

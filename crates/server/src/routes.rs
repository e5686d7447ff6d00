//! The one table of routes. Each entry registers a handler at the path and methods its
//! `#[utoipa::path]` declares and puts that operation into `/openapi.json`, so the router and
//! the description cannot drift apart: nothing is routed that is not described, and nothing is
//! described that is not routed. (The dashboard's static files, `ui.rs`, are not API routes and
//! are added beside this table.)

use crate::{
    AppState, admin, approvals, diff, graphql, lineage, metrics, openapi, probes, providers, runs, stream, tasks,
    tools, workers, workflows,
};
use axum::Router;
use axum::handler::Handler;
use axum::routing::{MethodFilter, MethodRouter};
use cairn_store::Store;
use utoipa::openapi::RefOr;
use utoipa::openapi::path::{HttpMethod, Operation};
use utoipa::openapi::schema::Schema;

/// What an entry contributes to the document, read when the document is built (once).
pub struct Described {
    pub path: fn() -> String,
    pub methods: fn() -> Vec<HttpMethod>,
    pub operation: fn() -> Operation,
    pub schemas: fn(&mut Vec<(String, RefOr<Schema>)>),
}

pub struct Routes<S: Store> {
    pub router: Router<AppState<S>>,
    pub described: Vec<Described>,
}

fn filter(method: &HttpMethod) -> MethodFilter {
    match method {
        HttpMethod::Get => MethodFilter::GET,
        HttpMethod::Post => MethodFilter::POST,
        HttpMethod::Put => MethodFilter::PUT,
        HttpMethod::Delete => MethodFilter::DELETE,
        HttpMethod::Patch => MethodFilter::PATCH,
        HttpMethod::Head => MethodFilter::HEAD,
        HttpMethod::Options => MethodFilter::OPTIONS,
        HttpMethod::Trace => MethodFilter::TRACE,
    }
}

impl<S: Store> Routes<S> {
    /// Routes `handler` as the operation `P` (the `__path_*` type `#[utoipa::path]` generates
    /// for it) describes. `SchemaReferences` is utoipa's hook (in its `__dev` module, as
    /// utoipa-axum's `routes!` uses it) listing the schemas an operation refers to; utoipa-axum
    /// itself is not used because its macro cannot name generic handlers.
    fn add<P, H, T>(mut self, _: P, handler: H) -> Self
    where
        P: utoipa::Path + utoipa::__dev::SchemaReferences,
        H: Handler<T, AppState<S>>,
        T: 'static,
    {
        let methods =
            P::methods().iter().fold(MethodRouter::new(), |router, method| router.on(filter(method), handler.clone()));
        self.router = self.router.route(&P::path(), methods);
        self.described.push(Described {
            path: P::path,
            methods: P::methods,
            operation: P::operation,
            schemas: P::schemas,
        });
        self
    }
}

/// Every route of the API.
pub fn table<S: Store>() -> Routes<S> {
    Routes { router: Router::new(), described: Vec::new() }
        .add(runs::__path_create, runs::create::<S>)
        .add(runs::__path_list, runs::list::<S>)
        .add(runs::__path_get, runs::get::<S>)
        .add(runs::__path_steps, runs::steps::<S>)
        .add(runs::__path_step, runs::step::<S>)
        .add(runs::__path_logs, runs::logs::<S>)
        .add(runs::__path_events, runs::events::<S>)
        .add(stream::__path_run_stream, stream::run_stream::<S>)
        .add(runs::__path_export, runs::export::<S>)
        .add(runs::__path_cancel, runs::cancel::<S>)
        .add(runs::__path_pause, runs::pause::<S>)
        .add(runs::__path_resume, runs::resume::<S>)
        .add(runs::__path_signal, runs::signal::<S>)
        .add(runs::__path_requests, runs::requests::<S>)
        .add(diff::__path_diff, diff::diff::<S>)
        .add(lineage::__path_context, lineage::context::<S>)
        .add(approvals::__path_decide, approvals::decide::<S>)
        .add(runs::__path_rerun, runs::rerun::<S>)
        .add(runs::__path_retry, runs::retry::<S>)
        .add(approvals::__path_list, approvals::list::<S>)
        .add(providers::__path_list, providers::list::<S>)
        .add(tools::__path_list, tools::list::<S>)
        .add(stream::__path_all_stream, stream::all_stream::<S>)
        .add(workflows::__path_register, workflows::register::<S>)
        .add(workflows::__path_list, workflows::list::<S>)
        .add(workflows::__path_get, workflows::get::<S>)
        .add(admin::__path_create_token, admin::create_token::<S>)
        .add(admin::__path_list_tokens, admin::list_tokens::<S>)
        .add(admin::__path_revoke_token, admin::revoke_token::<S>)
        .add(admin::__path_audit, admin::audit::<S>)
        .add(workers::__path_claim, workers::claim::<S>)
        .add(workers::__path_heartbeat, workers::heartbeat::<S>)
        .add(workers::__path_complete, workers::complete::<S>)
        .add(workers::__path_fail, workers::fail::<S>)
        .add(workers::__path_call, workers::call::<S>)
        .add(tasks::__path_create, tasks::create::<S>)
        .add(tasks::__path_get, tasks::get::<S>)
        .add(tasks::__path_steps, tasks::steps::<S>)
        .add(probes::__path_healthz, probes::healthz)
        .add(metrics::__path_metrics, metrics::metrics::<S>)
        .add(graphql::__path_query, graphql::query::<S>)
        .add(graphql::__path_schema_text, graphql::schema_text)
        .add(probes::__path_readyz, probes::readyz::<S>)
        .add(openapi::__path_document, openapi::document::<S>)
}

//! `cairn serve` (HTTP API + workers) and `cairn worker` (workers only), with graceful shutdown:
//! the first SIGTERM/Ctrl-C stops taking work, lets attempts in flight finish (up to a
//! deadline) and releases leases; a second one exits at once, and the next start resumes.

use crate::run::EngineArgs;
use crate::{CliError, CliResult, DbArgs};
use cairn_core::catalog::Catalog;
use cairn_engine::{Engine, EngineConfig};
use cairn_server::{AppState, AuthMode, Limits, ServerConfig};
use cairn_store::{Access, AnyStore, Journal, Retention};
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

#[derive(Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Runs this process drives at once.
    #[arg(long, default_value_t = 512)]
    pub max_runs: usize,
    /// Activities one run may have in flight (fairness across runs).
    #[arg(long, default_value_t = 8)]
    pub max_per_run: usize,
    /// On shutdown, how long attempts in flight may take to finish.
    #[arg(long, default_value = "10s")]
    pub shutdown_timeout: String,
    /// Delete finished runs older than this (per-workflow `retention` wins); `0` keeps them.
    #[arg(long, default_value = "30d")]
    pub retention: String,
    /// How often retention runs.
    #[arg(long, default_value = "10m")]
    pub gc_every: String,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464). `cairn serve` has
    /// them at /metrics of its API already.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,
}

#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on: IP:PORT or HOST:PORT (a host name binds its first IPv4 address, else
    /// its first address). Anything but loopback turns auth on unless --auth off.
    #[arg(long, env = "CAIRN_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// `auto` (on unless listening on loopback), `on`, or `off`.
    #[arg(long, default_value = "auto")]
    pub auth: String,
    /// Largest request body accepted, in bytes.
    #[arg(long, default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Most connections open at once (at least 4). Idle ones make room for new ones; the last
    /// eighth is kept for /healthz, /readyz and requests with a valid token when all are busy.
    #[arg(long, default_value_t = 512)]
    pub max_connections: usize,
    /// How long a client may take to send a request's head; also how long a keep-alive
    /// connection may stay idle.
    #[arg(long, default_value = "10s")]
    pub header_timeout: String,
    /// How long a client may take to send a request's whole body, from its head.
    #[arg(long, default_value = "30s")]
    pub body_timeout: String,
    /// Extra step templates for goals (YAML), on top of the built-in catalog.
    #[arg(long)]
    pub catalog: Option<PathBuf>,
    /// Serve the API only: runs are left to `cairn worker` processes sharing the database.
    #[arg(long)]
    pub no_worker: bool,
    #[command(flatten)]
    pub worker: WorkerArgs,
}

fn duration(flag: &str, text: &str) -> CliResult<Duration> {
    cairn_core::duration::parse_ms(text)
        .map(Duration::from_millis)
        .map_err(|e| CliError::usage(format!("--{flag}: {e}")))
}

fn engine_config(args: &WorkerArgs) -> EngineConfig {
    let mut config: EngineConfig = args.engine.config();
    config.max_runs = args.max_runs.max(1);
    config.max_per_run = args.max_per_run.max(1);
    config.release_when_idle_ms = Some(1_000);
    // The MCP servers' tools are listed at start-up (in the background: a slow server does not
    // hold the process up; a step that needs one waits for it).
    let tools = config.tools.clone();
    tokio::spawn(async move {
        tools.connect_all().await;
        for (server, why) in tools.unavailable() {
            cairn_engine::say!("[tools] mcp.{server}: its tools are not available yet: {why}");
        }
    });
    config
}

/// Resolves on the first SIGTERM or SIGINT; a second one exits the process at once. The
/// handlers are installed when this is called, not when the future is first polled, so call it
/// before announcing that the process is up: a signal that arrives right after the announcement
/// must drain, not kill.
fn first_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let handlers = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()));
        async move {
            let (Ok(mut term), Ok(mut int)) = handlers else {
                std::future::pending::<()>().await;
                return;
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tokio::spawn(async move {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
                cairn_engine::say!("cairn: second signal, exiting now (interrupted runs resume on the next start)");
                std::process::exit(130);
            });
        }
    }
    #[cfg(not(unix))]
    {
        async move {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// The tasks a working process runs beside its drivers.
struct Background {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Background {
    fn start(engine: &Engine<AnyStore>, store: Arc<AnyStore>, args: &WorkerArgs, work: bool) -> CliResult<Background> {
        let mut tasks = vec![engine.spawn_heartbeat()];
        if work {
            tasks.push(engine.spawn_worker());
        }
        tasks.extend(spawn_gc(store, args)?);
        Ok(Background { tasks })
    }

    /// Drains the engine (see [`drain`]) and stops the background tasks.
    async fn stop(self, engine: &Engine<AnyStore>, timeout: Duration) {
        drain(engine, timeout).await;
        for t in self.tasks {
            t.abort();
        }
    }
}

fn spawn_gc(store: Arc<AnyStore>, args: &WorkerArgs) -> CliResult<Option<tokio::task::JoinHandle<()>>> {
    let retention = duration("retention", &args.retention)?;
    let every = duration("gc-every", &args.gc_every)?.max(Duration::from_secs(1));
    if retention.is_zero() {
        return Ok(None);
    }
    Ok(Some(tokio::spawn(async move {
        loop {
            match store.gc(cairn_engine::now_ms(), retention.as_millis() as u64, false).await {
                Ok(r) if r.runs > 0 => {
                    cairn_engine::say!(
                        "[gc] deleted {} finished runs, {} events, {} payloads",
                        r.runs,
                        r.events,
                        r.payloads
                    )
                }
                Ok(_) => {}
                Err(e) => cairn_engine::say!("[gc] failed: {e}"),
            }
            tokio::time::sleep(every).await;
        }
    })))
}

/// Stops taking work, waits for drivers (up to the deadline), then releases this process's leases.
async fn drain(engine: &Engine<AnyStore>, timeout: Duration) {
    engine.drain();
    let deadline = Instant::now() + timeout;
    while engine.active_runs() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = engine.active_runs();
    match engine.release().await {
        Ok(n) => cairn_engine::say!(
            "cairn: stopped; released {n} lease(s){}",
            if left > 0 { format!(", {left} run(s) cut off") } else { String::new() }
        ),
        Err(e) => cairn_engine::say!("cairn: stopped, but releasing leases failed ({e}); they expire on their own"),
    }
}

/// `--listen` as one address: an IP address and port, or a host name (resolved here) and port.
/// Of a name's addresses the first IPv4 one is bound, else the first.
async fn listen_addr(flag: &str, text: &str) -> CliResult<SocketAddr> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    let malformed = || {
        CliError::usage(format!("{flag} '{text}' is not host:port (e.g. 127.0.0.1:8080, localhost:8080 or [::1]:8080)"))
    };
    let (host, port) = text.rsplit_once(':').ok_or_else(malformed)?;
    if host.is_empty() || host.contains(':') || port.parse::<u16>().is_err() {
        return Err(malformed());
    }
    let found: Vec<SocketAddr> = tokio::net::lookup_host(text)
        .await
        .map_err(|e| CliError::usage(format!("{flag} '{text}': cannot resolve host '{host}': {e}")))?
        .collect();
    found
        .iter()
        .find(|a| a.is_ipv4())
        .or(found.first())
        .copied()
        .ok_or_else(|| CliError::usage(format!("{flag} '{text}': host '{host}' resolves to no address")))
}

fn limits(args: &ServeArgs) -> CliResult<Limits> {
    if args.max_connections < Limits::MIN_CONNECTIONS {
        return Err(CliError::usage(format!(
            "--max-connections {} is too low: at least {} (some are kept for health probes)",
            args.max_connections,
            Limits::MIN_CONNECTIONS
        )));
    }
    let positive = |flag: &str, text: &str| {
        let d = duration(flag, text)?;
        if d.is_zero() { Err(CliError::usage(format!("--{flag} must be more than 0 (e.g. 10s)"))) } else { Ok(d) }
    };
    Ok(Limits {
        max_connections: args.max_connections,
        header_timeout: positive("header-timeout", &args.header_timeout)?,
        body_timeout: positive("body-timeout", &args.body_timeout)?,
    })
}

pub async fn serve(db: &DbArgs, args: ServeArgs) -> CliResult {
    let listen = listen_addr("--listen", &args.listen).await?;
    let limits = limits(&args)?;
    let auth = match args.auth.as_str() {
        "auto" if listen.ip().is_loopback() => AuthMode::Off,
        "auto" | "on" => AuthMode::On,
        "off" => AuthMode::Off,
        other => return Err(CliError::usage(format!("--auth '{other}' is not auto, on or off"))),
    };
    if auth == AuthMode::Off && !listen.ip().is_loopback() {
        cairn_engine::say!(
            "cairn: WARNING: auth is off while listening on {listen}: anyone who can reach it can control runs"
        );
    }
    let shutdown_timeout = duration("shutdown-timeout", &args.worker.shutdown_timeout)?;
    let mut catalog = Catalog::builtin().map_err(|e| CliError::env(format!("built-in catalog is broken: {e}")))?;
    if let Some(path) = &args.catalog {
        let text = std::fs::read_to_string(path)
            .map_err(|e| CliError::usage(format!("cannot read {}: {e}", path.display())))?;
        catalog.merge(Catalog::from_yaml(&text, &path.display().to_string()).map_err(CliError::usage)?);
    }
    if let Some(model) = &crate::config::get().models.default_model {
        catalog.with_model(model);
    }
    let store = Arc::new(db.open().await?);
    if auth == AuthMode::On && store.tokens().await?.iter().all(|t| t.revoked_at_ms.is_some()) {
        cairn_engine::say!(
            "cairn: auth is on and no token exists yet: create one with `cairn tokens create --role admin`"
        );
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let mut config = engine_config(&args.worker);
    config.role = "serve";
    if args.no_worker {
        // Requests are recorded and the runs handed straight back to the workers.
        config.release_when_idle_ms = None;
    }
    let engine = Engine::new(store.clone(), config, Some(tx));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let config =
        ServerConfig { auth, drive_here: !args.no_worker, max_body_bytes: args.max_body_bytes.max(1024), catalog };
    let state = AppState::new(engine.clone(), Some(rx), config, shutdown_rx);
    if let Some(files) = cairn_server::raise_fd_limit() {
        let wanted = limits.max_connections as u64 + 64;
        if files < wanted {
            cairn_engine::say!(
                "cairn: WARNING: this process may open only {files} files, fewer than --max-connections {} needs \
                 with room for the database ({wanted}): lower --max-connections or raise `ulimit -n`",
                limits.max_connections
            );
        }
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| CliError::env(format!("cannot listen on {listen}: {e}")))?;
    let addr = listener.local_addr().map_err(|e| CliError::env(e.to_string()))?;
    let background = Background::start(&engine, store.clone(), &args.worker, !args.no_worker)?;
    let signal = first_signal();
    cairn_engine::say!(
        "cairn serve: listening on http://{addr} (auth {}; {})",
        if auth == AuthMode::On { "on" } else { "off" },
        store.describe()
    );
    let signalled = {
        let shutdown_tx = shutdown_tx.clone();
        let engine = engine.clone();
        async move {
            signal.await;
            cairn_engine::say!(
                "cairn: shutting down: no new work; finishing attempts in flight (up to {shutdown_timeout:?})"
            );
            engine.drain();
            let _ = shutdown_tx.send(true);
        }
    };
    if let Err(e) = cairn_server::serve_with(listener, state, limits, signalled).await {
        cairn_engine::say!("cairn: the HTTP server stopped: {e}");
    }
    background.stop(&engine, shutdown_timeout).await;
    Ok(())
}

pub async fn worker(db: &DbArgs, args: WorkerArgs) -> CliResult {
    let shutdown_timeout = duration("shutdown-timeout", &args.shutdown_timeout)?;
    let store = Arc::new(db.open().await?);
    let engine = Engine::new(store.clone(), engine_config(&args), None);
    // The metrics listener is set up (and the recorder installed) before any run is claimed: a
    // bad address claims nothing, and the first commits are counted.
    let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    if let Some(addr) = &args.metrics_listen {
        let addr = listen_addr("--metrics-listen", addr).await?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| CliError::env(format!("--metrics-listen: cannot listen on {addr}: {e}")))?;
        let bound = listener.local_addr().map_err(|e| CliError::env(format!("--metrics-listen {addr}: {e}")))?;
        if !bound.ip().is_loopback() {
            cairn_engine::say!(
                "cairn: WARNING: metrics on {bound} are readable by anyone who can reach it (workflow, model and tool names; no run data)"
            );
        }
        cairn_server::install_recorder();
        cairn_engine::say!("cairn worker: metrics at http://{bound}/metrics");
        let engine = engine.clone();
        tokio::spawn(async move {
            let stopped = async move {
                let _ = metrics_stopped.await;
            };
            if let Err(e) = cairn_server::serve_metrics(listener, engine, stopped).await {
                cairn_engine::say!("cairn worker: the metrics listener stopped: {e}");
            }
        });
    }
    let background = Background::start(&engine, store.clone(), &args, true)?;
    let signal = first_signal();
    cairn_engine::say!("cairn worker: {} ({}), up to {} runs", engine.owner(), store.describe(), args.max_runs);
    signal.await;
    let _ = stop_metrics.send(());
    cairn_engine::say!("cairn: shutting down: no new work; finishing attempts in flight (up to {shutdown_timeout:?})");
    background.stop(&engine, shutdown_timeout).await;
    Ok(())
}

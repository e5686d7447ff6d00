//! The accept loop behind `cairn serve`: one HTTP/1 connection per socket, with the limits
//! `axum::serve` lacks, so that idle or slow clients cannot take the server down before auth.
//!
//! - A request head must arrive whole within `header_timeout` of the connection opening or of
//!   its previous response; the same bound closes idle keep-alive connections.
//! - A request body must arrive whole within `body_timeout` of its head. It is a total, not a
//!   gap between bytes, so a body that trickles is cut off too; the answer is a 408.
//! - At most `max_connections` sockets are open. A new connection beyond the regular slots
//!   displaces the connection idle longest (open, no request in flight): an idle socket serves
//!   nobody, and a client whose keep-alive connection closes simply opens another. When every
//!   regular connection is busy, a small reserve takes one request per connection and serves it
//!   only if it is a probe (`/healthz`, `/readyz`) or carries a valid bearer token (auth on);
//!   anything else there gets a 503 at once. Beyond the reserve a socket is closed on accept.
//! - Accept errors such as running out of file descriptors close an idle connection and back
//!   off briefly; they never end the loop.

use crate::AppState;
use crate::auth::AuthMode;
use crate::error::ApiError;
use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use axum::response::IntoResponse;
use cairn_core::payload::sha256_hex;
use cairn_store::Store;
use hyper::body::{Body as HttpBody, Bytes, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper::service::Service;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

/// Connection limits (see the module doc). The defaults leave room for the database's files
/// under the common 1,024 open-file limit.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Sockets open at once, the reserve included; at least [`Limits::MIN_CONNECTIONS`].
    pub max_connections: usize,
    /// Time to send a request head; also the longest a keep-alive connection may sit idle.
    pub header_timeout: Duration,
    /// Time to send a whole request body, counted from its head.
    pub body_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_connections: 512, header_timeout: Duration::from_secs(10), body_timeout: Duration::from_secs(30) }
    }
}

impl Limits {
    /// Two regular slots and two reserved ones.
    pub const MIN_CONNECTIONS: usize = 4;

    /// Slots kept for probes and authenticated requests when all others are busy: an eighth of
    /// the connections, at least two.
    pub fn reserve(&self) -> usize {
        (self.max_connections.max(Self::MIN_CONNECTIONS) / 8).max(2)
    }

    fn regular(&self) -> usize {
        self.max_connections.max(Self::MIN_CONNECTIONS) - self.reserve()
    }
}

/// Raises this process's soft open-file limit to its hard limit, so that the connection cap, not
/// a low default, decides when connections are refused. Returns the limit now in force (`None`:
/// unlimited or unknown).
#[cfg(unix)]
pub fn raise_fd_limit() -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let current = limit.current?;
    match limit.maximum {
        Some(hard) if hard > current => {
            match setrlimit(Resource::Nofile, Rlimit { current: Some(hard), maximum: Some(hard) }) {
                Ok(()) => Some(hard),
                Err(_) => Some(current),
            }
        }
        _ => Some(current),
    }
}

#[cfg(not(unix))]
pub fn raise_fd_limit() -> Option<u64> {
    None
}

/// How long accepting waits after an error (out of file descriptors, memory), doubling per
/// failure in a row.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(5), Duration::from_millis(500));

/// Serves `state`'s app on `listener` until `shutdown` resolves, then stops accepting, lets each
/// request in flight finish and closes the idle connections.
pub async fn serve<S: Store>(
    listener: TcpListener,
    state: AppState<S>,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let conns = Arc::new(Conns::new(&limits));
    let app = TowerToHyperService::new(crate::app(state.clone()));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
    let (stop_tx, stop_rx) = watch::channel(false);
    // Every connection task holds a receiver; the sender sees them all gone.
    let (open_tx, open_rx) = watch::channel(());
    let mut shutdown = pin!(shutdown);
    let mut backoff = ACCEPT_BACKOFF.0;
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                backoff = ACCEPT_BACKOFF.0;
                stream
            }
            Err(e) if gone_before_accept(&e) => continue,
            Err(e) => {
                let freed = conns.evict_oldest_idle();
                cairn_engine::say_limited!(
                    "accept",
                    "cairn serve: cannot accept connections ({e}); {}retrying (see --max-connections and `ulimit -n`)",
                    if freed { "closed an idle connection, " } else { "" }
                );
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF.1);
                continue;
            }
        };
        let (slot, evict) = match conns.admit() {
            Admit::Regular { id, evict } => (Some(id), Some(evict)),
            Admit::Reserve => (None, None),
            // Dropping the socket closes it.
            Admit::Refused => continue,
        };
        let service = ConnService {
            app: app.clone(),
            state: state.clone(),
            conns: conns.clone(),
            slot,
            body_timeout: limits.body_timeout,
        };
        let conn = http.serve_connection(TokioIo::new(stream), service);
        let (conns, mut stop, open) = (conns.clone(), stop_rx.clone(), open_rx.clone());
        tokio::spawn(async move {
            let mut conn = pin!(conn);
            let mut stopping = false;
            loop {
                tokio::select! {
                    _ = conn.as_mut() => break,
                    // An idle connection made room for a new one: close the socket now.
                    () = evicted(evict.as_deref()) => break,
                    _ = stop.changed(), if !stopping => {
                        stopping = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
            conns.leave(slot);
            drop(open);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(open_rx);
    open_tx.closed().await;
    Ok(())
}

/// Errors about one connection that died in the queue; the next accept is unaffected.
fn gone_before_accept(e: &std::io::Error) -> bool {
    use std::io::ErrorKind as K;
    matches!(e.kind(), K::ConnectionAborted | K::ConnectionReset | K::ConnectionRefused | K::Interrupted)
}

async fn evicted(evict: Option<&Notify>) {
    match evict {
        Some(n) => n.notified().await,
        None => std::future::pending().await,
    }
}

/// The open connections, so that a full server can tell which ones are idle.
struct Conns {
    regular: usize,
    reserve: usize,
    slots: Mutex<Slots>,
}

#[derive(Default)]
struct Slots {
    next_id: u64,
    regular: HashMap<u64, Slot>,
    reserve: usize,
}

struct Slot {
    /// Requests in flight; a response still being written counts.
    busy: u32,
    idle_since: Instant,
    evict: Arc<Notify>,
}

enum Admit {
    Regular { id: u64, evict: Arc<Notify> },
    Reserve,
    Refused,
}

impl Conns {
    fn new(limits: &Limits) -> Conns {
        Conns { regular: limits.regular(), reserve: limits.reserve(), slots: Mutex::new(Slots::default()) }
    }

    fn lock(&self) -> MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn admit(&self) -> Admit {
        let mut slots = self.lock();
        if slots.regular.len() >= self.regular {
            slots.evict_oldest_idle();
        }
        if slots.regular.len() < self.regular {
            let id = slots.next_id;
            slots.next_id += 1;
            let evict = Arc::new(Notify::new());
            slots.regular.insert(id, Slot { busy: 0, idle_since: Instant::now(), evict: evict.clone() });
            Admit::Regular { id, evict }
        } else if slots.reserve < self.reserve {
            slots.reserve += 1;
            Admit::Reserve
        } else {
            Admit::Refused
        }
    }

    fn evict_oldest_idle(&self) -> bool {
        self.lock().evict_oldest_idle()
    }

    fn busy(self: &Arc<Self>, id: u64) -> Busy {
        if let Some(slot) = self.lock().regular.get_mut(&id) {
            slot.busy += 1;
        }
        Busy { conns: self.clone(), id }
    }

    /// A connection ended (`None`: a reserve one).
    fn leave(&self, slot: Option<u64>) {
        let mut slots = self.lock();
        match slot {
            Some(id) => {
                slots.regular.remove(&id);
            }
            None => slots.reserve = slots.reserve.saturating_sub(1),
        }
    }
}

impl Slots {
    /// Frees the slot of the connection idle longest and tells it to close.
    fn evict_oldest_idle(&mut self) -> bool {
        let oldest =
            self.regular.iter().filter(|(_, s)| s.busy == 0).min_by_key(|(_, s)| s.idle_since).map(|(id, _)| *id);
        match oldest.and_then(|id| self.regular.remove(&id)) {
            Some(slot) => {
                slot.evict.notify_one();
                true
            }
            None => false,
        }
    }
}

/// Keeps a connection from being evicted while it lives: from a request's head to the end of
/// its response.
struct Busy {
    conns: Arc<Conns>,
    id: u64,
}

impl Drop for Busy {
    fn drop(&mut self) {
        if let Some(slot) = self.conns.lock().regular.get_mut(&self.id) {
            slot.busy = slot.busy.saturating_sub(1);
            slot.idle_since = Instant::now();
        }
    }
}

/// One connection's service: the app, plus the body deadline, busy marking and, on a reserve
/// connection, the check of who may use it.
struct ConnService<S: Store> {
    app: TowerToHyperService<Router>,
    state: AppState<S>,
    conns: Arc<Conns>,
    /// `None` on a reserve connection.
    slot: Option<u64>,
    body_timeout: Duration,
}

impl<S: Store> Service<Request<Incoming>> for ConnService<S> {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let busy = self.slot.map(|id| self.conns.busy(id));
        let timed_out = Arc::new(AtomicBool::new(false));
        let limit = self.body_timeout;
        let req = req.map(|body| {
            Body::new(Deadline {
                body,
                sleep: Box::pin(tokio::time::sleep(limit)),
                timed_out: timed_out.clone(),
                limit,
            })
        });
        let reserve = self.slot.is_none();
        let (app, state) = (self.app.clone(), self.state.clone());
        Box::pin(async move {
            let admitted = !reserve || {
                let probe = matches!(req.uri().path(), "/healthz" | "/readyz");
                probe || has_valid_token(&state, bearer(&req)).await
            };
            let mut response = if admitted {
                match app.call(req).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                }
            } else {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too_many_connections",
                    "every connection is busy; retry shortly (the server's --max-connections is reached)",
                )
                .into_response()
            };
            let timed_out = timed_out.load(Ordering::Relaxed);
            if timed_out {
                response = ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "body_timeout",
                    format!("the request body did not arrive within {limit:?} of its head (see --body-timeout)"),
                )
                .into_response();
            }
            if reserve || timed_out {
                response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok(response.map(|body| Body::new(Tracked { body, _busy: busy })))
        })
    }
}

fn bearer(req: &Request<Body>) -> Option<String> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let secret = value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer "))?;
    Some(secret.trim().to_string())
}

/// Whether a reserve connection's request comes from a known client. The auth layer still
/// decides what it may do.
async fn has_valid_token<S: Store>(state: &AppState<S>, secret: Option<String>) -> bool {
    match secret {
        Some(secret) if state.auth == AuthMode::On => {
            matches!(state.store.token_by_hash(&sha256_hex(secret.as_bytes())).await, Ok(Some(_)))
        }
        _ => false,
    }
}

/// A request body that must arrive whole by a deadline; after it, reading fails and the request
/// is flagged so that its answer becomes a 408.
struct Deadline {
    body: Incoming,
    sleep: Pin<Box<tokio::time::Sleep>>,
    timed_out: Arc<AtomicBool>,
    limit: Duration,
}

impl HttpBody for Deadline {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if this.sleep.as_mut().poll(cx).is_ready() {
            this.timed_out.store(true, Ordering::Relaxed);
            let message = format!("the request body did not arrive within {:?}", this.limit);
            return Poll::Ready(Some(Err(message.into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A response body that keeps its connection marked busy until it is written (or dropped).
struct Tracked {
    body: Body,
    _busy: Option<Busy>,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(n: usize) -> Limits {
        Limits { max_connections: n, ..Limits::default() }
    }

    #[test]
    fn the_reserve_is_an_eighth_of_the_connections_and_at_least_two() {
        assert_eq!((limits(512).regular(), limits(512).reserve()), (448, 64));
        assert_eq!((limits(50).regular(), limits(50).reserve()), (44, 6));
        assert_eq!((limits(4).regular(), limits(4).reserve()), (2, 2));
        assert_eq!((limits(0).regular(), limits(0).reserve()), (2, 2), "below the minimum counts as the minimum");
    }

    #[test]
    fn a_full_server_evicts_the_connection_idle_longest_never_a_busy_one() {
        let conns = Arc::new(Conns::new(&limits(4)));
        let Admit::Regular { id: first, evict: first_evict } = conns.admit() else { panic!("a regular slot") };
        let Admit::Regular { id: second, .. } = conns.admit() else { panic!("a regular slot") };
        let busy = conns.busy(first);
        // Both regular slots are taken, the first busy: the second makes room.
        let Admit::Regular { id: third, .. } = conns.admit() else { panic!("room made by eviction") };
        let held: Vec<u64> = conns.lock().regular.keys().copied().collect();
        assert!(held.contains(&first) && held.contains(&third) && !held.contains(&second), "{held:?}");
        // Both are busy now: nothing idle to evict, so the reserve fills, then the door closes.
        let _busy_third = conns.busy(third);
        assert!(matches!(conns.admit(), Admit::Reserve));
        assert!(matches!(conns.admit(), Admit::Reserve));
        assert!(matches!(conns.admit(), Admit::Refused));
        // The first finishes its response: it is idle now and goes next.
        drop(busy);
        let Admit::Regular { id: fourth, .. } = conns.admit() else { panic!("room made by eviction") };
        let woken = std::pin::pin!(first_evict.notified());
        assert!(futures_util::FutureExt::now_or_never(woken).is_some(), "the evicted connection is told to close");
        let _busy_fourth = conns.busy(fourth);
        assert!(matches!(conns.admit(), Admit::Refused));
        conns.leave(None);
        assert!(matches!(conns.admit(), Admit::Reserve), "a reserve slot freed on leave is reused");
    }
}

//! The tonic adapter for `shoal.v1.Scheduler`: converts, locks, calls the
//! core, and streams what the core decides. No scheduling logic lives here.
//!
//! - `Join`: unary.
//! - `Session`: the first message must be `SessionOpen`; each later event is
//!   applied in order. A refused event ends the session with the status that
//!   says why (the peer reconnects and re-joins; the core keeps it until its
//!   lease runs out, so nothing is lost).
//! - `Plan`: the stream carries the core's plan updates; when the client goes
//!   away the core is told (a guard's `Drop`).
//!
//! Trust ([`Identity`]): over mutual TLS every call is bound to the node its
//! client certificate names. A Join, a session or a plan for any other peer id
//! is refused with `PERMISSION_DENIED` before the core sees it, and a session's
//! events are about its own peer only. Input is bounded ([`Limits`]): message
//! size, tasks per Join, open plans per peer, session events per second; each
//! refusal is a status naming the limit, counted, and changes nothing.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use shoal_proto::v1::{self, peer_event::Event};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use crate::convert;
use crate::core::{CoreError, ErrorKind, Ignored, Load, PeerId, PlanId, PlanOpening};
use crate::state::{PLAN_CHANNEL, PlanMessage, SESSION_CHANNEL, SchedulerState};
use crate::tls::Caller;
use shoal_proto::limits::{JOIN_PAGE, MAX_MESSAGE};

/// Who may speak for which peer id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity {
    /// Plain text (development): any caller for any peer id.
    Unchecked,
    /// Mutual TLS: a node certificate speaks only for the peer id it names;
    /// the shared peer certificate is accepted for any id only if
    /// `allow_shared`.
    Bound {
        /// Accept the shared peer certificate (it names no node).
        allow_shared: bool,
    },
}

/// Bounds on what one peer may ask of the scheduler.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Plan streams one peer may hold open at once (default 256).
    pub plans_per_peer: usize,
    /// Session events per second one peer may send, sustained (default 200);
    /// bursts up to `events_burst`. Past that the session ends with
    /// `RESOURCE_EXHAUSTED` and the peer reconnects after its backoff.
    pub events_per_second: u32,
    /// Burst of session events (default 2,000).
    pub events_burst: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            plans_per_peer: 256,
            events_per_second: 200,
            events_burst: 2_000,
        }
    }
}

/// Receives one call per finished gRPC request (for metrics).
pub trait RequestObserver: Send + Sync + 'static {
    /// `method` finished with `code`.
    fn grpc_request(&self, method: &'static str, code: tonic::Code);
    /// A request was refused by a limit or the identity check; `reason` is a
    /// short constant (`identity`, `join_tasks`, `plans_per_peer`, ...).
    fn refused(&self, _reason: &'static str) {}
    /// A plan stream's first update left for the wire `d` after its request
    /// reached the service (the core's lock, its planning and the stream's
    /// channel; not the network).
    fn plan_first_update(&self, _d: std::time::Duration) {}
}

impl RequestObserver for () {
    fn grpc_request(&self, _: &'static str, _: tonic::Code) {}
}

/// The gRPC service.
pub struct SchedulerService {
    state: Arc<SchedulerState>,
    observer: Arc<dyn RequestObserver>,
    identity: Identity,
    limits: Limits,
}

impl SchedulerService {
    /// A service over `state`, reporting requests to `observer`, with no
    /// identity checks (plain text) and default limits.
    pub fn new(state: Arc<SchedulerState>, observer: Arc<dyn RequestObserver>) -> Self {
        Self::with_policy(state, observer, Identity::Unchecked, Limits::default())
    }

    /// A service with the given identity policy and limits.
    pub fn with_policy(
        state: Arc<SchedulerState>,
        observer: Arc<dyn RequestObserver>,
        identity: Identity,
        limits: Limits,
    ) -> Self {
        SchedulerService {
            state,
            observer,
            identity,
            limits,
        }
    }

    /// Refuses `peer_id` unless the caller of `request` may speak for it.
    fn authorize<T>(&self, request: &Request<T>, peer_id: &str) -> Result<(), Status> {
        let Identity::Bound { allow_shared } = self.identity else {
            return Ok(());
        };
        let caller = match request.peer_certs() {
            Some(certs) => Caller::from_certs(&certs).map_err(Status::unauthenticated)?,
            None => return Err(Status::unauthenticated("no client certificate")),
        };
        let denied = |msg: String| {
            self.observer.refused("identity");
            warn!(peer.id = %peer_id, caller = ?caller, "identity refused");
            Err(Status::permission_denied(msg))
        };
        match &caller {
            Caller::Node(name) if name == peer_id => Ok(()),
            Caller::Node(name) => denied(format!(
                "this client certificate names node {name:?}; it cannot speak for peer {peer_id:?}"
            )),
            Caller::SharedPeer if allow_shared => Ok(()),
            Caller::SharedPeer => denied(
                "the shared peer certificate names no node and this scheduler does not accept it: \
                 give each node its own certificate, or run the scheduler with --allow-shared-identity"
                    .into(),
            ),
            Caller::Anonymous => denied("no client identity".into()),
        }
    }

    fn limit(&self, reason: &'static str, msg: String) -> Status {
        self.observer.refused(reason);
        Status::resource_exhausted(msg)
    }

    /// A core refusal as a status; a limit is counted under `tasks`.
    fn core_refused(&self, e: CoreError) -> Status {
        if e.kind == ErrorKind::ResourceExhausted {
            self.observer.refused("tasks");
        }
        convert::status(e)
    }

    fn observe<T>(&self, method: &'static str, r: Result<T, Status>) -> Result<T, Status> {
        let code = r.as_ref().map_or_else(|s| s.code(), |_| tonic::Code::Ok);
        self.observer.grpc_request(method, code);
        if let Err(s) = &r {
            debug!(grpc.method = method, grpc.code = ?s.code(), error = s.message(), "request refused");
        }
        r
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl v1::scheduler_server::Scheduler for SchedulerService {
    async fn join(
        &self,
        request: Request<v1::JoinRequest>,
    ) -> Result<Response<v1::JoinResponse>, Status> {
        let r = (|| {
            let claimed = request.get_ref().peer.as_ref().map(|p| p.peer_id.as_str());
            self.authorize(&request, claimed.unwrap_or_default())?;
            if request.get_ref().tasks.len() > JOIN_PAGE {
                return Err(self.limit(
                    "join_tasks",
                    format!(
                        "a Join carries at most {JOIN_PAGE} tasks ({} sent); send the rest in further Joins",
                        request.get_ref().tasks.len()
                    ),
                ));
            }
            let req = request.into_inner();
            let info = convert::peer_info(req.peer)?;
            let held = convert::held_tasks(req.tasks)?;
            let (id, addr, n) = (info.id.clone(), info.addr, held.len());
            let ttl = self
                .state
                .with_core(|core, now| core.join(now, info, held).map(|()| core.config().peer_ttl))
                .map_err(|e| self.core_refused(e))?;
            info!(peer.id = %id, peer.addr = %addr, tasks = n, "peer joined");
            Ok(Response::new(v1::JoinResponse {
                heartbeat_interval_ms: (ttl / 3).as_millis() as u64,
                peer_ttl_ms: ttl.as_millis() as u64,
                piece_rule: shoal_proto::piece::PIECE_RULE,
            }))
        })();
        self.observe("Join", r)
    }

    type SessionStream = BoxStream<v1::SchedulerCommand>;

    async fn session(
        &self,
        request: Request<Streaming<v1::PeerEvent>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        // The session is bound to the caller's certificate: checked against the
        // peer id of SessionOpen below, then every event is about that peer.
        let auth = Request::new(());
        let mut auth = auth;
        *auth.extensions_mut() = request.extensions().clone();
        let mut inbound = request.into_inner();
        let r = async {
            let first = inbound
                .message()
                .await?
                .ok_or_else(|| Status::invalid_argument("session closed before SessionOpen"))?;
            let Some(Event::Open(open)) = first.event else {
                return Err(Status::invalid_argument(
                    "the first session message must be SessionOpen",
                ));
            };
            self.authorize(&auth, &open.peer_id)?;
            let peer = convert::peer_id(&open.peer_id)?;
            self.state
                .with_core(|core, now| core.session_opened(now, &peer))
                .map_err(convert::status)?;
            Ok(peer)
        }
        .await;
        let peer = self.observe("Session", r)?;
        debug!(peer.id = %peer, "session opened");

        let (cmd_tx, cmd_rx) = mpsc::channel(SESSION_CHANNEL);
        self.state.attach_session(peer.clone(), cmd_tx.clone());
        // Outbound: commands, then the status that ended the session. Boxed: the
        // channel makes room for 32 messages at once, for every peer's session
        // (6 KiB each unboxed, 512 bytes boxed).
        let (out_tx, out_rx) =
            mpsc::channel::<Result<Box<v1::SchedulerCommand>, Status>>(SESSION_CHANNEL);
        let state = self.state.clone();
        let observer = self.observer.clone();
        let mut bucket = TokenBucket::new(self.limits.events_per_second, self.limits.events_burst);
        tokio::spawn(async move {
            let mut commands = ReceiverStream::new(cmd_rx);
            let closed = state.clone();
            let closed = closed.closed();
            tokio::pin!(closed);
            let end = loop {
                tokio::select! {
                    _ = &mut closed => break Some(Status::unavailable("the scheduler is shutting down; reconnect")),
                    msg = inbound.message() => match msg {
                        Ok(Some(_)) if !bucket.take(std::time::Instant::now()) => {
                            observer.refused("session_events");
                            warn!(peer.id = %peer, "session event rate limit exceeded; closing session");
                            break Some(Status::resource_exhausted(format!(
                                "more than {} session events per second (burst {}): batch reports",
                                bucket.rate, bucket.burst
                            )));
                        }
                        Ok(Some(ev)) => {
                            match apply_event(&state, &peer, ev) {
                                Ok(Some(ignored)) => {
                                    observer.refused(ignored.reason());
                                    debug!(peer.id = %peer, reason = ignored.reason(), "part of a session event ignored");
                                }
                                Ok(None) => {}
                                Err(s) => {
                                    observer.grpc_request("Session", s.code());
                                    warn!(peer.id = %peer, error = s.message(), "session event refused; closing session");
                                    break Some(s);
                                }
                            }
                        }
                        Ok(None) => break None,
                        Err(s) => break (s.code() != tonic::Code::Cancelled).then_some(s),
                    },
                    Some(cmd) = commands.next() => {
                        if out_tx.send(Ok(Box::new(convert::command(cmd)))).await.is_err() {
                            break None;
                        }
                    }
                }
            };
            state.detach_session(&peer, &cmd_tx);
            state.with_core(|core, _| core.session_closed(&peer));
            debug!(peer.id = %peer, "session closed");
            if let Some(s) = end {
                let _ = out_tx.send(Err(s)).await;
            }
        });
        Ok(Response::new(Box::pin(
            ReceiverStream::new(out_rx).map(|r| r.map(|c| *c)),
        )))
    }

    type PlanStream = BoxStream<v1::PlanUpdate>;

    async fn plan(
        &self,
        request: Request<v1::PlanRequest>,
    ) -> Result<Response<Self::PlanStream>, Status> {
        let opened = std::time::Instant::now();
        let r = (|| {
            self.authorize(&request, &request.get_ref().peer_id)?;
            let req = request.into_inner();
            let peer = convert::peer_id(&req.peer_id)?;
            let digest = convert::digest(&req.digest)?;
            let open = self.state.open_plans(&peer);
            if open >= self.limits.plans_per_peer {
                return Err(self.limit(
                    "plans_per_peer",
                    format!(
                        "peer {peer} has {open} plan streams open, the limit is {}",
                        self.limits.plans_per_peer
                    ),
                ));
            }
            let (tx, rx) = mpsc::channel(PLAN_CHANNEL);
            let state = self.state.clone();
            let plan = self
                .state
                .with_core(|core, now| {
                    let opening = PlanOpening {
                        resumed: req.resumed,
                        from_upstream: req.from_upstream,
                    };
                    let plan = core.open_plan_with(now, &peer, digest, req.size, opening)?;
                    // Attached before the first update is routed.
                    state.attach_plan(plan, &peer, tx);
                    Ok(plan)
                })
                .map_err(|e| self.core_refused(e))?;
            debug!(peer.id = %peer, task.digest = %digest, plan = plan.0, "plan opened");
            let stream = PlanStream {
                first: Some((opened, self.observer.clone())),
                rx: ReceiverStream::new(rx),
                guard: PlanGuard {
                    state: self.state.clone(),
                    plan,
                    peer,
                },
            };
            Ok(Response::new(Box::pin(stream) as Self::PlanStream))
        })();
        self.observe("Plan", r)
    }
}

/// Applies one session event to the core; says what part of it the core did
/// not believe (counted as a refusal, the session goes on).
fn apply_event(
    state: &SchedulerState,
    peer: &PeerId,
    ev: v1::PeerEvent,
) -> Result<Option<Ignored>, Status> {
    let Some(event) = ev.event else {
        return Err(Status::invalid_argument("empty session event"));
    };
    let r = match event {
        Event::Open(_) => return Err(Status::invalid_argument("SessionOpen sent twice")),
        Event::Heartbeat(h) => {
            let load = Load {
                active_uploads: h.active_uploads,
                active_downloads: h.active_downloads,
            };
            state.with_core(|core, now| core.heartbeat(now, peer, load).map(|()| None))
        }
        Event::Started(s) => {
            let digest = convert::digest(&s.digest)?;
            state.with_core(|core, now| core.task_started(now, peer, digest, s.size).map(|()| None))
        }
        Event::Pieces(p) => {
            let digest = convert::digest(&p.digest)?;
            let pieces = convert::pieces(&digest, &p.pieces)?;
            state.with_core(|core, now| core.report_pieces(now, peer, digest, &pieces))
        }
        Event::Complete(c) => {
            let digest = convert::digest(&c.digest)?;
            state.with_core(|core, now| core.task_complete(now, peer, digest))
        }
        Event::Evicted(e) => {
            let digest = convert::digest(&e.digest)?;
            state.with_core(|core, now| core.task_evicted(now, peer, digest).map(|()| None))
        }
        Event::DigestMismatch(m) => {
            let digest = convert::digest(&m.digest)?;
            warn!(peer.id = %peer, task.digest = %digest, "task assembled from the swarm's hashes does not match its digest");
            state.with_core(|core, now| core.digest_mismatch(now, peer, digest))
        }
        Event::PreheatProgress(p) => {
            let (job, report) = convert::preheat_report(p)?;
            let final_state = report.state;
            if state.job_report(peer, &job, report) {
                debug!(peer.id = %peer, preheat.job = %job, preheat.state = ?final_state, "preheat progress");
            } else {
                debug!(peer.id = %peer, preheat.job = %job, "preheat progress about no running job part ignored");
            }
            Ok(None)
        }
        Event::BadParent(b) => {
            let digest = convert::digest(&b.digest)?;
            let parent = convert::peer_id(&b.parent_id)?;
            warn!(peer.id = %peer, parent.id = %parent, task.digest = %digest, piece = b.piece_index, reason = %b.reason, "bad parent reported");
            state.with_core(|core, now| core.bad_parent(now, peer, digest, &parent))
        }
    };
    r.map_err(convert::status)
}

/// Tells the core when a plan stream is dropped (client gone or finished).
struct PlanGuard {
    state: Arc<SchedulerState>,
    plan: PlanId,
    peer: PeerId,
}

impl Drop for PlanGuard {
    fn drop(&mut self) {
        self.state.plan_closed(self.plan, &self.peer);
    }
}

struct PlanStream {
    /// When the request arrived, until the first update is timed.
    first: Option<(std::time::Instant, Arc<dyn RequestObserver>)>,
    rx: ReceiverStream<PlanMessage>,
    guard: PlanGuard,
}

impl Stream for PlanStream {
    type Item = Result<v1::PlanUpdate, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let _ = &self.guard;
        let item = std::task::ready!(Pin::new(&mut self.rx).poll_next(cx));
        if let Some(Ok(_)) = &item
            && let Some((opened, observer)) = self.first.take()
        {
            observer.plan_first_update(opened.elapsed());
        }
        Poll::Ready(item.map(|m| match m {
            Ok(update) => Ok(convert::plan_update(*update)),
            Err((code, msg)) => Err(Status::new(code, msg)),
        }))
    }
}

/// A token bucket: `rate` per second, up to `burst` saved.
struct TokenBucket {
    rate: u32,
    burst: u32,
    tokens: f64,
    at: std::time::Instant,
}

impl TokenBucket {
    fn new(rate: u32, burst: u32) -> Self {
        TokenBucket {
            rate,
            burst,
            tokens: f64::from(burst),
            at: std::time::Instant::now(),
        }
    }

    fn take(&mut self, now: std::time::Instant) -> bool {
        let earned = now.saturating_duration_since(self.at).as_secs_f64() * f64::from(self.rate);
        self.tokens = (self.tokens + earned).min(f64::from(self.burst));
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Serves the scheduler and the standard gRPC health service on `listener`,
/// in plain text and without identity checks, until `shutdown` resolves. For
/// in-process tests and `--insecure-plaintext`; see [`serve_with`].
pub async fn serve(
    listener: TcpListener,
    state: Arc<SchedulerState>,
    observer: Arc<dyn RequestObserver>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let service = SchedulerService::new(state.clone(), observer);
    serve_with(TcpListenerStream::new(listener), service, shutdown).await
}

/// Serves `service` and the standard gRPC health service on the connections
/// of `incoming` (plain TCP, or authenticated TLS streams from
/// [`crate::tls::incoming`]) until `shutdown` resolves.
pub async fn serve_with<IO, IE>(
    incoming: impl Stream<Item = Result<IO, IE>> + Send + 'static,
    service: SchedulerService,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error>
where
    IO: tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + tonic::transport::server::Connected
        + Unpin
        + Send
        + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let state = service.state.clone();
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<v1::scheduler_server::SchedulerServer<SchedulerService>>()
        .await;
    let service = v1::scheduler_server::SchedulerServer::new(service)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    state.set_ready(true);
    // On shutdown, end the long-lived streams first so that the server's
    // graceful drain does not wait for them (peers reconnect).
    let closing = state.clone();
    let shutdown = async move {
        shutdown.await;
        closing.set_ready(false);
        closing.close_streams();
    };
    let r = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .add_service(health_service)
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    state.set_ready(false);
    r
}

/// Downloads one step of a flush looks at while holding the core (see
/// [`crate::core::Scheduler::begin_flush`]).
pub const FLUSH_STEP: usize = 64;

/// Advances the core's clock every `interval` (lease expiry, stalled
/// back-to-source peers) and flushes coalesced plan updates, until
/// `shutdown` resolves.
pub async fn run_ticker(
    state: Arc<SchedulerState>,
    interval: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    // Preheat jobs need no finer clock than a second.
    let mut jobs_ticked = std::time::Instant::now();
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                let mut flush = state.with_core(|core, now| {
                    core.tick(now);
                    core.begin_flush()
                });
                // In steps, letting go of the core between them: plans opened and
                // reports sent meanwhile wait for one step, not the whole flush.
                while state.with_core(|core, _| core.flush_step(&mut flush, FLUSH_STEP)) {}
                state.ticked(interval);
                if jobs_ticked.elapsed() >= Duration::from_secs(1) {
                    jobs_ticked = std::time::Instant::now();
                    state.tick_jobs();
                }
            }
            _ = &mut shutdown => return,
        }
    }
}

impl RequestObserver for crate::metrics::Metrics {
    fn grpc_request(&self, method: &'static str, code: tonic::Code) {
        crate::metrics::Metrics::grpc_request(self, method, code);
    }

    fn refused(&self, reason: &'static str) {
        crate::metrics::Metrics::refused(self, reason);
    }

    fn plan_first_update(&self, d: std::time::Duration) {
        crate::metrics::Metrics::plan_first_update(self, d);
    }
}

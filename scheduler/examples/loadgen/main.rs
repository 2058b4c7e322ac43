//! `loadgen`: the scheduler scale benchmark behind `scripts/bench-scheduler`.
//!
//! Starts a real `shoal-scheduler` process on loopback and drives it over
//! gRPC with thousands of simulated peers, then prints throughput and
//! latency per call kind and the scheduler's peak resident set (`VmHWM`).
//!
//! Phases:
//! 1. every peer joins (40 % with inventory, see `workload.rs`), at most
//!    `--join-concurrency` joins in flight: a fleet re-joining a restarted
//!    scheduler;
//! 2. every peer opens its session, then heartbeats at the interval the
//!    scheduler asked for;
//! 3. for `--duration` seconds, downloads arrive at `--downloads-per-sec`
//!    (Poisson) on random peers; each opens a plan and follows it
//!    (`peer.rs`), reporting pieces in batches and completing. On top of
//!    that, `--rollout-at` seconds in, a rollout: `--rollout` peers ask for
//!    the same new task (the biggest) within `--rollout-secs` (a DaemonSet
//!    of a new image version), the popular-task case;
//! 4. arrivals stop; downloads in flight get `--drain` seconds, the rest are
//!    cancelled; then the scheduler's `/proc` figures and `/metrics` are read
//!    and it is stopped with SIGTERM.
//!
//! Security: by default (`--security both`) the whole benchmark runs twice
//! with the same workload and seed, each time against a fresh scheduler:
//! first in plain text (`--insecure-plaintext`), then over mutual TLS
//! (`--tls-dir`), and a side-by-side table ends the report (the ratios
//! TLS/plain; the target is within 1.5×). With TLS every simulated peer
//! presents its own node certificate (common name = its peer id, made here
//! with rcgen as `shoal-peer tls issue --node` makes it; the signing time is
//! printed), so every connection makes a full handshake with client
//! authentication and the scheduler binds each call to its certificate.
//! `--identity shared` (forced when peers share connections) uses the one
//! shared certificate (common name `shoal-peer`) with
//! `--allow-shared-identity` instead.
//!
//! Replicas: `--replicas N` runs the benchmark once against one scheduler and
//! once against N replica processes (same workload and seed); the simulated
//! peers shard their tasks over the replicas as the real peer does (`peer.rs`).
//! `--kill-owner` adds a third run in which the rollout task's owner is killed
//! (SIGKILL) halfway through the rollout. A table compares them
//! (`replicas.rs`): each replica's task count against an even share, its memory
//! against the single scheduler's, plan-open latency, and the back-to-source
//! elections the kill caused.
//!
//! Layout: `workload.rs` (tasks, inventory, popularity), `peer.rs` (sessions
//! and downloads), `stats.rs` (latencies, counters, `/proc`), `pki.rs`
//! (certificates), `replicas.rs` (the replica comparison), this file (phases
//! and the report).
//!
//! Connections: by default one HTTP/2 connection per simulated peer, as in a
//! real cluster (each node's daemon has its own), so the scheduler's memory
//! includes 10,000 connections. That needs about `peers + 100` open files in
//! each process; `--connections N` multiplexes the peers over N connections
//! instead (tonic multiplexes streams; the scheduler sets no stream limit).
//!
//! An example, not a binary of the crate: it is not shipped, and it is built
//! only by `cargo build --examples` (the script does that).

mod peer;
mod pki;
mod replicas;
mod stats;
mod workload;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use futures::StreamExt;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinSet;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use peer::{Ctx, Outcome, Timing};
use pki::Pki;
use stats::{Latency, Summary, cpu_secs, loadavg, open_files_limit, status_kib};
use workload::Workload;

/// Open files each process keeps besides its connections.
const SPARE_FILES: u64 = 200;
/// The peer id (and node certificate) of the probe.
const PROBE_ID: &str = "bench-probe";

/// How the scheduler's gRPC port is secured in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Security {
    /// Plain text, then mutual TLS, same load: side by side.
    Both,
    /// Mutual TLS only.
    Tls,
    /// Plain text only (`--insecure-plaintext`).
    Plain,
}

/// Which client certificates the simulated peers present over TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum IdentityMode {
    /// One node certificate per peer (common name = peer id).
    Node,
    /// The shared `shoal-peer` certificate, with `--allow-shared-identity`.
    Shared,
}

#[derive(Debug, Parser)]
#[command(
    name = "loadgen",
    about = "Scale benchmark of shoal-scheduler over gRPC"
)]
struct Args {
    /// Simulated peers.
    #[arg(long, default_value_t = 10_000)]
    peers: u32,
    /// Tasks (blobs): half held by peers at join, half new.
    #[arg(long, default_value_t = 1_000)]
    tasks: u32,
    /// Seconds of the download phase.
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Downloads starting per second, cluster-wide (Poisson arrivals).
    #[arg(long, default_value_t = 100.0)]
    downloads_per_sec: f64,
    /// HTTP/2 connections to the scheduler [default: one per peer, capped by `ulimit -n`].
    #[arg(long)]
    connections: Option<u32>,
    /// Joins (and session opens) in flight at once.
    #[arg(long, default_value_t = 256)]
    join_concurrency: usize,
    /// The scheduler's `--plan-interval` (how often coalesced plan updates
    /// are flushed).
    #[arg(long, default_value = "100ms")]
    plan_interval: String,
    /// MiB a second one download receives: a piece arrives every piece size ÷
    /// this (a 4 MiB piece every 40 ms at 100, a 512 KiB one every 5 ms).
    #[arg(long, default_value_t = 100)]
    rate_mib: u64,
    /// Milliseconds between piece report batches of one download.
    #[arg(long, default_value_t = 200)]
    report_ms: u64,
    /// Seconds after which a download gives up.
    #[arg(long, default_value_t = 120)]
    download_timeout: u64,
    /// Peers in the rollout (0: none).
    #[arg(long, default_value_t = 1_000)]
    rollout: u32,
    /// Seconds into the download phase the rollout starts.
    #[arg(long, default_value_t = 10)]
    rollout_at: u64,
    /// Seconds over which the rollout's downloads start.
    #[arg(long, default_value_t = 2)]
    rollout_secs: u64,
    /// Milliseconds between the probe's plans (see `peer::probe`).
    #[arg(long, default_value_t = 50)]
    probe_ms: u64,
    /// Seconds downloads in flight get to finish after the arrivals stop.
    #[arg(long, default_value_t = 20)]
    drain: u64,
    /// Seed of the workload (tasks, inventory, arrivals).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The scheduler binary [default: `../shoal-scheduler` next to this example].
    #[arg(long)]
    scheduler_bin: Option<PathBuf>,
    /// Plain text, mutual TLS, or both one after the other (side by side).
    #[arg(long, value_enum, default_value_t = Security::Both)]
    security: Security,
    /// Client certificates over TLS: one per peer, or the shared one
    /// [default: node; shared when peers share connections].
    #[arg(long, value_enum)]
    identity: Option<IdentityMode>,
    /// Scheduler replicas: with more than one, the benchmark runs with one
    /// scheduler, then with this many replicas (same workload and seed), and
    /// compares them. Needs `--security plain` or `tls`.
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// With `--replicas`: a third run in which the rollout task's owner is
    /// killed (SIGKILL) halfway through the rollout.
    #[arg(long)]
    kill_owner: bool,
}

/// The TLS set-up of a run: the scheduler's directory and each connection's
/// client configuration.
struct TlsRun<'a> {
    pki: &'a Pki,
    shared: bool,
    /// One per connection (node certificates) or one for all (shared).
    clients: Vec<ClientTlsConfig>,
    probe: ClientTlsConfig,
}

/// The scheduler process under test.
struct Scheduler {
    child: std::process::Child,
    grpc: String,
    http: String,
    warnings: Arc<std::sync::atomic::AtomicU64>,
}

impl Scheduler {
    fn start(
        bin: &PathBuf,
        plan_interval: &str,
        tls: Option<&TlsRun>,
    ) -> anyhow::Result<Scheduler> {
        let mut cmd = Command::new(bin);
        cmd.args([
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .args(["--plan-interval", plan_interval]);
        match tls {
            Some(t) => {
                cmd.arg("--tls-dir").arg(&t.pki.dir);
                if t.shared {
                    cmd.arg("--allow-shared-identity");
                }
            }
            None => {
                cmd.arg("--insecure-plaintext");
            }
        }
        let mut child = cmd
            .env("SHOAL_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let mut lines = BufReader::new(child.stderr.take().expect("piped")).lines();
        // The start-up warnings this run asks for (plain text, the shared
        // identity) come first; the addresses are in the "starting" line.
        let line = loop {
            let line = lines
                .next()
                .context("the scheduler exited before logging its addresses")??;
            if line.contains("grpc.addr") || !line.contains(r#""level":"WARN""#) {
                break line;
            }
        };
        let v: serde_json::Value =
            serde_json::from_str(&line).with_context(|| format!("start-up line {line:?}"))?;
        let addr = |k: &str| {
            v[k].as_str()
                .map(str::to_owned)
                .with_context(|| format!("no {k} in {line:?}"))
        };
        let (grpc, http) = (addr("grpc.addr")?, addr("http.addr")?);
        // Keep draining its log; count what is not info.
        let warnings = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let count = warnings.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                // A line that is not JSON (a panic's message and location) is
                // always shown; of the warnings and errors, the first five.
                let not_json = !line.starts_with('{');
                let warning =
                    line.contains(r#""level":"WARN""#) || line.contains(r#""level":"ERROR""#);
                if not_json
                    || (warning && count.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < 5)
                {
                    eprintln!("scheduler: {line}");
                }
            }
        });
        Ok(Scheduler {
            child,
            grpc,
            http,
            warnings,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn rss_mib(&self, key: &str) -> f64 {
        status_kib(self.pid(), key).map_or(f64::NAN, |k| k as f64 / 1024.0)
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn scheduler_bin(args: &Args) -> anyhow::Result<PathBuf> {
    if let Some(p) = &args.scheduler_bin {
        return Ok(p.clone());
    }
    let exe = std::env::current_exe()?;
    // target/<profile>/examples/loadgen → target/<profile>/shoal-scheduler
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .map(|d| d.join("shoal-scheduler"))
        .context("cannot locate shoal-scheduler; pass --scheduler-bin")?;
    if !bin.exists() {
        bail!(
            "{} does not exist; build it (cargo build --release -p shoal-scheduler) or pass --scheduler-bin",
            bin.display()
        );
    }
    Ok(bin)
}

/// The endpoint of connection `i`: plain, or TLS with its client certificate.
fn endpoint(grpc: &str, tls: Option<&ClientTlsConfig>) -> anyhow::Result<Endpoint> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut e = Endpoint::from_shared(format!("{scheme}://{grpc}"))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(10));
    if let Some(t) = tls {
        e = e.tls_config(t.clone())?;
    }
    Ok(e)
}

/// `n` connections, 64 being set up at once; each one's set-up (TCP, the TLS
/// handshake if any, HTTP/2) is timed into `latency`.
async fn connect(
    grpc: &str,
    n: u32,
    tls: Option<&TlsRun<'_>>,
    latency: &Latency,
) -> anyhow::Result<Vec<Channel>> {
    let endpoints = (0..n as usize)
        .map(|i| endpoint(grpc, tls.map(|t| &t.clients[i % t.clients.len()])))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let channels: Vec<Result<Channel, tonic::transport::Error>> = futures::stream::iter(endpoints)
        .map(|e| async move {
            let started = Instant::now();
            let c = e.connect().await;
            latency.record(started.elapsed());
            c
        })
        // In order: connection i carries peer i's certificate.
        .buffered(64)
        .collect()
        .await;
    channels
        .into_iter()
        .collect::<Result<_, _>>()
        .context("connecting to the scheduler")
}

/// One row of the latency table.
fn row(name: &str, s: &Summary, rate: Option<f64>) {
    let rate = rate.map_or("".to_owned(), |r| format!("{r:.0}"));
    println!(
        "  {name:<44} {:>9} {:>9} {:>9.2} {:>9.2} {:>9.2}",
        s.count, rate, s.p50, s.p99, s.max
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.peers == 0 || args.tasks < 2 {
        bail!("--peers must be at least 1 and --tasks at least 2");
    }
    let bin = scheduler_bin(&args)?;
    let limit = open_files_limit().unwrap_or(1024);
    let wanted = args.connections.unwrap_or(args.peers).clamp(1, args.peers);
    let connections = wanted.min(limit.saturating_sub(SPARE_FILES).max(1) as u32);
    if connections < wanted {
        eprintln!(
            "note: ulimit -n is {limit}: {connections} connections instead of {wanted} (raise it, or pass --connections)"
        );
    }

    let shared = match args.identity {
        Some(IdentityMode::Shared) => true,
        Some(IdentityMode::Node) if connections < args.peers => {
            bail!(
                "--identity node needs one connection per peer ({connections} connections for {} peers)",
                args.peers
            )
        }
        Some(IdentityMode::Node) => false,
        None => connections < args.peers,
    };
    let dir = std::env::temp_dir().join(format!("shoal-loadgen-{}", std::process::id()));
    let tls_setup = if args.security == Security::Plain {
        None
    } else {
        let pki = Pki::new(&dir)?;
        let (clients, probe, how) = if shared {
            let c = pki.client_config(&pki.shared()?);
            (
                vec![c.clone()],
                c,
                "the shared shoal-peer certificate (--allow-shared-identity)".to_owned(),
            )
        } else {
            let (certs, took) = pki.nodes((0..args.peers).map(workload::peer_id))?;
            let how = format!(
                "one node certificate per peer; signing {} certificates (ECDSA P-256 key + signature, rcgen) took {:.2} s, {:.0} µs each",
                certs.len(),
                took.as_secs_f64(),
                took.as_secs_f64() * 1e6 / certs.len() as f64
            );
            let clients = certs.iter().map(|c| pki.client_config(c)).collect();
            (clients, pki.client_config(&pki.node(PROBE_ID)?), how)
        };
        eprintln!("TLS client identity: {how}");
        Some((pki, shared, clients, probe, how))
    };
    let tls = tls_setup
        .as_ref()
        .map(|(pki, shared, clients, probe, _)| TlsRun {
            pki,
            shared: *shared,
            clients: clients.clone(),
            probe: probe.clone(),
        });
    let runs: Vec<Option<&TlsRun>> = match args.security {
        Security::Both => vec![None, tls.as_ref()],
        Security::Tls => vec![tls.as_ref()],
        Security::Plain => vec![None],
    };
    if args.replicas > 1 {
        let [t] = runs[..] else {
            bail!("--replicas needs --security plain or tls (one security per run)");
        };
        let mut figures = Vec::new();
        let mut cases = vec![(1, false), (args.replicas, false)];
        if args.kill_owner {
            cases.push((args.replicas, true));
        }
        for (n, kill) in cases {
            figures.push(run(&args, &bin, connections, t, n, kill).await?);
        }
        replicas::compare(&args, &figures);
        return Ok(());
    }
    let mut figures = Vec::new();
    for t in runs {
        figures.push(run(&args, &bin, connections, t, 1, false).await?);
    }
    if let [plain, tls] = &figures[..] {
        let how = tls_setup.as_ref().map_or("", |s| s.4.as_str());
        compare(&args, connections, plain, tls, how);
    }
    Ok(())
}

/// What the side-by-side comparison shows of one run.
struct Figures {
    connect: Summary,
    connect_secs: f64,
    join: Summary,
    session_open: Summary,
    plan_first: Summary,
    probe: Summary,
    report_update: Summary,
    hwm: f64,
    rss_sessions: f64,
    rss_end: f64,
    cpu_setup: f64,
    cpu_phase_pct: f64,
    downloads_done: u64,
    errors: u64,
    /// What each scheduler process showed at the end (a killed one: `None`).
    replicas: Vec<Option<replicas::ReplicaFigures>>,
    /// The replica killed mid-rollout, if any.
    killed: Option<usize>,
    back_to_source: u64,
    back_to_source_rollout: u64,
    plans_moved: u64,
    tasks_moved: u64,
}

/// One whole benchmark against a fresh scheduler, plain (`tls` is `None`)
/// or over mutual TLS; prints its report.
async fn run(
    args: &Args,
    bin: &PathBuf,
    connections: u32,
    tls: Option<&TlsRun<'_>>,
    replica_count: usize,
    kill: bool,
) -> anyhow::Result<Figures> {
    let load_before = loadavg();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let security = match tls {
        None => "plain text",
        Some(t) if t.shared => "mutual TLS, shared identity",
        Some(_) => "mutual TLS, node certificates",
    };
    eprintln!(
        "run: {security}, {replica_count} scheduler replica(s){}",
        if kill {
            ", the rollout task's owner killed mid-rollout"
        } else {
            ""
        }
    );

    let mut scheds = Vec::new();
    for _ in 0..replica_count {
        scheds.push(Scheduler::start(bin, &args.plan_interval, tls)?);
    }
    let connect_latency = Latency::default();
    let started = Instant::now();
    let mut channels = Vec::new();
    for s in &scheds {
        channels.push(connect(&s.grpc, connections, tls, &connect_latency).await?);
    }
    let keys: Vec<String> = scheds.iter().map(|s| s.grpc.clone()).collect();
    let connect_secs = started.elapsed().as_secs_f64();
    let workload = Workload::new(args.tasks, args.seed);
    let held_at_join: usize = (0..args.peers).map(|i| workload.inventory(i).len()).sum();
    let top_share = workload.top_new_share();
    let timing = Timing {
        bytes_per_sec: (args.rate_mib.max(1) << 20) as f64,
        report: Duration::from_millis(args.report_ms.max(1)),
        timeout: Duration::from_secs(args.download_timeout),
    };
    let ctx = Arc::new(Ctx::new(channels, keys, workload, args.peers, timing));
    let rollout_task = (ctx.workload.old..args.tasks)
        .max_by_key(|&t| ctx.workload.tasks[t as usize].size)
        .expect("at least one new task");
    ctx.rollout_task
        .store(rollout_task, std::sync::atomic::Ordering::Relaxed);
    // The replica the single-scheduler figures (memory, CPU, the probe) are read
    // from: one that is not killed.
    let reference = if kill {
        (ctx.owner(rollout_task) + 1) % replica_count
    } else {
        0
    };
    let sched = &scheds[reference];
    let spid = sched.pid().to_string();
    let rss_connected = sched.rss_mib("VmRSS");
    let cpu0 = cpu_secs(&spid).unwrap_or(0.0);

    // Phase 1: joins.
    let started = Instant::now();
    let heartbeats: Vec<(u32, Option<Duration>)> = futures::stream::iter(0..args.peers)
        .map(|i| {
            let ctx = ctx.clone();
            async move { (i, ctx.join(i).await) }
        })
        .buffer_unordered(args.join_concurrency.max(1))
        .collect()
        .await;
    let join_secs = started.elapsed().as_secs_f64();
    let rss_joined = sched.rss_mib("VmRSS");

    // Phase 2: sessions.
    let started = Instant::now();
    let sessions: Vec<_> = futures::stream::iter(heartbeats)
        .filter_map(|(i, hb)| async move { hb.map(|hb| (i, hb)) })
        .map(|(i, hb)| {
            let ctx = ctx.clone();
            async move { ctx.open_sessions(i, hb).await }
        })
        .buffer_unordered(args.join_concurrency.max(1))
        .collect()
        .await;
    let session_secs = started.elapsed().as_secs_f64();
    let mut session_tasks = JoinSet::new();
    for s in sessions.into_iter().flatten() {
        session_tasks.spawn(s);
    }
    let rss_sessions = sched.rss_mib("VmRSS");
    let rss_sessions_each: Vec<f64> = scheds.iter().map(|s| s.rss_mib("VmRSS")).collect();
    let cpu_setup = cpu_secs(&spid).unwrap_or(0.0) - cpu0;

    // Phase 3: downloads, and the rollout beside them.
    let mut rng = SmallRng::seed_from_u64(args.seed ^ 0xA221);
    let rollout = tokio::spawn(rollout(
        ctx.clone(),
        rollout_task,
        args.rollout.min(args.peers),
        Duration::from_secs(args.rollout_at),
        Duration::from_secs(args.rollout_secs),
        args.seed,
    ));
    // The scheduler's own histogram read as the rollout starts and a second
    // after its last plan opened: the plans opened in that window, timed by the
    // scheduler (no network, no load generator runtime in the figure).
    let burst_window = tokio::spawn({
        let http = sched.http.clone();
        let (at, over) = (
            Duration::from_secs(args.rollout_at),
            Duration::from_secs(args.rollout_secs),
        );
        async move {
            tokio::time::sleep(at).await;
            let before = plan_first_buckets(&metrics_text(&http).await);
            tokio::time::sleep(over + Duration::from_secs(1)).await;
            let after = plan_first_buckets(&metrics_text(&http).await);
            let window: Vec<(f64, u64)> = after
                .iter()
                .map(|&(le, n)| {
                    let was = before.iter().find(|b| b.0 == le).map_or(0, |b| b.1);
                    (le, n.saturating_sub(was))
                })
                .collect();
            summarize_plan_first("plans opened during the rollout, scheduler side", &window)
        }
    });
    let mut downloads = JoinSet::new();
    let phase = Duration::from_secs(args.duration);
    let cpu1 = cpu_secs(&spid).unwrap_or(0.0);
    let self_cpu1 = cpu_secs("self").unwrap_or(0.0);
    let events_before = events_sent(&ctx);
    let started = Instant::now();
    let probe_latency = Arc::new(stats::Latency::default());
    let probe_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The probe asks the reference replica about tasks it owns.
    let probe = peer::probe(
        endpoint(&sched.grpc, tls.map(|t| &t.probe))?,
        (0..ctx.workload.old)
            .filter(|&t| ctx.owner(t) == reference)
            .take(20)
            .map(|t| {
                let spec = &ctx.workload.tasks[t as usize];
                (spec.digest.clone(), spec.size)
            })
            .collect(),
        Duration::from_millis(args.probe_ms.max(1)),
        probe_stop.clone(),
        probe_latency.clone(),
    );
    // How late this process's own runtime wakes a 5 ms timer during the
    // rollout: the simulated peers' share of any client-side latency above.
    let runtime_lag = Arc::new(stats::Latency::default());
    let lag_probe = tokio::spawn({
        let lag = runtime_lag.clone();
        let (at, over) = (
            Duration::from_secs(args.rollout_at),
            Duration::from_secs(args.rollout_secs),
        );
        async move {
            tokio::time::sleep(at).await;
            let until = Instant::now() + over + Duration::from_secs(1);
            while Instant::now() < until {
                let t = Instant::now();
                tokio::time::sleep(Duration::from_millis(5)).await;
                lag.record(t.elapsed().saturating_sub(Duration::from_millis(5)));
            }
        }
    });
    let killer = kill.then(|| {
        let at = Duration::from_secs(args.rollout_at) + Duration::from_secs(args.rollout_secs) / 2;
        let pids: Vec<u32> = scheds.iter().map(Scheduler::pid).collect();
        tokio::spawn(replicas::kill_owner(
            ctx.clone(),
            rollout_task,
            at,
            pids,
            args.join_concurrency,
        ))
    });
    let mut next = tokio::time::Instant::now();
    let end = next + phase;
    loop {
        let u: f64 = rng.random::<f64>().max(1e-12);
        next += Duration::from_secs_f64(-u.ln() / args.downloads_per_sec.max(0.001));
        if next >= end {
            break;
        }
        tokio::time::sleep_until(next).await;
        while downloads.try_join_next().is_some() {}
        let task = ctx.workload.pick_task(&mut rng);
        match ctx.claim_peer(task, &mut rng) {
            Some(p) => {
                downloads.spawn(peer::download(ctx.clone(), p, task, false));
            }
            None => ctx.stats.arrivals_skipped.inc(),
        }
    }
    tokio::time::sleep_until(end).await;
    probe_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let phase_secs = started.elapsed().as_secs_f64();
    let cpu_phase = cpu_secs(&spid).unwrap_or(0.0) - cpu1;
    let self_cpu_phase = cpu_secs("self").unwrap_or(0.0) - self_cpu1;
    let events_phase = events_sent(&ctx) - events_before;
    let mut rollout = rollout.await.context("rollout task")?;
    let in_flight_at_end = ctx
        .stats
        .in_flight
        .load(std::sync::atomic::Ordering::Relaxed);

    // Phase 4: drain, measure, stop.
    let drained = tokio::time::timeout(Duration::from_secs(args.drain), async {
        while let Some(r) = downloads.join_next().await {
            let _: Result<Outcome, _> = r;
        }
        while let Some(r) = rollout.join_next().await {
            let _: Result<Outcome, _> = r;
        }
    })
    .await;
    let cancelled = if drained.is_err() {
        let n = ctx
            .stats
            .in_flight
            .load(std::sync::atomic::Ordering::Relaxed);
        downloads.shutdown().await;
        rollout.shutdown().await;
        n
    } else {
        0
    };
    let _ = probe.join();
    let killed = match killer {
        Some(k) => Some(k.await.context("killer task")?),
        None => None,
    };
    let hwm = sched.rss_mib("VmHWM");
    let rss_end = sched.rss_mib("VmRSS");
    let metrics = scrape(&sched.http).await;
    let burst = if args.rollout > 0 {
        burst_window
            .await
            .unwrap_or_else(|e| format!("burst window: {e}"))
    } else {
        burst_window.abort();
        String::from("no rollout")
    };
    let warnings = sched.warnings.load(std::sync::atomic::Ordering::Relaxed);
    let load_after = loadavg();
    let mut each = Vec::new();
    for (r, s) in scheds.iter().enumerate() {
        each.push(if killed == Some(r) {
            None
        } else {
            Some(replicas::ReplicaFigures::read(&s.http, s.pid(), rss_sessions_each[r]).await)
        });
    }
    session_tasks.shutdown().await;
    for s in scheds {
        s.stop();
    }

    // The report.
    let st = &ctx.stats;
    println!(
        "\nshoal-scheduler scale benchmark ({security}): peers={} tasks={} connections={connections} duration={}s \
         downloads_per_sec={} plan_interval={} rate_mib={} report_ms={} seed={}",
        args.peers,
        args.tasks,
        args.duration,
        args.downloads_per_sec,
        args.plan_interval,
        args.rate_mib,
        args.report_ms,
        args.seed
    );
    println!(
        "machine: {cpus} CPUs shared by the scheduler and this load generator; load average before {load_before}, after {load_after}"
    );
    let spec = &ctx.workload.tasks[rollout_task as usize];
    println!(
        "workload: {held_at_join} (peer, task) holdings announced at join; the top new task draws {:.1} % of downloads; \
         rollout: {} peers, {} s in, {} MiB ({} pieces)\n",
        top_share * 100.0,
        args.rollout.min(args.peers),
        args.rollout_at,
        spec.size >> 20,
        spec.pieces,
    );
    println!(
        "  {:<44} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "call", "count", "per sec", "p50 ms", "p99 ms", "max ms"
    );
    let conn = connect_latency.summary();
    row(
        "Connect (TCP, TLS handshake, HTTP/2)",
        &conn,
        Some(conn.count as f64 / connect_secs),
    );
    let join = st.join.summary();
    row(
        "Join (unary, phase 1)",
        &join,
        Some(join.count as f64 / join_secs),
    );
    let so = st.session_open.summary();
    row(
        "Session open (SessionOpen -> headers)",
        &so,
        Some(so.count as f64 / session_secs),
    );
    let pf = st.plan_first.summary();
    row(
        "Plan open -> first PlanUpdate",
        &pf,
        Some(pf.count as f64 / phase_secs),
    );
    row(
        "  of which the rollout's",
        &st.plan_first_rollout.summary(),
        None,
    );
    lag_probe.abort();
    row(
        "  load generator's timer lateness, rollout",
        &runtime_lag.summary(),
        None,
    );
    let probe = probe_latency.summary();
    row(
        "Plan open -> first PlanUpdate, probe",
        &probe,
        Some(probe.count as f64 / phase_secs),
    );
    let ru = st.report_to_update.summary();
    row("PieceReport sent -> child's PlanUpdate shows it", &ru, None);
    row(
        "download (Plan open -> TaskComplete)",
        &st.download.summary(),
        None,
    );
    row(
        "  of which the rollout's",
        &st.download_rollout.summary(),
        None,
    );
    println!(
        "\n  session events sent in phase 3: {events_phase} ({:.0}/s): heartbeats {}, piece reports {} \
         ({} pieces, {} from upstream), TaskStarted {}, TaskComplete {}, TaskEvicted {}",
        events_phase as f64 / phase_secs,
        st.heartbeats.get(),
        st.report_batches.get(),
        st.pieces_reported.get(),
        st.upstream_pieces.get(),
        st.started.get(),
        st.completes.get(),
        st.evictions.get(),
    );
    println!(
        "  plan updates received: {} ({:.0}/s over phase 3 + drain); plans opened {} (re-opened after the scheduler ended them: {})",
        st.plan_updates.get(),
        st.plan_updates.get() as f64 / started.elapsed().as_secs_f64(),
        st.plans_opened.get(),
        st.plan_streams_ended.get(),
    );
    println!(
        "  downloads: done {}, timed out {}, failed {}, in flight when arrivals stopped {in_flight_at_end} \
         (cancelled after the drain {cancelled}), most at once {}, arrivals skipped {}",
        st.downloads_done.get(),
        st.downloads_timed_out.get(),
        st.downloads_failed.get(),
        st.peak_in_flight.load(std::sync::atomic::Ordering::Relaxed),
        st.arrivals_skipped.get(),
    );
    println!(
        "  errors: join {}, session open {}, sessions ended by the scheduler {}, plan refused {}; \
         scheduler WARN/ERROR log lines {warnings}",
        st.join_errors.get(),
        st.session_errors.get(),
        st.sessions_ended.get(),
        st.plan_errors.get(),
    );
    println!(
        "\n  scheduler memory: VmHWM {hwm:.1} MiB (target <= 500 MiB); VmRSS connected {rss_connected:.1}, \
         after joins {rss_joined:.1}, after sessions {rss_sessions:.1}, at the end {rss_end:.1} MiB"
    );
    println!(
        "  scheduler CPU: joins + sessions {cpu_setup:.1} s; phase 3 {cpu_phase:.1} s = {:.0} % of one core \
         (load generator: {:.0} %)",
        100.0 * cpu_phase / phase_secs,
        100.0 * self_cpu_phase / phase_secs,
    );
    println!("  scheduler /metrics at the end: {metrics}");
    println!("  {burst}");
    println!(
        "\nscheduler-scale: security={} peers={} tasks={} connections={connections} vmhwm_mib={hwm:.0} join_p99_ms={:.2} \
         plan_first_p50_ms={:.2} plan_first_p99_ms={:.2} probe_p50_ms={:.2} probe_p99_ms={:.2} report_update_p50_ms={:.1} report_update_p99_ms={:.1} \
         events_per_sec={:.0} sched_cpu_pct={:.0}",
        if tls.is_some() { "tls" } else { "plain" },
        args.peers,
        args.tasks,
        join.p99,
        pf.p50,
        pf.p99,
        probe.p50,
        probe.p99,
        ru.p50,
        ru.p99,
        events_phase as f64 / phase_secs,
        100.0 * cpu_phase / phase_secs,
    );
    Ok(Figures {
        connect: conn,
        connect_secs,
        join,
        session_open: so,
        plan_first: pf,
        probe,
        report_update: ru,
        hwm,
        rss_sessions,
        rss_end,
        cpu_setup,
        cpu_phase_pct: 100.0 * cpu_phase / phase_secs,
        downloads_done: st.downloads_done.get(),
        errors: st.join_errors.get()
            + st.session_errors.get()
            + st.sessions_ended.get()
            + st.plan_errors.get(),
        replicas: each,
        killed,
        back_to_source: st.back_to_source.get(),
        back_to_source_rollout: st.back_to_source_rollout.get(),
        plans_moved: st.plans_moved.get(),
        tasks_moved: st.tasks_moved.get(),
    })
}

/// The side-by-side table of a plain and a TLS run, with the ratios.
fn compare(args: &Args, connections: u32, plain: &Figures, tls: &Figures, how: &str) {
    println!(
        "\nplain text vs mutual TLS, same load (peers={} tasks={} connections={connections} duration={}s seed={}); \
         TLS: {how}\n",
        args.peers, args.tasks, args.duration, args.seed
    );
    println!(
        "  {:<50} {:>10} {:>10} {:>10}",
        "", "plain", "mTLS", "mTLS/plain"
    );
    let line = |name: &str, p: f64, t: f64| {
        println!("  {name:<50} {p:>10.2} {t:>10.2} {:>9.2}×", t / p);
    };
    line("connect p50 ms", plain.connect.p50, tls.connect.p50);
    line("connect p99 ms", plain.connect.p99, tls.connect.p99);
    line(
        "all connections set up, s",
        plain.connect_secs,
        tls.connect_secs,
    );
    line("Join p50 ms", plain.join.p50, tls.join.p50);
    line("Join p99 ms", plain.join.p99, tls.join.p99);
    line(
        "Session open p99 ms",
        plain.session_open.p99,
        tls.session_open.p99,
    );
    line(
        "Plan open -> first PlanUpdate p50 ms",
        plain.plan_first.p50,
        tls.plan_first.p50,
    );
    line(
        "Plan open -> first PlanUpdate p99 ms",
        plain.plan_first.p99,
        tls.plan_first.p99,
    );
    line("  probe p50 ms", plain.probe.p50, tls.probe.p50);
    line("  probe p99 ms", plain.probe.p99, tls.probe.p99);
    line(
        "PieceReport -> PlanUpdate p50 ms",
        plain.report_update.p50,
        tls.report_update.p50,
    );
    line(
        &format!(
            "scheduler VmRSS at {} peers (sessions open) MiB",
            args.peers
        ),
        plain.rss_sessions,
        tls.rss_sessions,
    );
    line("scheduler VmHWM MiB", plain.hwm, tls.hwm);
    line("scheduler VmRSS at the end MiB", plain.rss_end, tls.rss_end);
    line(
        "scheduler CPU, joins + sessions s",
        plain.cpu_setup,
        tls.cpu_setup,
    );
    line(
        "scheduler CPU, phase 3 % of a core",
        plain.cpu_phase_pct,
        tls.cpu_phase_pct,
    );
    println!(
        "  downloads done: plain {}, mTLS {}; errors: plain {}, mTLS {}",
        plain.downloads_done, tls.downloads_done, plain.errors, tls.errors
    );
    let (jr, pr) = (
        tls.join.p99 / plain.join.p99,
        tls.plan_first.p50 / plain.plan_first.p50,
    );
    let verdict = |r: f64| if r <= 1.5 { "within" } else { "OVER" };
    println!(
        "\n  target: mTLS within 1.5× of plain text: join p99 {jr:.2}× ({}), plan-open p50 {pr:.2}× ({})",
        verdict(jr),
        verdict(pr)
    );
    println!(
        "\nscheduler-tls: peers={} connections={connections} identity={} join_p99_ms_plain={:.2} join_p99_ms_tls={:.2} \
         join_p99_ratio={jr:.2} plan_first_p50_ms_plain={:.2} plan_first_p50_ms_tls={:.2} plan_first_p50_ratio={pr:.2} \
         connect_p99_ms_plain={:.2} connect_p99_ms_tls={:.2} rss_sessions_mib_plain={:.0} rss_sessions_mib_tls={:.0} \
         vmhwm_mib_plain={:.0} vmhwm_mib_tls={:.0}",
        args.peers,
        if how.starts_with("one node") {
            "node"
        } else {
            "shared"
        },
        plain.join.p99,
        tls.join.p99,
        plain.plan_first.p50,
        tls.plan_first.p50,
        plain.connect.p99,
        tls.connect.p99,
        plain.rss_sessions,
        tls.rss_sessions,
        plain.hwm,
        tls.hwm,
    );
}

/// `n` peers ask for `task` within `over`, starting `at` into the phase.
async fn rollout(
    ctx: Arc<Ctx>,
    task: u32,
    n: u32,
    at: Duration,
    over: Duration,
    seed: u64,
) -> JoinSet<Outcome> {
    let mut set = JoinSet::new();
    if n == 0 {
        return set;
    }
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x2011);
    let start = tokio::time::Instant::now() + at;
    for k in 0..n {
        tokio::time::sleep_until(start + over.mul_f64(f64::from(k) / f64::from(n))).await;
        match ctx.claim_peer(task, &mut rng) {
            Some(p) => {
                set.spawn(peer::download(ctx.clone(), p, task, true));
            }
            None => ctx.stats.arrivals_skipped.inc(),
        }
    }
    set
}

fn events_sent(ctx: &Ctx) -> u64 {
    let s = &ctx.stats;
    s.heartbeats.get()
        + s.report_batches.get()
        + s.started.get()
        + s.completes.get()
        + s.evictions.get()
}

/// The scheduler's own view of plan-open latency, from its histogram
/// `shoal_scheduler_plan_first_update_seconds` (request in → first update out,
/// no network, no load generator): how many, the share within 5 ms, and the
/// bucket the 99th percentile falls in.
fn server_side_plan_first(metrics: &str) -> String {
    summarize_plan_first(
        "plan first update (scheduler side)",
        &plan_first_buckets(metrics),
    )
}

/// The cumulative buckets of `shoal_scheduler_plan_first_update_seconds`,
/// by upper bound (seconds), `+Inf` last.
fn plan_first_buckets(metrics: &str) -> Vec<(f64, u64)> {
    let mut buckets: Vec<(f64, u64)> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("shoal_scheduler_plan_first_update_seconds_bucket{le=\""))
        .filter_map(|rest| {
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    buckets
}

/// How many, the share within 5 ms and the bucket of the 99th percentile.
fn summarize_plan_first(what: &str, buckets: &[(f64, u64)]) -> String {
    let Some(&(_, total)) = buckets.last() else {
        return format!("{what}: no histogram");
    };
    if total == 0 {
        return format!("{what}: none");
    }
    let within_5ms = buckets
        .iter()
        .find(|(le, _)| (*le - 0.005).abs() < 1e-9)
        .map_or(0, |b| b.1);
    let p99 = buckets
        .iter()
        .find(|(_, c)| *c as f64 >= 0.99 * total as f64)
        .map_or(f64::INFINITY, |b| b.0);
    format!(
        "{what}: {total}, {:.1} % within 5 ms, p99 <= {} ms",
        100.0 * within_5ms as f64 / total as f64,
        p99 * 1000.0
    )
}

/// A few lines of the scheduler's own metrics: its counters and any gRPC
/// request that did not end OK.
async fn metrics_text(http: &str) -> String {
    match reqwest::get(format!("http://{http}/metrics")).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

async fn scrape(http: &str) -> String {
    let Ok(r) = reqwest::get(format!("http://{http}/metrics")).await else {
        return "unreachable".into();
    };
    let Ok(text) = r.text().await else {
        return "unreadable".into();
    };
    let wanted = [
        "shoal_scheduler_peers ",
        "shoal_scheduler_tasks ",
        "shoal_scheduler_plan_decisions_total ",
        "shoal_scheduler_plan_updates_total ",
        "shoal_scheduler_back_to_source_elections_total ",
    ];
    let mut out: Vec<String> = text
        .lines()
        .filter(|l| wanted.iter().any(|w| l.starts_with(w)))
        .map(|l| l.trim_start_matches("shoal_scheduler_").to_owned())
        .collect();
    let not_ok: Vec<String> = text
        .lines()
        .filter(|l| {
            l.starts_with("shoal_scheduler_grpc_requests_total{") && !l.contains("code=\"OK\"")
        })
        .map(|l| {
            l.trim_start_matches("shoal_scheduler_grpc_requests_total")
                .to_owned()
        })
        .collect();
    out.push(server_side_plan_first(&text));
    out.push(if not_ok.is_empty() {
        "grpc requests not OK: none".into()
    } else {
        format!("grpc requests not OK: {}", not_ok.join(" "))
    });
    out.join(", ")
}

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
//! Layout: `workload.rs` (tasks, inventory, popularity), `peer.rs` (sessions
//! and downloads), `stats.rs` (latencies, counters, `/proc`), this file
//! (phases and the report).
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
mod stats;
mod workload;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use futures::StreamExt;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinSet;
use tonic::transport::{Channel, Endpoint};

use peer::{Ctx, Outcome, Timing};
use stats::{Summary, cpu_secs, loadavg, open_files_limit, status_kib};
use workload::Workload;

/// Open files each process keeps besides its connections.
const SPARE_FILES: u64 = 200;

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
    /// Milliseconds per piece of a download (4 MiB in 40 ms ≈ 100 MB/s).
    #[arg(long, default_value_t = 40)]
    piece_ms: u64,
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
}

/// The scheduler process under test.
struct Scheduler {
    child: std::process::Child,
    grpc: String,
    http: String,
    warnings: Arc<std::sync::atomic::AtomicU64>,
}

impl Scheduler {
    fn start(bin: &PathBuf, plan_interval: &str) -> anyhow::Result<Scheduler> {
        let mut child = Command::new(bin)
            .args([
                "--grpc-listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
            ])
            .args(["--plan-interval", plan_interval])
            .env("SHOAL_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let mut lines = BufReader::new(child.stderr.take().expect("piped")).lines();
        let line = lines
            .next()
            .context("the scheduler exited before logging its addresses")??;
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

async fn connect(grpc: &str, n: u32) -> anyhow::Result<Vec<Channel>> {
    let endpoint = Endpoint::from_shared(format!("http://{grpc}"))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(10));
    let channels: Vec<Result<Channel, tonic::transport::Error>> = futures::stream::iter(0..n)
        .map(|_| {
            let e = endpoint.clone();
            async move { e.connect().await }
        })
        .buffer_unordered(64)
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
    let load_before = loadavg();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());

    let sched = Scheduler::start(&bin, &args.plan_interval)?;
    let spid = sched.pid().to_string();
    let channels = connect(&sched.grpc, connections).await?;
    let workload = Workload::new(args.tasks, args.seed);
    let held_at_join: usize = (0..args.peers).map(|i| workload.inventory(i).len()).sum();
    let top_share = workload.top_new_share();
    let timing = Timing {
        piece: Duration::from_millis(args.piece_ms.max(1)),
        report: Duration::from_millis(args.report_ms.max(1)),
        timeout: Duration::from_secs(args.download_timeout),
    };
    let ctx = Arc::new(Ctx::new(channels, workload, args.peers, timing));
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
    let sessions: Vec<_> = futures::stream::iter(heartbeats.into_iter())
        .filter_map(|(i, hb)| async move { hb.map(|hb| (i, hb)) })
        .map(|(i, hb)| {
            let ctx = ctx.clone();
            async move { ctx.open_session(i, hb).await }
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
    let cpu_setup = cpu_secs(&spid).unwrap_or(0.0) - cpu0;

    // Phase 3: downloads, and the rollout beside them.
    let mut rng = SmallRng::seed_from_u64(args.seed ^ 0xA221);
    let rollout_task = (ctx.workload.old..args.tasks)
        .max_by_key(|&t| ctx.workload.tasks[t as usize].size)
        .expect("at least one new task");
    let rollout = tokio::spawn(rollout(
        ctx.clone(),
        rollout_task,
        args.rollout.min(args.peers),
        Duration::from_secs(args.rollout_at),
        Duration::from_secs(args.rollout_secs),
        args.seed,
    ));
    let mut downloads = JoinSet::new();
    let phase = Duration::from_secs(args.duration);
    let cpu1 = cpu_secs(&spid).unwrap_or(0.0);
    let self_cpu1 = cpu_secs("self").unwrap_or(0.0);
    let events_before = events_sent(&ctx);
    let started = Instant::now();
    let probe_latency = Arc::new(stats::Latency::default());
    let probe_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let probe = peer::probe(
        sched.grpc.clone(),
        (0..ctx.workload.old.min(20))
            .map(|t| {
                let spec = &ctx.workload.tasks[t as usize];
                (spec.digest.clone(), spec.size)
            })
            .collect(),
        Duration::from_millis(args.probe_ms.max(1)),
        probe_stop.clone(),
        probe_latency.clone(),
    );
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
    let hwm = sched.rss_mib("VmHWM");
    let rss_end = sched.rss_mib("VmRSS");
    let metrics = scrape(&sched.http).await;
    let warnings = sched.warnings.load(std::sync::atomic::Ordering::Relaxed);
    let load_after = loadavg();
    session_tasks.shutdown().await;
    sched.stop();

    // The report.
    let st = &ctx.stats;
    println!(
        "\nshoal-scheduler scale benchmark: peers={} tasks={} connections={connections} duration={}s \
         downloads_per_sec={} plan_interval={} piece_ms={} report_ms={} seed={}",
        args.peers,
        args.tasks,
        args.duration,
        args.downloads_per_sec,
        args.plan_interval,
        args.piece_ms,
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
    println!(
        "\nscheduler-scale: peers={} tasks={} connections={connections} vmhwm_mib={hwm:.0} join_p99_ms={:.2} \
         plan_first_p50_ms={:.2} plan_first_p99_ms={:.2} probe_p50_ms={:.2} probe_p99_ms={:.2} report_update_p50_ms={:.1} report_update_p99_ms={:.1} \
         events_per_sec={:.0} sched_cpu_pct={:.0}",
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
    Ok(())
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

/// A few lines of the scheduler's own metrics: its counters and any gRPC
/// request that did not end OK.
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
    out.push(if not_ok.is_empty() {
        "grpc requests not OK: none".into()
    } else {
        format!("grpc requests not OK: {}", not_ok.join(" "))
    });
    out.join(", ")
}

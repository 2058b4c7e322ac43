//! The replica comparison (`--replicas N`): what each scheduler process showed
//! at the end of a run, the kill of the rollout task's owner (`--kill-owner`),
//! and the table comparing one scheduler with N replicas.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::peer::Ctx;
use crate::stats::status_kib;
use crate::{Args, Figures};

/// One scheduler process at the end of a run.
pub(crate) struct ReplicaFigures {
    /// `shoal_scheduler_tasks`: the tasks it knows.
    pub(crate) tasks: f64,
    /// `shoal_scheduler_back_to_source_elections_total`.
    pub(crate) elections: f64,
    /// Peak resident set (`VmHWM`), MiB.
    pub(crate) hwm: f64,
    /// Resident set once every session was open, MiB.
    pub(crate) rss_sessions: f64,
}

impl ReplicaFigures {
    /// Reads the process `pid` and its `/metrics` at `http`.
    pub(crate) async fn read(http: &str, pid: u32, rss_sessions: f64) -> ReplicaFigures {
        let text = match reqwest::get(format!("http://{http}/metrics")).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        let metric = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
                .unwrap_or(f64::NAN)
        };
        ReplicaFigures {
            tasks: metric("shoal_scheduler_tasks"),
            elections: metric("shoal_scheduler_back_to_source_elections_total"),
            hwm: status_kib(pid, "VmHWM").map_or(f64::NAN, |k| k as f64 / 1024.0),
            rss_sessions,
        }
    }
}

/// `at` into the download phase, kills (SIGKILL) the replica that owns
/// `task`; every simulated peer notices at once (as real peers notice a broken
/// connection) and announces the complete tasks it owned to their new owners.
/// Returns the replica killed.
pub(crate) async fn kill_owner(
    ctx: Arc<Ctx>,
    task: u32,
    at: Duration,
    pids: Vec<u32>,
    concurrency: usize,
) -> usize {
    tokio::time::sleep(at).await;
    let owner = ctx.owner(task);
    ctx.dead[owner].store(true, Ordering::Relaxed);
    *ctx.died_at.lock().expect("died lock") = Some(Instant::now());
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &pids[owner].to_string()])
        .status();
    let started = Instant::now();
    ctx.announce_moves(owner, concurrency).await;
    eprintln!(
        "killed replica {owner} (the rollout task's owner) {:.1} s into the downloads; the peers \
         re-announced {} complete tasks to the others in {:.2} s",
        at.as_secs_f64(),
        ctx.stats.tasks_moved.get(),
        started.elapsed().as_secs_f64()
    );
    owner
}

/// The table: one scheduler, N replicas, and N replicas with the rollout
/// task's owner killed; ratios against the single scheduler.
pub(crate) fn compare(args: &Args, runs: &[Figures]) {
    let one = &runs[0];
    let many = &runs[1];
    let n = args.replicas;
    let single = one.replicas[0]
        .as_ref()
        .expect("the single scheduler ran to the end");
    let each: Vec<&ReplicaFigures> = many.replicas.iter().flatten().collect();
    println!(
        "\none scheduler vs {n} replicas, same load (peers={} tasks={} duration={}s rollout={} seed={}); \
         the machine is shared: compare ratios\n",
        args.peers, args.tasks, args.duration, args.rollout, args.seed
    );
    println!("  {:<52} {:>10} {:>10} {:>9}", "", "1", n, "ratio");
    let line = |name: &str, a: f64, b: f64| {
        println!("  {name:<52} {a:>10.2} {b:>10.2} {:>8.2}×", b / a);
    };
    line(
        "Plan open -> first PlanUpdate p50 ms",
        one.plan_first.p50,
        many.plan_first.p50,
    );
    line(
        "Plan open -> first PlanUpdate p99 ms",
        one.plan_first.p99,
        many.plan_first.p99,
    );
    line("  probe p99 ms", one.probe.p99, many.probe.p99);
    line(
        "Join p99 ms (one call per replica)",
        one.join.p99,
        many.join.p99,
    );
    line(
        "PieceReport -> PlanUpdate p50 ms",
        one.report_update.p50,
        many.report_update.p50,
    );
    let mean = |f: &dyn Fn(&ReplicaFigures) -> f64| {
        each.iter().map(|r| f(r)).sum::<f64>() / each.len() as f64
    };
    let max = |f: &dyn Fn(&ReplicaFigures) -> f64| each.iter().map(|r| f(r)).fold(0.0, f64::max);
    line(
        "VmRSS with every session open, MiB (mean per replica)",
        single.rss_sessions,
        mean(&|r| r.rss_sessions),
    );
    line("VmHWM MiB (mean per replica)", single.hwm, mean(&|r| r.hwm));
    line("VmHWM MiB (largest replica)", single.hwm, max(&|r| r.hwm));
    line(
        "VmHWM MiB (all replicas together)",
        single.hwm,
        each.iter().map(|r| r.hwm).sum(),
    );
    let even = single.tasks / n as f64;
    let counts: Vec<String> = each.iter().map(|r| format!("{:.0}", r.tasks)).collect();
    let worst = each
        .iter()
        .map(|r| (r.tasks - even) / even * 100.0)
        .fold(0.0_f64, |w, d| if d.abs() > w.abs() { d } else { w });
    println!(
        "\n  tasks per replica: {} (the single scheduler knew {:.0}: an even share is {even:.0}); \
         furthest from even: {worst:+.1} % (target within ±20 %)",
        counts.join(", "),
        single.tasks
    );
    println!(
        "  downloads told to fetch from upstream (back-to-source elections): 1: {} (rollout task {}), \
         {n}: {} (rollout task {})",
        one.back_to_source,
        one.back_to_source_rollout,
        many.back_to_source,
        many.back_to_source_rollout
    );
    println!(
        "  the schedulers' own count (shoal_scheduler_back_to_source_elections_total, summed): 1: {:.0}, {n}: {:.0}",
        single.elections,
        each.iter().map(|r| r.elections).sum::<f64>()
    );
    println!(
        "  downloads done: 1: {}, {n}: {}; errors: 1: {}, {n}: {}",
        one.downloads_done, many.downloads_done, one.errors, many.errors
    );
    let killed = runs.get(2);
    if let Some(k) = killed {
        println!(
            "  with replica {} (the rollout task's owner) killed mid-rollout: downloads told to fetch \
             from upstream {} (rollout task {}): {:+} over the same run without the kill ({:+} for \
             the rollout task); plans re-opened with a new owner {}, complete tasks re-announced {}; \
             downloads done {}, errors {}",
            k.killed.map_or("?".into(), |r| r.to_string()),
            k.back_to_source,
            k.back_to_source_rollout,
            k.back_to_source as i64 - many.back_to_source as i64,
            k.back_to_source_rollout as i64 - many.back_to_source_rollout as i64,
            k.plans_moved,
            k.tasks_moved,
            k.downloads_done,
            k.errors,
        );
    }
    println!(
        "\nscheduler-replicas: replicas={n} peers={} tasks={} plan_first_p99_ms_1={:.2} plan_first_p99_ms_n={:.2} \
         plan_first_p99_ratio={:.2} vmhwm_mib_1={:.0} vmhwm_mib_n_mean={:.0} vmhwm_ratio={:.2} \
         tasks_per_replica={} task_share_worst_pct={worst:+.1} bts_1={} bts_n={} bts_kill={}",
        args.peers,
        args.tasks,
        one.plan_first.p99,
        many.plan_first.p99,
        many.plan_first.p99 / one.plan_first.p99,
        single.hwm,
        mean(&|r| r.hwm),
        mean(&|r| r.hwm) / single.hwm,
        counts.join("/"),
        one.back_to_source,
        many.back_to_source,
        killed.map_or("n/a".into(), |k| k.back_to_source.to_string()),
    );
}

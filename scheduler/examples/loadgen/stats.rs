//! What the load generator measures: latencies per call kind, counters of
//! what was sent and received, and the scheduler process's memory and CPU
//! read from `/proc`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Latency samples of one kind, in microseconds.
#[derive(Default)]
pub(crate) struct Latency {
    samples: Mutex<Vec<u32>>,
}

/// count, p50, p99, max (milliseconds).
#[derive(Clone, Copy)]
pub(crate) struct Summary {
    pub(crate) count: usize,
    pub(crate) p50: f64,
    pub(crate) p99: f64,
    pub(crate) max: f64,
}

impl Latency {
    pub(crate) fn record(&self, d: Duration) {
        let us = d.as_micros().min(u128::from(u32::MAX)) as u32;
        self.samples.lock().expect("latency lock").push(us);
    }

    pub(crate) fn record_many(&self, ds: impl IntoIterator<Item = Duration>) {
        let mut s = self.samples.lock().expect("latency lock");
        s.extend(
            ds.into_iter()
                .map(|d| d.as_micros().min(u128::from(u32::MAX)) as u32),
        );
    }

    pub(crate) fn summary(&self) -> Summary {
        let mut v = self.samples.lock().expect("latency lock").clone();
        v.sort_unstable();
        let at = |p: f64| -> f64 {
            if v.is_empty() {
                return f64::NAN;
            }
            let idx = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
            f64::from(v[idx]) / 1_000.0
        };
        Summary {
            count: v.len(),
            p50: at(0.50),
            p99: at(0.99),
            max: at(1.0),
        }
    }
}

/// A monotonic counter.
#[derive(Default)]
pub(crate) struct Count(AtomicU64);

impl Count {
    pub(crate) fn inc(&self) {
        self.add(1);
    }
    pub(crate) fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Everything the run counts and times.
#[derive(Default)]
pub(crate) struct Stats {
    /// `Join` call → response.
    pub(crate) join: Latency,
    /// `Session` call with `SessionOpen` → response headers (the scheduler
    /// answers once it has applied `SessionOpen`).
    pub(crate) session_open: Latency,
    /// `Plan` call → first `PlanUpdate`.
    pub(crate) plan_first: Latency,
    /// A `PieceReport` sent on a session → a plan update at another peer
    /// whose parent's bitmap shows the piece.
    pub(crate) report_to_update: Latency,
    /// `Plan` call → first `PlanUpdate`, downloads of the rollout task only.
    pub(crate) plan_first_rollout: Latency,
    /// `Plan` call → `TaskComplete` sent (the whole simulated download).
    pub(crate) download: Latency,
    /// The same, downloads of the rollout task only.
    pub(crate) download_rollout: Latency,

    pub(crate) join_errors: Count,
    pub(crate) session_errors: Count,
    /// Sessions the scheduler ended (a refused event, or shutdown).
    pub(crate) sessions_ended: Count,
    pub(crate) heartbeats: Count,
    pub(crate) report_batches: Count,
    pub(crate) pieces_reported: Count,
    pub(crate) upstream_pieces: Count,
    pub(crate) started: Count,
    pub(crate) completes: Count,
    pub(crate) evictions: Count,
    pub(crate) commands: Count,
    pub(crate) plans_opened: Count,
    pub(crate) plan_errors: Count,
    /// Plan streams the scheduler ended (superseded, lagging); re-opened.
    pub(crate) plan_streams_ended: Count,
    pub(crate) plan_updates: Count,
    pub(crate) downloads_done: Count,
    pub(crate) downloads_timed_out: Count,
    pub(crate) downloads_failed: Count,
    /// Downloads running now, and the most at once.
    pub(crate) in_flight: AtomicU64,
    pub(crate) peak_in_flight: AtomicU64,
    /// Arrivals dropped because the picked peers all held or fetched the task.
    pub(crate) arrivals_skipped: Count,
    /// Downloads a scheduler told to fetch from upstream (each counted once),
    /// and of those, downloads of the rollout task.
    pub(crate) back_to_source: Count,
    pub(crate) back_to_source_rollout: Count,
    /// Plans re-opened with another replica because theirs went away.
    pub(crate) plans_moved: Count,
    /// Complete tasks re-announced to their new owner after a replica went away.
    pub(crate) tasks_moved: Count,
}

impl Stats {
    pub(crate) fn download_started(&self) {
        let now = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak_in_flight.fetch_max(now, Ordering::Relaxed);
    }

    pub(crate) fn download_ended(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A field of `/proc/<pid>/status` in KiB (`VmHWM`, `VmRSS`).
pub(crate) fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status
        .lines()
        .find(|l| l.strip_prefix(key).is_some_and(|r| r.starts_with(':')))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// User + system CPU seconds of a process, from `/proc/<pid>/stat` (clock
/// ticks of 1/100 s, Linux's `USER_HZ` on every common architecture).
pub(crate) fn cpu_secs(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces: fields start after its ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// `/proc/loadavg`'s first three fields.
pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "n/a".into())
}

/// The soft limit on open files of this process (`ulimit -n`).
pub(crate) fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

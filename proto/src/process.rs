//! The process's own cost, as Prometheus's standard process metrics: CPU time,
//! memory, file descriptors, threads and start time (`process_cpu_seconds_total`,
//! `process_resident_memory_bytes`, …, the names every Go exporter and the
//! dashboards built on them use). Both daemons register [`ProcessCollector`] on
//! their registry's unprefixed root, so the peer DaemonSet's and the scheduler's
//! CPU per node show up next to what they moved.
//!
//! Read from `/proc/self` at every scrape (Linux; on other systems, or when
//! `/proc` is not mounted, nothing is written). The parsing is pure and tested on
//! fixed text.
//!
//! Not here: CPU of child processes, per-thread figures.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

/// Clock ticks per second of `/proc/<pid>/stat`'s times: `USER_HZ`, fixed at 100
/// by the kernel's ABI on every architecture Kubernetes nodes run (x86-64, arm64,
/// ppc64le, s390x), whatever the kernel's own `HZ`.
const USER_HZ: f64 = 100.0;

/// One reading of the process's figures.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessStats {
    /// User plus system CPU time, seconds.
    pub cpu_seconds: f64,
    /// Resident set size, bytes.
    pub resident_bytes: u64,
    /// Virtual memory size, bytes.
    pub virtual_bytes: u64,
    /// Threads.
    pub threads: u64,
    /// Start time, seconds since the Unix epoch (0 when unknown).
    pub start_time_seconds: f64,
    /// Open file descriptors.
    pub open_fds: u64,
    /// The soft limit on open file descriptors (0 when unknown or unlimited).
    pub max_fds: u64,
}

impl ProcessStats {
    /// Reads this process's figures from `/proc`; `None` where `/proc` is not
    /// there (or not Linux's).
    pub fn read() -> Option<ProcessStats> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let mut s = ProcessStats::parse(&stat, &status)?;
        if let Some(btime) = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|t| boot_time(&t))
        {
            s.start_time_seconds += btime as f64;
        } else {
            s.start_time_seconds = 0.0;
        }
        s.open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
        s.max_fds = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|t| max_open_files(&t))
            .unwrap_or(0);
        Some(s)
    }

    /// Parses `/proc/self/stat` and `/proc/self/status`. The start time is left
    /// in seconds since boot; [`ProcessStats::read`] adds the boot time.
    pub fn parse(stat: &str, status: &str) -> Option<ProcessStats> {
        // The command name (field 2) is in parentheses and may hold spaces or
        // parentheses itself: the fields that follow start after the last ')'.
        let rest = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // `fields[0]` is field 3 (state); field n is `fields[n - 3]`.
        let field = |n: usize| -> Option<u64> { fields.get(n - 3)?.parse().ok() };
        let utime = field(14)?;
        let stime = field(15)?;
        let resident_kib = status.lines().find_map(|l| {
            let v = l.strip_prefix("VmRSS:")?;
            v.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()
        });
        Some(ProcessStats {
            cpu_seconds: (utime + stime) as f64 / USER_HZ,
            resident_bytes: resident_kib.unwrap_or(0) * 1024,
            virtual_bytes: field(23)?,
            threads: field(20)?,
            start_time_seconds: field(22)? as f64 / USER_HZ,
            open_fds: 0,
            max_fds: 0,
        })
    }
}

/// `btime` of `/proc/stat`: boot time, seconds since the epoch.
fn boot_time(proc_stat: &str) -> Option<u64> {
    proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())
}

/// The soft limit of "Max open files" in `/proc/self/limits`.
fn max_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Writes [`ProcessStats::read`] at every scrape, under the standard names.
/// Register it on a registry without a prefix.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(s) = ProcessStats::read() else {
            return Ok(());
        };
        let counter = ConstCounter::new(s.cpu_seconds);
        counter.encode(encoder.encode_descriptor(
            "process_cpu",
            "Total user and system CPU time spent in seconds.",
            Some(&Unit::Seconds),
            counter.metric_type(),
        )?)?;
        let gauges: [(&str, &str, Option<Unit>, f64); 6] = [
            (
                "process_resident_memory",
                "Resident memory size in bytes.",
                Some(Unit::Bytes),
                s.resident_bytes as f64,
            ),
            (
                "process_virtual_memory",
                "Virtual memory size in bytes.",
                Some(Unit::Bytes),
                s.virtual_bytes as f64,
            ),
            (
                "process_start_time",
                "Start time of the process since unix epoch in seconds.",
                Some(Unit::Seconds),
                s.start_time_seconds,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors.",
                None,
                s.open_fds as f64,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors.",
                None,
                s.max_fds as f64,
            ),
            (
                "process_threads",
                "Number of OS threads in the process.",
                None,
                s.threads as f64,
            ),
        ];
        for (name, help, unit, value) in gauges {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(
                name,
                help,
                unit.as_ref(),
                gauge.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The process metrics alone in the OpenMetrics text format.
    fn encode() -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(ProcessCollector));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        out
    }

    /// A real `/proc/self/stat` line, with a command name holding a space and a
    /// parenthesis, as a thread may rename itself.
    const STAT: &str = "4242 (shoal peer) x) S 1 4242 4242 0 -1 4194560 5012 0 3 0 \
        1234 567 0 0 20 0 17 0 98765 1073741824 9000 18446744073709551615 1 1 0 0 0 0 0 \
        4096 17475 0 0 0 17 1 0 0 0 0 0";

    const STATUS: &str =
        "Name:\tshoal-peer\nVmPeak:\t 1100000 kB\nVmRSS:\t   36000 kB\nThreads:\t17\n";

    #[test]
    fn parses_cpu_memory_threads_and_start_from_proc_text() {
        let s = ProcessStats::parse(STAT, STATUS).expect("parses");
        assert_eq!(s.cpu_seconds, (1234.0 + 567.0) / 100.0);
        assert_eq!(s.resident_bytes, 36_000 * 1024);
        assert_eq!(s.virtual_bytes, 1_073_741_824);
        assert_eq!(s.threads, 17);
        assert_eq!(s.start_time_seconds, 987.65);
    }

    #[test]
    fn truncated_stat_is_none_not_a_panic() {
        assert_eq!(ProcessStats::parse("4242 (x) S 1 2 3", STATUS), None);
        assert_eq!(ProcessStats::parse("no parenthesis", STATUS), None);
        assert_eq!(ProcessStats::parse("", ""), None);
    }

    #[test]
    fn reads_boot_time_and_the_soft_fd_limit() {
        assert_eq!(
            boot_time("cpu  1 2 3\nbtime 1796389280\nprocesses 9\n"),
            Some(1_796_389_280)
        );
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
            Max processes             95524                95524                processes \n\
            Max open files            20000                524288               files     \n";
        assert_eq!(max_open_files(limits), Some(20_000));
        assert_eq!(
            max_open_files("Max open files  unlimited  unlimited  files"),
            None
        );
    }

    #[test]
    fn this_process_reports_its_own_cpu_and_memory_under_the_standard_names() {
        if !std::path::Path::new("/proc/self/stat").exists() {
            eprintln!("skipping: no /proc here");
            return;
        }
        // Burn a little CPU so the counter is above zero at 100 ticks a second.
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed() < std::time::Duration::from_millis(30) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let s = ProcessStats::read().expect("reads /proc/self");
        assert!(s.cpu_seconds > 0.0, "{s:?}");
        assert!(
            s.resident_bytes > 0 && s.threads >= 1 && s.open_fds >= 3,
            "{s:?}"
        );
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            s.start_time_seconds > now - 3600.0 && s.start_time_seconds <= now + 1.0,
            "{s:?}"
        );
        let text = encode();
        for name in [
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_start_time_seconds ",
            "process_open_fds ",
            "process_threads ",
        ] {
            assert!(
                text.lines().any(|l| l.starts_with(name)),
                "{name} missing in:\n{text}"
            );
        }
    }
}

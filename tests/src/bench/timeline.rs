//! `shoal-bench-swarm --timeline`: every node's downlink sampled during the pulls, and
//! where each node's idle time falls.
//!
//! A node's pull takes its bytes ÷ its link rate plus the time its downlink idled. Where
//! that idle time falls says what to work on: before the node's first bytes (plans,
//! elections, the first piece reaching the swarm), in the first second after them (the
//! swarm starting up), or later (the pieces it lacks are held by parents busy with other
//! children). The samples are the shaping queues' counters ([`Lab::downlink_counters`]),
//! so headers count as the rate charges them.
//!
//! Sampling runs one `tc` every [`SAMPLE_EVERY`] on the machine the nodes share, so it
//! is opt-in: the default figures are taken without it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::netns::Lab;

use super::fetch;

/// How often the downlinks are sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(50);

/// Bytes a downlink carries before its pull counts as started: the plan, TLS and HTTP
/// exchanges before the first piece are a few KiB.
pub const FIRST_BYTES: u64 = 64 << 10;

/// One sample: when, in ms since the pulls' shared start (negative before it), and
/// what every host's downlink had carried by then, by role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// Ms since the shared start.
    pub at_ms: i64,
    /// Each host's downlink counter, by role.
    pub bytes: BTreeMap<String, u64>,
}

/// Samples `lab`'s downlinks every [`SAMPLE_EVERY`] until `stop` is set; times are
/// relative to `start_ms` (Unix ms, the pulls' shared start).
pub fn sample(lab: &Lab, start_ms: u64, stop: &AtomicBool) -> anyhow::Result<Vec<Sample>> {
    let mut samples = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let at_ms = fetch::unix_ms() as i64 - start_ms as i64;
        samples.push(Sample {
            at_ms,
            bytes: lab.downlink_counters()?,
        });
        std::thread::sleep(SAMPLE_EVERY);
    }
    Ok(samples)
}

/// Where one node's downlink idled during its pull, in seconds. Idle time is the time
/// passed less the node's bytes ÷ its link rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Idle {
    /// From the shared start to its first [`FIRST_BYTES`] (all of it idle).
    pub before_first_bytes: f64,
    /// In the second after that.
    pub first_second: f64,
    /// From then until its pull ended.
    pub after: f64,
}

impl Idle {
    /// All of it.
    pub fn total(&self) -> f64 {
        self.before_first_bytes + self.first_second + self.after
    }
}

/// Where `role`'s downlink idled: `samples` in time order, `rate` its link in bytes per
/// second, `done_ms` when its pull ended (ms since the shared start). `None` when its
/// downlink never carried [`FIRST_BYTES`] within the samples.
pub fn idle(samples: &[Sample], role: &str, rate: f64, done_ms: i64) -> Option<Idle> {
    let series: Vec<(i64, u64)> = samples
        .iter()
        .filter_map(|s| Some((s.at_ms, *s.bytes.get(role)?)))
        .collect();
    // The counter at the shared start: the last sample at or before it.
    let base = series
        .iter()
        .take_while(|(at, _)| *at <= 0)
        .last()
        .or(series.first())?
        .1;
    let first = series
        .windows(2)
        .find(|w| w[1].1.saturating_sub(base) >= FIRST_BYTES)
        .map(|w| w[0].0.max(0))?;
    // (time, busy time) of the first second and of the rest.
    let (mut early, mut late) = ((0.0, 0.0), (0.0, 0.0));
    for w in series.windows(2) {
        let ((a, bytes_a), (b, bytes_b)) = (w[0], w[1]);
        let (from, to) = (a.max(first), b.min(done_ms));
        if to <= from {
            continue;
        }
        // Part of the interval, part of its bytes (the counter between two samples is
        // taken as even).
        let share = (to - from) as f64 / (b - a) as f64;
        let busy = bytes_b.saturating_sub(bytes_a) as f64 * share / rate;
        let secs = (to - from) as f64 / 1000.0;
        let phase = if from < first + 1000 {
            &mut early
        } else {
            &mut late
        };
        phase.0 += secs;
        phase.1 += busy;
    }
    let idle = |(secs, busy): (f64, f64)| (secs - busy).max(0.0);
    Some(Idle {
        before_first_bytes: first as f64 / 1000.0,
        first_second: idle(early),
        after: idle(late),
    })
}

/// The samples as CSV: `ms,role,bytes`, one row per host and sample.
pub fn csv(samples: &[Sample]) -> String {
    let mut out = String::from("ms,role,bytes\n");
    for s in samples {
        for (role, bytes) in &s.bytes {
            out.push_str(&format!("{},{role},{bytes}\n", s.at_ms));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 100 Mbit/s.
    const RATE: f64 = 12.5e6;

    /// Samples of one node `n` every 50 ms from `from_ms` to `to_ms`, its counter
    /// given by `bytes_at(ms)`.
    fn samples(from_ms: i64, to_ms: i64, bytes_at: impl Fn(i64) -> u64) -> Vec<Sample> {
        (from_ms / 50..=to_ms / 50)
            .map(|i| Sample {
                at_ms: i * 50,
                bytes: BTreeMap::from([("n".to_string(), bytes_at(i * 50))]),
            })
            .collect()
    }

    /// Bytes at full rate from `start` ms on, plus a few KiB of set-up before.
    fn full_rate_from(start: i64) -> impl Fn(i64) -> u64 {
        move |ms| 4096 + ((ms - start).max(0) as f64 / 1000.0 * RATE) as u64
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 0.011
    }

    #[test]
    fn a_node_at_full_rate_from_its_first_byte_idles_only_before_it() {
        let s = samples(-200, 5000, full_rate_from(300));
        let idle = idle(&s, "n", RATE, 5000).unwrap();
        assert!(close(idle.before_first_bytes, 0.3), "{idle:?}");
        assert!(close(idle.first_second, 0.0), "{idle:?}");
        assert!(close(idle.after, 0.0), "{idle:?}");
    }

    #[test]
    fn a_stall_is_counted_where_it_falls() {
        // Full rate from 0, except nothing from 500 to 700 ms and from 3000 to 3400 ms.
        let bytes_at = |ms: i64| {
            let busy_ms = ms.min(500) + (ms.min(3000) - 700).max(0) + (ms - 3400).max(0);
            4096 + (busy_ms as f64 / 1000.0 * RATE) as u64
        };
        let s = samples(-100, 6000, bytes_at);
        let idle = idle(&s, "n", RATE, 6000).unwrap();
        assert!(close(idle.before_first_bytes, 0.0), "{idle:?}");
        assert!(close(idle.first_second, 0.2), "{idle:?}");
        assert!(close(idle.after, 0.4), "{idle:?}");
        assert!(close(idle.total(), 0.6), "{idle:?}");
    }

    #[test]
    fn time_after_the_pull_ended_is_not_idle() {
        // Done at 2000 ms; the counter stops there and sampling goes on.
        let s = samples(0, 4000, |ms| full_rate_from(0)(ms.min(2000)));
        let idle = idle(&s, "n", RATE, 2000).unwrap();
        assert!(close(idle.total(), 0.0), "{idle:?}");
    }

    #[test]
    fn a_node_that_got_nothing_or_is_not_sampled_has_no_figure() {
        let s = samples(0, 1000, |_| 4096);
        assert_eq!(idle(&s, "n", RATE, 1000), None);
        assert_eq!(idle(&s, "other", RATE, 1000), None);
        assert_eq!(idle(&[], "n", RATE, 1000), None);
    }

    #[test]
    fn the_csv_has_a_row_per_host_and_sample() {
        let s = samples(0, 50, |ms| ms as u64);
        assert_eq!(csv(&s), "ms,role,bytes\n0,n,0\n50,n,50\n");
    }
}

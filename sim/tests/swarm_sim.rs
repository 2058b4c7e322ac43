//! Smoke test of the swarm simulator (cheap: 50 nodes, a 32 MiB blob): every node
//! completes, upstream sends the blob once, the back-to-source node uploads it fewer
//! than 1.75 times, every report is accepted, and the run is deterministic (same seed, same
//! outcome). No timing is asserted.

use std::time::Duration;

use shoal_sim::report::Figures;
use shoal_sim::swarm::{Config, Swarm};

fn config(seed: u64) -> Config {
    Config {
        peers: 50,
        size: 32 << 20,
        slow_fraction: 0.25,
        step: Duration::from_millis(10),
        seed,
        ..Config::default()
    }
}

/// The figures of a run of `cfg`.
fn figures(cfg: Config) -> Figures {
    let size = cfg.size;
    Figures::of(&Swarm::new(cfg).unwrap().run(), size)
}

/// A 64 MiB blob pulled by `peers` nodes at a time step of `step_ms`, seed 1.
fn small(peers: usize, step_ms: u64) -> Config {
    Config {
        peers,
        size: 64 << 20,
        step: Duration::from_millis(step_ms),
        seed: 1,
        ..Config::default()
    }
}

#[test]
fn fifty_nodes_complete_with_one_upstream_copy_deterministically() {
    let a = Swarm::new(config(7)).unwrap().run();
    let f = Figures::of(&a, 32 << 20);
    println!("{}\n{}", f.summary(), f.line());
    assert_eq!(f.completed, 50, "every node completes");
    assert_eq!(a.refused_reports, 0, "the scheduler accepted every report");
    assert!(
        (f.egress_ratio - 1.0).abs() < 1e-9,
        "upstream sent the blob once, not {}",
        f.egress_ratio
    );
    // The source hands each new piece to one child and leaves the spreading to the
    // swarm (`SEED_HOLD`): 1.50 copies here (most of them after it completed, this blob
    // being small); without the seed hold it sent this blob about twice (2.00, 2.03).
    assert!(
        f.source_upload_copies < 1.75,
        "the back-to-source node uploaded {:.2} copies of the blob",
        f.source_upload_copies
    );
    let b = Swarm::new(config(7)).unwrap().run();
    assert_eq!(a, b, "same seed, same outcome");
}

/// The model's own clock must not slow a download: upstream is one continuous
/// body, so a node alone streams it at its line rate whatever the time step
/// (before the fix, each piece ended on a step boundary and the next started
/// there: 1.19 × the line rate at 10 ms steps). Simulated time, not wall time.
#[test]
fn a_node_alone_streams_upstream_at_its_line_rate_whatever_the_step() {
    for step_ms in [1, 5, 10, 20] {
        let f = figures(small(1, step_ms));
        assert!(
            f.source_ratio < 1.01,
            "step {step_ms} ms: the lone node took {:.3} × its line rate",
            f.source_ratio
        );
    }
}

/// A request, its answer and the next request take no step of their own: with a
/// 200 µs latency they fit many times into a 5 ms step. A child fetching each piece
/// from the back-to-source node (one request at a time to a parent still
/// downloading) finished at 1.34 × its line rate when every exchange waited for the
/// next step, 1.19 now (256 KiB pieces, piece rule 3; what is left is flows starting
/// on step boundaries, up to 5 ms of a piece's 21 ms). Simulated time, not wall time.
#[test]
fn a_request_and_its_answer_fit_within_a_step() {
    let f = figures(small(2, 5));
    assert!(
        f.max_ratio < 1.25,
        "the child took {:.3} × its line rate",
        f.max_ratio
    );
}

/// With half the nodes slow, some orders of opening put a slow node first; the
/// scheduler still elects a full-rate one, since the nodes declare their rates.
/// With `--undeclared-rates` some seed elects a slow one (the test shows
/// something).
#[test]
fn a_full_rate_node_is_elected_back_to_source_whatever_opens_first() {
    let run = |seed, undeclared_rates| {
        figures(Config {
            peers: 8,
            size: 8 << 20,
            slow_fraction: 0.5,
            undeclared_rates,
            seed,
            ..Config::default()
        })
        .source_rate
    };
    let seeds = 1..=8;
    assert!(
        seeds.clone().any(|seed| run(seed, true) < 1.0),
        "no seed elected a slow source: the test shows nothing"
    );
    for seed in seeds {
        assert_eq!(run(seed, false), 1.0, "seed {seed}");
    }
}

/// A slow node pulls first, alone, and the others a second later, too late for
/// the election's wait: the scheduler hands the rest of the blob over to a
/// full-rate node, and the swarm receives at full rate with one upstream copy.
/// Without the hand-over every node waits for the slow source.
#[test]
fn a_slow_first_puller_hands_the_blob_over_to_a_full_rate_node() {
    let run = |hand_over_ratio| {
        figures(Config {
            peers: 8,
            size: 32 << 20,
            slow_fraction: 0.25,
            slow_first_by: Some(std::time::Duration::from_secs(1)),
            hand_over_ratio,
            ..Config::default()
        })
    };
    let with = run(2.0);
    let without = run(0.0);
    assert!(with.p50_ratio < 1.5, "{with:?}");
    assert!(with.egress_ratio < 1.05, "{with:?}");
    assert!(without.p50_ratio > 2.0, "{without:?}");
    assert!(without.egress_ratio < 1.01, "{without:?}");
}

/// The `--push` model variant (not what the code does; `docs/benchmarks.md`, "The
/// source pushes each new piece") still moves the whole blob with one upstream copy,
/// and its source, which refuses every request while it streams, sends each new
/// piece about once. Without the variant the source answers requests instead.
#[test]
fn the_push_variant_completes_with_one_upstream_copy() {
    let run = |push| {
        figures(Config {
            push,
            ..small(8, 5)
        })
    };
    let (pushed, asked) = (run(true), run(false));
    println!("push: {}\nrequests: {}", pushed.summary(), asked.summary());
    for f in [&pushed, &asked] {
        assert_eq!(f.completed, 8, "every node completes");
        assert!((f.egress_ratio - 1.0).abs() < 1e-9, "{}", f.egress_ratio);
    }
    assert!(
        (0.95..1.3).contains(&pushed.source_upload_copies),
        "the pushing source uploaded {:.2} copies",
        pushed.source_upload_copies
    );
    assert_ne!(pushed, asked, "the variant changes the run");
}

/// Framing makes a piece cost more link time than its payload: a node's downlink
/// carries the blob × the framing of what crosses it, so no node finishes under it,
/// and the swarm is slower than without. Framing below 1.0 is refused.
#[test]
fn framing_costs_link_time() {
    let plain = figures(small(4, 5));
    let framed = figures(Config {
        peer_framing: 1.06,
        upstream_framing: 1.05,
        ..small(4, 5)
    });
    println!("plain: {}\nframed: {}", plain.summary(), framed.summary());
    for f in [&plain, &framed] {
        assert_eq!(f.completed, 4, "every node completes");
        assert!((f.egress_ratio - 1.0).abs() < 1e-9, "{}", f.egress_ratio);
    }
    assert!(
        framed.source_ratio >= 1.05 - 1e-3,
        "{}",
        framed.source_ratio
    );
    assert!(framed.p50_ratio >= 1.05 - 1e-3, "{}", framed.p50_ratio);
    assert!(
        framed.p50_ratio > plain.p50_ratio + 0.03,
        "framing 1.06 moved p50 only from {:.3} to {:.3}",
        plain.p50_ratio,
        framed.p50_ratio
    );
    let bad = Config {
        peer_framing: 0.9,
        ..small(4, 5)
    };
    assert!(Swarm::new(bad).is_err(), "framing under 1.0 accepted");
}

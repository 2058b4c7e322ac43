//! Smoke test of the swarm simulator (cheap: 50 nodes, a 32 MiB blob): every node
//! completes, upstream sends the blob once, every report is accepted, and the run
//! is deterministic (same seed, same outcome). No timing is asserted.

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
    let b = Swarm::new(config(7)).unwrap().run();
    assert_eq!(a, b, "same seed, same outcome");
}

//! The ranking's tests: the cache against a slow reference, and the overflow past
//! the child cap for a download short of parents.

use std::time::Instant;

use rand::SeedableRng;
use rand::rngs::SmallRng;
use shoal_proto::Digest;

use super::*;
use crate::core::{HeldTask, PeerInfo, PieceDone, Scheduler};

/// 40 pieces of the smallest size.
const SIZE: u64 = 40 * shoal_proto::piece::MIN_PIECE_SIZE as u64;

fn id(p: u32) -> PeerId {
    PeerId::parse(&format!("p{p:03}")).unwrap()
}

fn info(p: u32) -> PeerInfo {
    PeerInfo {
        id: id(p),
        hostname: format!("n{p}"),
        addr: format!("10.0.{}.{}:7651", p / 200, p % 200 + 1)
            .parse()
            .unwrap(),
        zone: format!("z{}", p % 3),
        rack: String::new(),
        upload_slots: 4,
        link_mbps: 0,
    }
}

/// The rank keys of the parents `child` should get, computed the slow way
/// (visiting every holding): the best eligible under the cap, and when they
/// are fewer than half of `max_parents`, the best of those at most
/// [`CHILD_CAP_OVERFLOW`] past it after them.
fn reference_keys(
    core: &Scheduler,
    task: &Task,
    child: &PeerId,
    current: &[PeerId],
) -> Vec<RankKey> {
    let k = core.config.max_parents;
    let cap = core.config.max_children_per_parent;
    let mut keys = eligible_keys(core, task, child, current, 0..cap);
    keys.truncate(k);
    if keys.len() < k.div_ceil(2) {
        let over = eligible_keys(core, task, child, &[], cap..cap + CHILD_CAP_OVERFLOW);
        keys.extend(over.into_iter().take(k - keys.len()));
    }
    keys
}

/// The sorted rank keys of the candidates for `child` that are `current` parents
/// or have a number of children in `children`.
fn eligible_keys(
    core: &Scheduler,
    task: &Task,
    child: &PeerId,
    current: &[PeerId],
    children: std::ops::Range<u32>,
) -> Vec<RankKey> {
    let config = &core.config;
    let refused = &task.holdings[child].refused;
    let mine = &task.holdings[child].pieces;
    let next = mine.first_missing();
    let window_end = next.map_or(0, |n| n.saturating_add(config.window));
    let zone = &core.peers[child].info.zone;
    let mut keys = Vec::new();
    for (pid, h) in &task.holdings {
        let peer = &core.peers[pid];
        if pid == child
            || task.bad.contains(pid)
            || refused.contains(pid)
            || peer.quarantined(config)
        {
            continue;
        }
        if !current.contains(pid) && !children.contains(&peer.children) {
            continue;
        }
        let source = task.back_to_source.contains_key(pid);
        if source && children.start >= config.max_children_per_parent {
            continue;
        }
        let c = Candidate {
            id: pid.clone(),
            complete: h.complete || h.pieces.is_full(),
            active: task.downloads.contains_key(pid) || source,
            source,
            zone: 0,
            load: load_percent(config, peer),
            pieces: h.pieces.clone(),
        };
        if let Some(tier) = true_tier(&c, mine, next, window_end) {
            keys.push((tier, &peer.info.zone != zone, !c.complete, c.load));
        }
    }
    keys.sort();
    keys
}

/// Random swarms where children hold pieces out of order: whatever the
/// cache picks has exactly the ranks of the best eligible candidates.
#[test]
fn the_cache_picks_the_best_ranks_the_slow_way_would() {
    let digest = Digest::from_sha256([9; 32]);
    for seed in 0..40u64 {
        let mut rng = SmallRng::seed_from_u64(seed);
        let config = CoreConfig {
            max_children_per_parent: rng.random_range(1..4),
            seed,
            ..CoreConfig::default()
        };
        let mut core = Scheduler::new(config);
        let now = Instant::now();
        let n = 60;
        for p in 0..n {
            let held = if p < 3 {
                vec![HeldTask {
                    digest,
                    size: SIZE,
                    piece_hashes: vec![[7; 32]; 40],
                }]
            } else {
                vec![]
            };
            core.join(now, info(p), held).unwrap();
            let load = crate::core::Load {
                active_uploads: rng.random_range(0..3),
                active_downloads: 0,
            };
            core.heartbeat(now, &id(p), load).unwrap();
        }
        for p in 3..n {
            core.open_plan(now, &id(p), digest, SIZE).unwrap();
            let pieces: Vec<PieceDone> = (0..40)
                .filter(|_| rng.random_bool(0.3))
                .map(|index| PieceDone { index, hash: None })
                .collect();
            core.report_pieces(now, &id(p), digest, &pieces).unwrap();
        }
        core.flush();
        core.drain_effects();
        let task = &core.tasks[&digest];
        let mut cache = RankCache::new(&core.config, &core.peers, task);
        let mut rank_rng = SmallRng::seed_from_u64(seed);
        for p in 3..n {
            let child = id(p);
            let current = task.downloads[&child].parents.clone();
            let picked = cache.rank(
                &core.config,
                &core.peers,
                task,
                &child,
                &current,
                &mut rank_rng,
            );
            let want = reference_keys(&core, task, &child, &current);
            let mine = &task.holdings[&child].pieces;
            let next = mine.first_missing();
            let window_end = next.map_or(0, |n| n.saturating_add(core.config.window));
            let got: Vec<RankKey> = picked
                .iter()
                .map(|q| {
                    let c = &cache.candidates[cache.index[q] as usize];
                    let tier = true_tier(c, mine, next, window_end).expect("useful");
                    (
                        tier,
                        core.peers[q].info.zone != core.peers[&child].info.zone,
                        !c.complete,
                        c.load,
                    )
                })
                .collect();
            assert_eq!(got, want, "seed {seed}, child {child}");
            assert!(!picked.contains(&child));
        }
    }
}

/// With every holder at its child cap, a download ranked later would get only
/// the downloads ranked after it: it takes parents up to
/// [`CHILD_CAP_OVERFLOW`] past the cap, and no parent goes further.
#[test]
fn a_download_short_of_parents_takes_them_past_the_cap_within_a_bound() {
    let digest = Digest::from_sha256([9; 32]);
    let config = CoreConfig {
        max_parents: 4,
        max_children_per_parent: 1,
        ..CoreConfig::default()
    };
    let cap = config.max_children_per_parent;
    let mut core = Scheduler::new(config);
    let now = Instant::now();
    for p in 0..12 {
        let held = match p {
            0..4 => vec![HeldTask {
                digest,
                size: SIZE,
                piece_hashes: vec![[7; 32]; 40],
            }],
            _ => vec![],
        };
        core.join(now, info(p), held).unwrap();
    }
    let holders: Vec<PeerId> = (0..4).map(id).collect();
    let mut got = Vec::new();
    for p in 4..12 {
        core.open_plan(now, &id(p), digest, SIZE).unwrap();
        core.flush();
        let effects = core.drain_effects();
        let parents =
            crate::core::test_support::parents_sent_to(&effects, &id(p)).expect("a plan update");
        for q in (0..12).map(id) {
            let children = core.children_of(&q).unwrap();
            assert!(
                children <= cap + CHILD_CAP_OVERFLOW,
                "{q} serves {children} downloads"
            );
        }
        got.push(parents);
    }
    // The first download fills every holder's cap.
    let mut first = got[0].clone();
    first.sort();
    assert_eq!(first, holders);
    // The second finds one parent under the cap (the first download, which
    // has nothing yet) and takes three holders past it.
    assert_eq!(got[1].len(), 4, "{:?}", got[1]);
    assert!(got[1].contains(&id(4)));
    assert_eq!(got[1].iter().filter(|q| holders.contains(q)).count(), 3);
    // Once the holders are at cap + 2 they are offered to nobody more.
    let served: u32 = holders.iter().map(|q| core.children_of(q).unwrap()).sum();
    assert_eq!(served, 4 * (cap + CHILD_CAP_OVERFLOW));
    // Nothing was released: every child past a cap was counted once.
    let past: u32 = (0..12)
        .map(|p| core.children_of(&id(p)).unwrap().saturating_sub(cap))
        .sum();
    assert!(past >= 8, "{past}");
    assert_eq!(core.stats().offers_past_cap, u64::from(past));
    assert!(
        got.last().unwrap().iter().all(|q| !holders.contains(q)),
        "{:?}",
        got.last()
    );
}

/// The peer fetching the task from upstream is never offered past its cap: its
/// uplink is where new pieces enter the swarm (in a 1,000-node simulation, taking it
/// past the cap cost the median node 0.03 × line rate).
#[test]
fn the_back_to_source_peer_is_not_offered_past_its_cap() {
    let digest = Digest::from_sha256([9; 32]);
    let mut core = Scheduler::new(CoreConfig {
        max_parents: 4,
        max_children_per_parent: 1,
        ..CoreConfig::default()
    });
    let now = Instant::now();
    for p in 0..3 {
        core.join(now, info(p), vec![]).unwrap();
    }
    core.open_plan(now, &id(0), digest, SIZE).unwrap();
    core.tick(now);
    core.flush();
    core.drain_effects();
    assert_eq!(core.back_to_source_of(&digest), vec![id(0)]);
    core.task_started(now, &id(0), digest, SIZE).unwrap();
    let mut parents = Vec::new();
    for p in 1..3 {
        core.open_plan(now, &id(p), digest, SIZE).unwrap();
        core.flush();
        let effects = core.drain_effects();
        parents.push(
            crate::core::test_support::parents_sent_to(&effects, &id(p)).expect("a plan update"),
        );
    }
    assert_eq!(parents[0], vec![id(0)], "the source, under its cap");
    // Short of parents, the second download takes the first one (under its cap),
    // and not the source past it.
    assert_eq!(parents[1], vec![id(1)]);
    assert_eq!(core.children_of(&id(0)), Some(1));
}

//! Parent ranking: which peers a downloading peer (the child) should fetch
//! from. A pure function of one task's state, the peer table and an RNG.
//!
//! Order, best first:
//! 1. what the parent holds: the child's next missing piece > a piece in the
//!    window after it > any piece the child lacks > nothing yet (a peer still
//!    downloading, which will have pieces soon);
//! 2. same zone as the child;
//! 3. complete before in-progress;
//! 4. lower upload load (reported uploads ÷ upload slots);
//! 5. random, to spread load.
//!
//! Never offered: the child itself, departed or quarantined peers, peers
//! reported bad for this task, parents at their child cap (unless already a
//! parent of this child), and anyone when the task's size is unknown.

use std::collections::HashMap;

use rand::Rng;

use super::{CoreConfig, Peer, PeerId, Task};

/// Sort key of a candidate, smallest first: (tier, other zone, in progress,
/// load percent, random tie-break).
type RankKey = (u8, bool, bool, u32, u64);

/// A tie-break that is random per decision (`salt`) but does not depend on
/// the order candidates are visited in, so a seed gives the same plan on
/// every run (splitmix64 of the salt and the peer's id hash).
fn tie_break(salt: u64, id_hash: u64) -> u64 {
    let mut z = salt ^ id_hash;
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Ranks candidate parents for `child` and returns the best
/// `config.max_parents`.
pub(crate) fn rank_parents(
    config: &CoreConfig,
    peers: &HashMap<PeerId, Peer>,
    task: &Task,
    child: &PeerId,
    current: &[PeerId],
    rng: &mut impl Rng,
) -> Vec<PeerId> {
    let Some(shape) = task.shape else {
        return Vec::new();
    };
    let Some(mine) = task.holdings.get(child) else {
        return Vec::new();
    };
    let Some(child_peer) = peers.get(child) else {
        return Vec::new();
    };
    let salt: u64 = rng.random();
    let next = mine.pieces.first_missing();
    let window_end = next.map_or(0, |n| n.saturating_add(config.window));
    let mut scored: Vec<(RankKey, &PeerId)> = Vec::new();
    for (id, h) in &task.holdings {
        if id == child || task.bad.contains(id) {
            continue;
        }
        let Some(peer) = peers.get(id) else { continue };
        if peer.quarantined(config) {
            continue;
        }
        let already = current.contains(id);
        if !already && peer.children >= config.max_children_per_parent {
            continue;
        }
        let complete = h.complete || (shape.piece_count() > 0 && h.pieces.is_full());
        let tier = if complete {
            0
        } else {
            match h.pieces.first_not_in(&mine.pieces) {
                Some(i) if Some(i) == next => 0,
                Some(i) if i < window_end => 1,
                Some(_) => 2,
                // Holds nothing the child lacks: useful only while it is still
                // downloading (it will gain pieces the child lacks).
                None if task.downloads.contains_key(id) || task.back_to_source.contains_key(id) => {
                    3
                }
                None => continue,
            }
        };
        let other_zone = peer.info.zone != child_peer.info.zone;
        let load = peer.load.active_uploads.saturating_mul(100) / peer.upload_slots(config).max(1);
        scored.push((
            (
                tier,
                other_zone,
                !complete,
                load,
                tie_break(salt, peer.id_hash),
            ),
            id,
        ));
    }
    // Only the best few are kept: select them, then order just those.
    let k = config.max_parents;
    if scored.len() > k && k > 0 {
        scored.select_nth_unstable(k - 1);
        scored.truncate(k);
    }
    scored.sort_unstable();
    scored
        .into_iter()
        .take(config.max_parents)
        .map(|(_, id)| id.clone())
        .collect()
}

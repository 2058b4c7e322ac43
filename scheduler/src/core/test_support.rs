//! Helpers shared by the core's unit tests: peer ids and infos, and the parents
//! the last plan update sent to a peer.

use super::{Effect, PeerId, PeerInfo};

/// The size of the tests' blobs: two pieces of the smallest size.
pub(crate) const SIZE: u64 = 2 * shoal_proto::piece::MIN_PIECE_SIZE as u64;

/// `p<n>`.
pub(crate) fn id(p: u8) -> PeerId {
    PeerId::parse(&format!("p{p}")).unwrap()
}

/// Peer `p` at `10.0.0.<p+1>:7651`, no zone.
pub(crate) fn info(p: u8) -> PeerInfo {
    PeerInfo {
        id: id(p),
        hostname: format!("n{p}"),
        addr: format!("10.0.0.{}:7651", p + 1).parse().unwrap(),
        zone: String::new(),
        rack: String::new(),
        upload_slots: 0,
        link_mbps: 0,
    }
}

/// The parents of the last plan update for `peer` among `effects`.
pub(crate) fn parents_sent_to(effects: &[Effect], peer: &PeerId) -> Option<Vec<PeerId>> {
    effects.iter().rev().find_map(|e| match e {
        Effect::Plan {
            peer: p, update, ..
        } if p == peer => Some(update.parents.iter().map(|o| o.id.clone()).collect()),
        _ => None,
    })
}

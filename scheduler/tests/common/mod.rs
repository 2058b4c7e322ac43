//! The swarm the operator API tests look at: three peers and two tasks in
//! different states, built by calling the core directly.

// Each test crate uses part of this module.
#![allow(dead_code)]

use std::sync::Arc;

use shoal_proto::Digest;
use shoal_scheduler::core::{CoreConfig, HeldTask, PeerId, PeerInfo, PieceDone, Scheduler};
use shoal_scheduler::metrics::Metrics;
use shoal_scheduler::state::SchedulerState;

/// 3 pieces of the smallest size, the last one short.
pub(crate) const SIZE: u64 = 2 * shoal_proto::piece::MIN_PIECE_SIZE as u64 + 12345;

pub(crate) fn id(p: u8) -> PeerId {
    PeerId::parse(&format!("peer-{p}")).unwrap()
}

pub(crate) fn info(p: u8) -> PeerInfo {
    PeerInfo {
        id: id(p),
        hostname: format!("node-{p}"),
        addr: format!("10.0.0.{}:7651", p + 1).parse().unwrap(),
        zone: "zone-a".into(),
        rack: String::new(),
        upload_slots: 0,
        link_mbps: 0,
    }
}

/// `held`: peer-0 holds it complete since it joined.
pub(crate) fn held() -> Digest {
    Digest::from_sha256([0x11; 32])
}

/// `fresh`: peer-1 fetches it from upstream (one piece so far), peer-2
/// downloads it from peer-1.
pub(crate) fn fresh() -> Digest {
    Digest::from_sha256([0x22; 32])
}

/// A scheduler with three peers and two tasks in different states.
pub(crate) fn swarm() -> (Arc<SchedulerState>, Arc<Metrics>) {
    let state = SchedulerState::new(Scheduler::new(CoreConfig::default()));
    state.with_core(|core, now| {
        let task = HeldTask {
            digest: held(),
            size: SIZE,
            piece_hashes: vec![],
        };
        core.join(now, info(0), vec![task]).unwrap();
        core.join(now, info(1), vec![]).unwrap();
        core.join(now, info(2), vec![]).unwrap();
        core.open_plan(now, &id(1), fresh(), 0).unwrap();
        assert_eq!(
            core.back_to_source_of(&fresh()),
            vec![id(1)],
            "first requester fetches upstream"
        );
        core.task_started(now, &id(1), fresh(), SIZE).unwrap();
        let piece = PieceDone {
            index: 0,
            hash: Some([7; 32]),
        };
        core.report_pieces(now, &id(1), fresh(), &[piece]).unwrap();
        core.open_plan(now, &id(2), fresh(), SIZE).unwrap();
        core.flush();
    });
    (state, Arc::new(Metrics::new()))
}

//! The check behind the `scheduler_wire` fuzz target (`fuzz/`): what the scheduler reads
//! off the wire from peers, decoded from arbitrary bytes and converted by the gRPC
//! adapter's conversions (`convert.rs`), which are private to this crate.
//!
//! It runs under libFuzzer (`scripts/fuzz scheduler_wire`) and, on stable, in the peer's
//! corpus replay test (`peer/tests/fuzz_corpus.rs`). Not here: the core's reaction to
//! the converted values (the core's property tests and simulation cover it).

use prost::Message;
use shoal_proto::{Digest, v1};

use crate::convert;
use crate::core::{self, PeerId};

/// Decodes the input as each message a peer sends (`JoinRequest`, `PeerEvent`,
/// `PlanRequest`) and converts it; whatever is accepted must be exactly what was sent:
/// - peer ids and digests read back to the same text and parse again to the same value;
/// - a joining peer's fields are kept, its address is the `quic_addr` sent;
/// - every held task and reported piece is kept, each hash is the 32 bytes sent, and a
///   piece without a hash is reported as such.
///
/// Also encodes a `drop` command for a digest made of the input's first 32 bytes and
/// checks that a peer decodes the same digest.
pub fn scheduler_wire(data: &[u8]) {
    if let Ok(join) = v1::JoinRequest::decode(data) {
        join_request(join);
    }
    if let Ok(ev) = v1::PeerEvent::decode(data) {
        peer_event(ev);
    }
    if let Ok(req) = v1::PlanRequest::decode(data) {
        if let Ok(peer) = convert::peer_id(&req.peer_id) {
            same_peer(&peer, &req.peer_id);
        }
        if let Ok(d) = convert::digest(&req.digest) {
            same_digest(&d, &req.digest);
        }
    }
    if let Some(bytes) = data.first_chunk::<32>() {
        drop_command(Digest::from_sha256(*bytes));
    }
}

fn same_peer(id: &PeerId, sent: &str) {
    assert_eq!(id.as_str(), sent);
    assert_eq!(PeerId::parse(&id.to_string()).as_ref(), Ok(id));
}

fn same_digest(d: &Digest, sent: &str) {
    assert_eq!(d.to_string(), sent);
    assert_eq!(d.to_string().parse::<Digest>().as_ref(), Ok(d));
}

fn join_request(join: v1::JoinRequest) {
    if let Ok(info) = convert::peer_info(join.peer.clone()) {
        let sent = join.peer.expect("peer info was accepted");
        same_peer(&info.id, &sent.peer_id);
        assert_eq!(
            info.addr,
            sent.quic_addr.parse().expect("the address parsed")
        );
        assert_eq!(info.addr.to_string().parse().ok(), Some(info.addr));
        assert_eq!(
            (
                &info.hostname,
                &info.zone,
                &info.rack,
                info.upload_slots,
                info.link_mbps
            ),
            (
                &sent.hostname,
                &sent.zone,
                &sent.rack,
                sent.upload_slots,
                sent.link_mbps
            )
        );
    }
    let sent = join.tasks.clone();
    if let Ok(held) = convert::held_tasks(join.tasks) {
        assert_eq!(held.len(), sent.len());
        for (h, s) in held.iter().zip(&sent) {
            same_digest(&h.digest, &s.digest);
            assert_eq!(h.size, s.size);
            let hashes: Vec<&[u8]> = h.piece_hashes.iter().map(|x| &x[..]).collect();
            let sent_hashes: Vec<&[u8]> = s.piece_hashes.iter().map(Vec::as_slice).collect();
            assert_eq!(hashes, sent_hashes);
        }
    }
}

fn peer_event(ev: v1::PeerEvent) {
    use v1::peer_event::Event;
    match ev.event {
        Some(Event::Open(o)) => {
            if let Ok(peer) = convert::peer_id(&o.peer_id) {
                same_peer(&peer, &o.peer_id);
            }
        }
        Some(Event::Pieces(p)) => {
            let Ok(digest) = convert::digest(&p.digest) else {
                return;
            };
            same_digest(&digest, &p.digest);
            if let Ok(pieces) = convert::pieces(&digest, &p.pieces) {
                assert_eq!(pieces.len(), p.pieces.len());
                for (got, sent) in pieces.iter().zip(&p.pieces) {
                    assert_eq!(got.index, sent.index);
                    match got.hash {
                        Some(h) => assert_eq!(&h[..], &sent.hash[..]),
                        None => assert!(sent.hash.is_empty()),
                    }
                }
            }
        }
        Some(Event::BadParent(b)) => {
            if let Ok(parent) = convert::peer_id(&b.parent_id) {
                same_peer(&parent, &b.parent_id);
            }
            if let Ok(d) = convert::digest(&b.digest) {
                same_digest(&d, &b.digest);
            }
        }
        Some(
            Event::Started(v1::TaskStarted { digest, .. })
            | Event::Complete(v1::TaskComplete { digest })
            | Event::Evicted(v1::TaskEvicted { digest })
            | Event::DigestMismatch(v1::DigestMismatch { digest }),
        ) => {
            if let Ok(d) = convert::digest(&digest) {
                same_digest(&d, &digest);
            }
        }
        Some(Event::PreheatProgress(p)) => {
            if let Ok((job, r)) = convert::preheat_report(p) {
                assert!(!job.is_empty() && job.len() <= 64);
                assert!(r.bytes_done <= r.bytes_total && r.blobs_done <= r.blobs_total);
                if let Some(e) = r.error {
                    assert!(e.chars().count() <= 512 && !e.chars().any(char::is_control));
                }
            }
        }
        Some(Event::Heartbeat(_)) | None => {}
    }
}

fn drop_command(d: Digest) {
    let bytes = convert::command(core::Command::Drop(d)).encode_to_vec();
    let cmd = v1::SchedulerCommand::decode(&bytes[..]).expect("a command decodes");
    let Some(v1::scheduler_command::Command::Drop(v1::DropTask { digest })) = cmd.command else {
        panic!("a drop command decodes as {cmd:?}");
    };
    assert_eq!(digest.parse::<Digest>(), Ok(d));
}

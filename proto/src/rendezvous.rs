//! Which scheduler replica owns a task: rendezvous (highest-random-weight) hashing
//! of the task's digest over the replica set.
//!
//! Every replica gets a weight for every digest, `SHA-256(replica ‖ 0 ‖ digest)`
//! read as a number; the replica with the highest weight owns the task. The answer
//! depends only on the digest and the set, so every peer (and every replica) that
//! sees the same set agrees without talking to anyone, and a change of the set
//! moves only what it must:
//! - a replica that leaves gives each of its tasks to the runner-up of that task
//!   (the others keep theirs);
//! - a replica that joins takes exactly the tasks it now wins, about `1/n` of them,
//!   from whichever replica held each one.
//!
//! Replicas are named by a stable string both sides derive the same way: the
//! `host:port` a peer dials (an IP address for replicas found in DNS).
//!
//! Not here: where the set comes from (the peer's scheduler link resolves it) and
//! what a move costs (re-announcements, re-opened plans).

use sha2::{Digest as _, Sha256};

use crate::Digest;

/// The weight of `replica` for `digest`: the first 8 bytes of
/// `SHA-256(replica ‖ 0x00 ‖ digest bytes)`, big-endian. Stable across versions,
/// processes and machines (it is part of the protocol between peers and replicas).
pub fn weight(replica: &str, digest: &Digest) -> u64 {
    let mut h = Sha256::new();
    h.update(replica.as_bytes());
    h.update([0u8]);
    h.update(digest.as_bytes());
    let out = h.finalize();
    u64::from_be_bytes(out[..8].try_into().expect("32-byte hash"))
}

/// The replica that owns `digest` among `replicas`: the one of highest
/// [`weight`] (ties, which SHA-256 makes vanishingly rare, go to the smaller
/// name). `None` when the set is empty. Duplicates in the set change nothing.
pub fn owner<'a, I>(replicas: I, digest: &Digest) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    replicas
        .into_iter()
        .map(|r| (weight(r, digest), std::cmp::Reverse(r)))
        .max()
        .map(|(_, std::cmp::Reverse(r))| r)
}

/// `replicas` in the order they would own `digest`: the owner first, then the
/// replica that takes over if the owner leaves, and so on. Duplicates removed.
pub fn ranked<'a, I>(replicas: I, digest: &Digest) -> Vec<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    let mut v: Vec<(u64, std::cmp::Reverse<&'a str>)> = replicas
        .into_iter()
        .map(|r| (weight(r, digest), std::cmp::Reverse(r)))
        .collect();
    v.sort_unstable_by(|a, b| b.cmp(a));
    v.dedup_by(|a, b| a.1 == b.1);
    v.into_iter().map(|(_, std::cmp::Reverse(r))| r).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn digest(i: u64) -> Digest {
        let mut b = [0u8; 32];
        // Digests are SHA-256 outputs: spread them the same way.
        b.copy_from_slice(&Sha256::digest(i.to_be_bytes()));
        Digest::from_sha256(b)
    }

    const SET: [&str; 3] = ["10.0.0.1:7600", "10.0.0.2:7600", "[fd00::3]:7600"];

    #[test]
    fn weight_is_stable_across_versions() {
        // Part of the protocol: peers and replicas of different versions must agree.
        let d = Digest::from_sha256([7; 32]);
        assert_eq!(weight("10.0.0.1:7600", &d), weight("10.0.0.1:7600", &d));
        assert_eq!(weight("10.0.0.1:7600", &d), 0xf8ad_8962_4a8e_0603);
        assert_ne!(weight("10.0.0.1:7600", &d), weight("10.0.0.2:7600", &d));
    }

    #[test]
    fn empty_set_has_no_owner_and_one_replica_owns_all() {
        assert_eq!(owner(std::iter::empty(), &digest(1)), None);
        for i in 0..100 {
            assert_eq!(owner(["a:1"], &digest(i)), Some("a:1"));
        }
    }

    #[test]
    fn owner_is_first_ranked_and_order_free() {
        for i in 0..500 {
            let d = digest(i);
            let r = ranked(SET, &d);
            assert_eq!(r.len(), 3);
            assert_eq!(owner(SET, &d), Some(r[0]));
            let mut rev = SET;
            rev.reverse();
            assert_eq!(owner(rev, &d), Some(r[0]));
            assert_eq!(ranked([SET[0], SET[0], SET[1]], &d).len(), 2);
        }
    }

    #[test]
    fn shares_are_within_a_fifth_of_even() {
        for n in [2usize, 3, 5, 8] {
            let set: Vec<String> = (0..n).map(|i| format!("10.1.0.{i}:7600")).collect();
            let tasks = 20_000;
            let mut count = vec![0usize; n];
            for i in 0..tasks {
                let o = owner(set.iter().map(String::as_str), &digest(i)).unwrap();
                count[set.iter().position(|s| s == o).unwrap()] += 1;
            }
            let even = tasks as f64 / n as f64;
            for c in count {
                assert!(
                    (c as f64 - even).abs() <= 0.2 * even,
                    "{n} replicas: a share of {c}, even is {even}"
                );
            }
        }
    }

    fn set() -> impl Strategy<Value = Vec<String>> {
        proptest::collection::btree_set("[a-z0-9.]{1,12}:[0-9]{2,5}", 1..8)
            .prop_map(|s| s.into_iter().collect())
    }

    proptest! {
        /// Only the tasks of a replica that leaves move, each to its runner-up.
        #[test]
        fn removing_a_replica_moves_only_its_tasks(set in set(), gone in any::<prop::sample::Index>(), seeds in proptest::collection::vec(any::<u64>(), 1..64)) {
            let gone = gone.get(&set).clone();
            let rest: Vec<&str> = set.iter().map(String::as_str).filter(|r| *r != gone).collect();
            for s in seeds {
                let d = digest(s);
                let before = ranked(set.iter().map(String::as_str), &d);
                let after = owner(rest.iter().copied(), &d);
                if before[0] == gone {
                    prop_assert_eq!(after, before.get(1).copied());
                } else {
                    prop_assert_eq!(after, Some(before[0]));
                }
            }
        }

        /// A replica that joins takes only tasks it now owns; no task moves
        /// between two replicas that were there before.
        #[test]
        fn adding_a_replica_takes_only_its_share(set in set(), new in "[a-z0-9.]{1,12}:[0-9]{2,5}", seeds in proptest::collection::vec(any::<u64>(), 1..64)) {
            prop_assume!(!set.contains(&new));
            let mut grown: Vec<&str> = set.iter().map(String::as_str).collect();
            grown.push(&new);
            for s in seeds {
                let d = digest(s);
                let before = owner(set.iter().map(String::as_str), &d).unwrap();
                let after = owner(grown.iter().copied(), &d).unwrap();
                prop_assert!(after == before || after == new.as_str());
            }
        }
    }
}

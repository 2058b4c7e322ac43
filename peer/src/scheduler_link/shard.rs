//! Which live replica owns a task, and what moves when the live set changes.
//!
//! A replica is *live* for this peer while its session is open (joined, session
//! stream up). Ownership is rendezvous hashing ([`shoal_proto::rendezvous`]) over
//! the live replicas' keys, so a replica this peer cannot reach owns nothing here,
//! and the tasks of a replica that goes away fall to their runner-up at once.
//!
//! Each session has an epoch (a number never reused): a replica that restarts
//! between two looks at the set comes back with a new epoch and an empty state, so
//! its tasks count as moved and are announced to it again ([`moves`]). A new
//! session's own Join already carried the tasks it owned in the set it joined
//! with (that set plus itself); those are not announced twice.
//!
//! Not here: opening sessions, sending the announcements (the supervisor does).

use std::collections::BTreeMap;

use shoal_proto::Digest;
use shoal_proto::rendezvous;

/// Live replicas: key → session epoch.
pub(super) type Epochs = BTreeMap<String, u64>;

/// The owner of `digest` among `live` (`None` when nothing is live).
pub(super) fn owner<'a, V>(live: &'a BTreeMap<String, V>, digest: &Digest) -> Option<&'a str> {
    rendezvous::owner(live.keys().map(String::as_str), digest)
}

/// For a live set going from `before` to `after`: the tasks of `held` (indices)
/// each live replica must be told about, because it became their owner or
/// because it is their owner in a new session (it restarted). Tasks that keep
/// their owner and its session are left out; so are all tasks when nothing is
/// live, and the tasks the Join of a session new since `before` carried
/// (`carried(key, digest)`; a task completed after that Join's listing was not).
pub(super) fn moves(
    before: &Epochs,
    after: &Epochs,
    held: &[Digest],
    carried: impl Fn(&str, &Digest) -> bool,
) -> BTreeMap<String, Vec<usize>> {
    let mut out: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, d) in held.iter().enumerate() {
        let Some(new) = owner(after, d) else {
            continue;
        };
        let new_session = before.get(new) != after.get(new);
        if owner(before, d) == Some(new) && !new_session {
            continue;
        }
        if new_session && carried(new, d) {
            continue;
        }
        out.entry(new.to_string()).or_default().push(i);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn digests(n: u8) -> Vec<Digest> {
        (0..n)
            .map(|i| {
                let mut b = [i; 32];
                b[1] = i.wrapping_mul(37);
                b[2] = i.wrapping_mul(101);
                Digest::from_sha256(b)
            })
            .collect()
    }

    fn epochs(e: &[(&str, u64)]) -> Epochs {
        e.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    /// The tasks a session's Join carried: those it owned in the set it joined
    /// with (by key), as `session.rs` lists them.
    fn moves_with(
        before: &Epochs,
        after: &Epochs,
        joined_with: &BTreeMap<String, Epochs>,
        held: &[Digest],
    ) -> BTreeMap<String, Vec<usize>> {
        moves(before, after, held, |k, d| {
            joined_with.get(k).and_then(|set| owner(set, d)) == Some(k)
        })
    }

    #[test]
    fn a_first_session_gets_every_task_and_no_change_moves_nothing() {
        let held = digests(50);
        let one = epochs(&[("a:1", 1)]);
        let none = BTreeMap::new();
        let m = moves_with(&Epochs::new(), &one, &none, &held);
        assert_eq!(m["a:1"].len(), 50);
        assert!(moves_with(&one, &one, &none, &held).is_empty());
        assert!(moves_with(&one, &Epochs::new(), &none, &held).is_empty());
        // The session's own Join carried them all.
        let joined = [("a:1".to_string(), one.clone())].into();
        assert!(moves_with(&Epochs::new(), &one, &joined, &held).is_empty());
    }

    #[test]
    fn a_task_completed_after_the_joins_listing_is_announced_to_the_new_session() {
        let held = digests(30);
        let one = epochs(&[("a:1", 1)]);
        let m = moves(&Epochs::new(), &one, &held, |_, d| *d != held[0]);
        assert_eq!(m["a:1"], vec![0]);
    }

    #[test]
    fn a_restarted_replica_is_told_again_about_its_own_tasks_only() {
        let held = digests(60);
        let before = epochs(&[("a:1", 1), ("b:1", 2), ("c:1", 3)]);
        let after = epochs(&[("a:1", 1), ("b:1", 7), ("c:1", 3)]);
        let m = moves_with(&before, &after, &BTreeMap::new(), &held);
        assert_eq!(m.keys().collect::<Vec<_>>(), ["b:1"]);
        let owned_by_b = held.iter().filter(|d| owner(&after, d) == Some("b:1"));
        assert_eq!(m["b:1"].len(), owned_by_b.count());
    }

    proptest! {
        /// Every task whose owner changed is announced to its new owner, exactly once;
        /// tasks whose owner kept its session are not.
        #[test]
        fn moved_tasks_are_announced_to_their_new_owner(
            before in proptest::collection::btree_map("[a-e]", 0u64..3, 0..5),
            after in proptest::collection::btree_map("[a-e]", 0u64..3, 0..5),
            joined_with in proptest::collection::btree_map(
                "[a-e]", proptest::collection::btree_map("[a-e]", 0u64..3, 1..5), 0..5),
        ) {
            let held = digests(40);
            let m = moves_with(&before, &after, &joined_with, &held);
            let mut told = vec![None; held.len()];
            for (k, idx) in &m {
                for &i in idx {
                    prop_assert!(told[i].is_none());
                    told[i] = Some(k.as_str());
                }
            }
            for (i, d) in held.iter().enumerate() {
                let (o, n) = (owner(&before, d), owner(&after, d));
                let same = o.is_some() && o == n && before.get(o.unwrap()) == after.get(o.unwrap());
                let new_session = n.is_some_and(|n| before.get(n) != after.get(n));
                let in_join = n.is_some_and(|n| {
                    joined_with.get(n).and_then(|set| owner(set, d)) == Some(n)
                });
                if n.is_none() || same || (new_session && in_join) {
                    prop_assert_eq!(told[i], None);
                } else {
                    prop_assert_eq!(told[i], n);
                }
            }
        }
    }
}

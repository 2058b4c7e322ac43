//! The link rates the joined peers declared, counted per rate, so that an
//! election can ask "is some joined peer faster than this candidate?" without
//! looking at every peer.

use std::collections::BTreeMap;

/// How many joined peers declared each link rate (Mbit/s); unknown rates (0)
/// are not counted.
#[derive(Debug, Default)]
pub(crate) struct LinkRates {
    counts: BTreeMap<u32, usize>,
}

impl LinkRates {
    /// A peer with `mbps` joined (or re-joined with this rate).
    pub(crate) fn add(&mut self, mbps: u32) {
        if mbps > 0 {
            *self.counts.entry(mbps).or_default() += 1;
        }
    }

    /// A peer with `mbps` left (or re-joined with another rate).
    pub(crate) fn remove(&mut self, mbps: u32) {
        if let Some(n) = self.counts.get_mut(&mbps) {
            *n -= 1;
            if *n == 0 {
                self.counts.remove(&mbps);
            }
        }
    }

    /// The fastest rate a joined peer declared; 0 when none declared one.
    pub(crate) fn fastest(&self) -> u32 {
        self.counts.last_key_value().map_or(0, |(r, _)| *r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fastest_rate_follows_joins_and_departures() {
        let mut r = LinkRates::default();
        assert_eq!(r.fastest(), 0);
        r.add(0);
        assert_eq!(r.fastest(), 0, "unknown rates are not counted");
        r.add(1000);
        r.add(25_000);
        r.add(25_000);
        assert_eq!(r.fastest(), 25_000);
        r.remove(25_000);
        assert_eq!(r.fastest(), 25_000, "one of two fast peers is still there");
        r.remove(25_000);
        assert_eq!(r.fastest(), 1000);
        r.remove(7);
        assert_eq!(
            r.fastest(),
            1000,
            "an unknown rate's departure changes nothing"
        );
    }
}

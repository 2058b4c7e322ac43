//! The link model: every node has an uplink and a downlink of fixed capacity
//! (bytes/s), the registry an uplink; a transfer (a flow) crosses the sender's
//! uplink and the receiver's downlink, and the flows on a link share it max-min
//! fairly (progressive filling, recomputed whenever the set of flows changed).
//!
//! What this is: the steady state a fair transport reaches on a bottleneck. What it
//! is not: congestion control dynamics (slow start, loss, QUIC's Cubic ramp), a
//! switch fabric (the bridge in the middle never limits), CPU.

/// Index of a link in a [`Links`].
pub type LinkId = usize;

/// The links of a swarm and the flows crossing them.
#[derive(Debug, Clone)]
pub struct Links {
    capacity: Vec<f64>,
    /// Per flow: the two links it crosses.
    flows: Vec<[LinkId; 2]>,
    rates: Vec<f64>,
    dirty: bool,
    // Scratch space of `allocate`.
    rem: Vec<f64>,
    count: Vec<u32>,
    frozen: Vec<bool>,
}

impl Links {
    /// Links with these capacities (bytes/s), no flows.
    pub fn new(capacity: Vec<f64>) -> Self {
        let n = capacity.len();
        Links {
            capacity,
            flows: Vec::new(),
            rates: Vec::new(),
            dirty: false,
            rem: vec![0.0; n],
            count: vec![0; n],
            frozen: Vec::new(),
        }
    }

    /// Adds a flow across `a` and `b`; returns its slot (stable until removed; a
    /// removal moves the last flow into the freed slot, see [`Links::remove`]).
    pub fn add(&mut self, a: LinkId, b: LinkId) -> usize {
        self.flows.push([a, b]);
        self.rates.push(0.0);
        self.dirty = true;
        self.flows.len() - 1
    }

    /// Removes flow `slot` by swapping the last flow into it.
    pub fn remove(&mut self, slot: usize) {
        self.flows.swap_remove(slot);
        self.rates.swap_remove(slot);
        self.dirty = true;
    }

    /// Number of flows.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// True without flows.
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// The rate of flow `slot` (bytes/s), as of the last [`Links::allocate`].
    pub fn rate(&self, slot: usize) -> f64 {
        self.rates[slot]
    }

    /// Bytes/s carried by link `l` now.
    pub fn load(&self, l: LinkId) -> f64 {
        self.flows
            .iter()
            .zip(&self.rates)
            .filter(|(f, _)| f[0] == l || f[1] == l)
            .map(|(_, r)| r)
            .sum()
    }

    /// Recomputes the max-min fair rates if the flows changed: every flow grows at
    /// the same pace until one of its links is full; flows on a full link stop
    /// growing; repeat until every flow is stopped.
    pub fn allocate(&mut self) {
        if !self.dirty {
            return;
        }
        self.dirty = false;
        let n = self.flows.len();
        self.rates.iter_mut().for_each(|r| *r = 0.0);
        self.frozen.clear();
        self.frozen.resize(n, false);
        self.rem.copy_from_slice(&self.capacity);
        self.count.iter_mut().for_each(|c| *c = 0);
        for f in &self.flows {
            self.count[f[0]] += 1;
            self.count[f[1]] += 1;
        }
        let mut left = n;
        while left > 0 {
            let mut delta = f64::INFINITY;
            for (l, &c) in self.count.iter().enumerate() {
                if c > 0 {
                    delta = delta.min(self.rem[l] / f64::from(c));
                }
            }
            for (l, &c) in self.count.iter().enumerate() {
                if c > 0 {
                    self.rem[l] -= delta * f64::from(c);
                }
            }
            // A link is full when what is left is a rounding error of its capacity.
            let full = |rem: &[f64], cap: &[f64], l: LinkId| rem[l] <= cap[l] * 1e-9;
            for i in 0..n {
                if self.frozen[i] {
                    continue;
                }
                self.rates[i] += delta;
                let [a, b] = self.flows[i];
                if full(&self.rem, &self.capacity, a) || full(&self.rem, &self.capacity, b) {
                    self.frozen[i] = true;
                    left -= 1;
                    self.count[a] -= 1;
                    self.count[b] -= 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flows_share_a_bottleneck_and_take_what_others_leave() {
        // Links: 0 = up of A (10), 1 = down of B (10), 2 = down of C (3).
        let mut l = Links::new(vec![10.0, 10.0, 3.0]);
        let ab = l.add(0, 1);
        let ac = l.add(0, 2);
        l.allocate();
        assert!((l.rate(ac) - 3.0).abs() < 1e-9);
        assert!((l.rate(ab) - 7.0).abs() < 1e-9);
        l.remove(ab);
        l.allocate();
        assert!((l.rate(0) - 3.0).abs() < 1e-9);
    }
}

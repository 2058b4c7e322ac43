//! The `--progress` line: nodes complete, flows, how busy the links are, and how far
//! the nodes are behind the source.

use super::{Flow, Swarm};

impl Swarm {
    /// One progress line; `left` nodes have not completed.
    pub(super) fn progress_line(&self, left: usize) -> String {
        // Piece flows only (upstream is not an uplink of the swarm): how busy
        // the uplinks are, how busy the downlinks of the nodes still
        // downloading from peers are, and how far behind the source they are.
        let (mut up, mut down) = (0.0, 0.0);
        for (i, f) in self.flows.iter().enumerate() {
            if let Flow::Piece { child, .. } = *f {
                up += self.links.rate(i);
                if !self.nodes[child].source {
                    down += self.links.rate(i);
                }
            }
        }
        let cap: f64 = self.nodes.iter().map(|n| n.down).sum();
        let dcap: f64 = self
            .nodes
            .iter()
            .filter(|n| n.done_at.is_none() && !n.source)
            .map(|n| n.down)
            .sum();
        let mut held: Vec<u32> = self.nodes.iter().map(|n| n.stored.count()).collect();
        held.sort_unstable();
        let src = self
            .nodes
            .iter()
            .filter(|n| n.source)
            .map(|n| n.stored.count())
            .max()
            .unwrap_or(0);
        format!(
            "t={:.0}s: {} of {} nodes complete, {} flows; uplinks {:.0} % busy, downlinks of the others {:.0} %; pieces held: source {}, nodes p10/p50/p90 {}/{}/{}",
            self.t.as_secs_f64(),
            self.nodes.len() - left,
            self.nodes.len(),
            self.flows.len(),
            100.0 * up / cap,
            100.0 * down / dcap.max(1.0),
            src,
            held[held.len() / 10],
            held[held.len() / 2],
            held[held.len() * 9 / 10],
        )
    }
}

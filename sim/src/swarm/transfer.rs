//! Bytes and messages between the nodes: requests and their answers, piece flows
//! over the links, upstream's body, and a piece's arrival at its node.

use std::time::Duration;

use shoal_peer::engine::{Origin, Verdict};

use super::{Flow, Msg, Swarm, piece_hash};
use crate::server::{Answer, Request};

impl Swarm {
    /// Handles the messages due at or before `until`; false when there were none.
    pub(super) fn handle_messages(&mut self, until: Duration) -> bool {
        let lat = self.cfg.latency;
        let mut handled = false;
        while let Some(entry) = self.msgs.first_entry() {
            if entry.key().0 > until {
                return handled;
            }
            handled = true;
            let msg = entry.remove();
            let now = self.now();
            match msg {
                Msg::Request { parent, req } => {
                    let holds = self.nodes[parent].stored.contains(req.index);
                    let answer = if self.cfg.push && self.nodes[parent].seeding {
                        self.nodes[parent].server.busy_answers += 1;
                        Answer::Busy
                    } else {
                        self.nodes[parent].server.request(req, holds, self.t)
                    };
                    match answer {
                        Answer::Serve => self.start_upload(parent, req),
                        Answer::Queued => {}
                        answer => {
                            let busy = answer == Answer::Busy;
                            let (child, index) = (req.child, req.index);
                            self.send(
                                self.t + lat,
                                Msg::Refused {
                                    child,
                                    parent,
                                    index,
                                    busy,
                                },
                            );
                        }
                    }
                }
                Msg::Refused {
                    child,
                    parent,
                    index,
                    busy,
                } => {
                    let pid = self.nodes[parent].id.clone();
                    let node = &mut self.nodes[child];
                    if busy {
                        node.core.on_busy(index, pid.as_str(), now);
                    } else {
                        node.core.on_fetch_failed(index, pid.as_str(), true, now);
                    }
                    node.wake = true;
                }
                Msg::Piece {
                    child,
                    parent,
                    index,
                } => {
                    let pid = self.nodes[parent].id.clone();
                    if self.pushed.remove(&(child, index)) {
                        // Unasked: the child learns the hash with the piece (the
                        // model's pieces are never bad), as from upstream.
                        self.piece_arrived(child, index, Origin::Upstream);
                    } else {
                        self.piece_arrived(child, index, Origin::Parent(pid.as_str()));
                    }
                }
                Msg::Acked { parent, req } => {
                    let seeding = self.nodes[parent].seeding;
                    if let Some(next) = self.nodes[parent].server.upload_done(req, self.t, seeding)
                    {
                        self.start_upload(parent, next);
                    }
                }
                Msg::UpstreamStart { node, piece } => {
                    let nd = &mut self.nodes[node];
                    if !nd.upstream_sized {
                        nd.upstream_sized = true;
                        if nd.core.on_upstream_size(self.cfg.size).is_err() {
                            self.refused_reports += 1;
                        }
                        self.act(node);
                    }
                    self.start_upstream_piece(node, piece, 0.0);
                }
            }
        }
        handled
    }

    fn start_upload(&mut self, parent: usize, req: Request) {
        let n = self.nodes.len();
        let len = self.shape.piece_len(req.index).unwrap_or(0);
        self.links.add(parent, n + req.child);
        self.flows.push(Flow::Piece {
            parent,
            child: req.child,
            index: req.index,
            left: f64::from(len) * self.cfg.peer_framing,
        });
    }

    /// Starts piece `index` of the upstream stream. A flow's bytes are link bytes
    /// (the payload × its framing). `credit`: link bytes of it that
    /// already arrived in the step the previous piece ended in (upstream is
    /// one continuous body, so the time steps must not put a gap between its
    /// pieces).
    fn start_upstream_piece(&mut self, node: usize, index: u32, credit: f64) {
        let n = self.nodes.len();
        let len = self.shape.piece_len(index).unwrap_or(0);
        self.links.add(2 * n, n + node);
        self.flows.push(Flow::Upstream {
            node,
            index,
            left: (f64::from(len) * self.cfg.upstream_framing - credit).max(1.0),
        });
    }

    /// Moves bytes for one step; handles the flows that finished.
    pub(super) fn advance_flows(&mut self) {
        self.links.allocate();
        let dt = self.cfg.step.as_secs_f64();
        let mut finished = Vec::new();
        let mut i = self.flows.len();
        while i > 0 {
            i -= 1;
            let rate = self.links.rate(i);
            let left = self.flows[i].left();
            *left -= rate * dt;
            if *left <= 0.5 {
                finished.push(self.flows.swap_remove(i));
                self.links.remove(i);
            }
        }
        // Deterministic order whatever the slots were.
        finished.sort_by_key(|f| match *f {
            Flow::Piece {
                parent,
                child,
                index,
                ..
            } => (0, parent, child, index),
            Flow::Upstream { node, index, .. } => (1, node, node, index),
        });
        let lat = self.cfg.latency;
        for f in finished {
            match f {
                Flow::Piece {
                    parent,
                    child,
                    index,
                    ..
                } => {
                    let req = Request { child, index };
                    self.send(
                        self.t + lat,
                        Msg::Piece {
                            child,
                            parent,
                            index,
                        },
                    );
                    self.send(self.t + lat * 2, Msg::Acked { parent, req });
                }
                Flow::Upstream { node, index, left } => {
                    self.upstream_bytes += u64::from(self.shape.piece_len(index).unwrap_or(0));
                    self.piece_arrived(node, index, Origin::Upstream);
                    if self.cfg.push {
                        self.push(node, index);
                    }
                    if self.nodes[node].done_at.is_some() {
                        self.nodes[node].seeding = false;
                        continue;
                    }
                    if index + 1 < self.shape.piece_count() {
                        self.start_upstream_piece(node, index + 1, -left);
                    } else {
                        self.nodes[node].seeding = false;
                        let _ = self.nodes[node].core.on_upstream_done(Ok(()));
                        self.act(node);
                    }
                }
            }
        }
    }

    /// Variant `Config::push`: the source pushes piece `index`, just in from
    /// upstream, to the next child in the round that has opened its plan and lacks
    /// it, in an upload slot (if one is free; else the piece waits for requests).
    fn push(&mut self, source: usize, index: u32) {
        let n = self.nodes.len();
        for k in 0..n {
            let c = (self.push_next + k) % n;
            let node = &self.nodes[c];
            if c == source
                || node.done_at.is_some()
                || node.opened_at.is_none()
                || node.core.have().contains(index)
            {
                continue;
            }
            self.push_next = c + 1;
            let req = Request { child: c, index };
            if self.nodes[source].server.request(req, true, self.t) == Answer::Serve {
                self.pushed.insert((c, index));
                self.start_upload(source, req);
            }
            return;
        }
    }

    /// A piece's last byte reached node `n`: verify, keep, report, maybe complete.
    fn piece_arrived(&mut self, n: usize, index: u32, origin: Origin<'_>) {
        let node = &mut self.nodes[n];
        if node.done_at.is_some() {
            return;
        }
        node.wake = true;
        let hash = piece_hash(index);
        match node.core.on_piece(index, hash, origin) {
            Ok(Verdict::Keep { .. }) => {
                if node.stored.len() > index {
                    node.stored.insert(index);
                }
                node.core.on_piece_kept(index, hash, true);
            }
            Ok(Verdict::Duplicate) => {}
            Ok(Verdict::Bad) | Err(_) => self.refused_reports += 1,
        }
        self.act(n);
        let node = &mut self.nodes[n];
        if node.core.is_complete() && node.done_at.is_none() {
            node.done_at = Some(self.t);
            node.core.on_complete(true);
            self.act(n);
            if let Some(plan) = self.nodes[n].plan.take() {
                let now = self.now();
                self.sched.close_plan(now, plan);
            }
        }
    }
}

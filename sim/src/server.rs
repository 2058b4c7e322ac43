//! The upload side of a simulated node: what it answers a piece request, with the
//! rules of `peer/src/transfer/server.rs` (the constants are the real ones), or, as
//! a labelled model variant, a bounded queue instead of `BUSY` (issue 17, item 1).
//!
//! Real rules ([`Policy::Busy`]): at most `slots` uploads at once (`try_acquire`,
//! nothing queues: a request beyond them is answered `BUSY`); one piece goes to one
//! child at a time, and while the node streams the blob from upstream, for
//! [`SEED_HOLD`] after its upload ended others asking for it are answered `BUSY` too; an upload holds its piece while it moves (the real
//! one lets it go after [`EXCLUSIVE_FOR`] without progress, which a model flow never
//! lacks). A slot is held until the child acknowledged the whole piece.
//!
//! Variant ([`Policy::Queue`]): no per-piece exclusivity or hold; a request that
//! finds every slot taken waits in a FIFO queue of at most `bound` requests (`BUSY`
//! only when it is full), and a freed slot serves the oldest request at once. A
//! prediction of item 1, not what the code does. [`Policy::QueueKeepHold`] keeps the
//! per-piece hold and queues only what lacks a slot.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

pub use shoal_peer::transfer::server::{EXCLUSIVE_FOR, SEED_HOLD};

/// How a parent answers requests it cannot serve at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// What the code does: `BUSY`.
    Busy,
    /// Model variant: queue up to this many requests; no per-piece hold.
    Queue(usize),
    /// Model variant: the per-piece hold as the code has it (`BUSY` for a piece on
    /// its way to another child), but a request that only lacks a slot queues (up
    /// to this many).
    QueueKeepHold(usize),
}

/// A request for a piece, from a child (node index).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// The child.
    pub child: usize,
    /// The piece.
    pub index: u32,
}

/// What the parent does with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Start uploading now.
    Serve,
    /// Answer `BUSY`.
    Busy,
    /// Answer `NOT_FOUND`.
    NotFound,
    /// Queued (variant only): served later through [`Server::upload_done`].
    Queued,
}

#[derive(Debug, Clone, Copy)]
struct Hold {
    child: usize,
    until: Option<Duration>,
}

/// One node's upload side. Times are offsets from the simulation's start.
#[derive(Debug)]
pub struct Server {
    policy: Policy,
    slots: usize,
    busy_slots: usize,
    holds: HashMap<u32, Hold>,
    queue: VecDeque<Request>,
    /// Requests answered `BUSY`.
    pub busy_answers: u64,
    /// Pieces uploaded.
    pub served: u64,
}

impl Server {
    /// An idle server with `slots` upload slots.
    pub fn new(policy: Policy, slots: usize) -> Self {
        Server {
            policy,
            slots,
            busy_slots: 0,
            holds: HashMap::new(),
            queue: VecDeque::new(),
            busy_answers: 0,
            served: 0,
        }
    }

    /// Uploads in progress.
    pub fn active(&self) -> usize {
        self.busy_slots
    }

    /// A request arrives at `now`; `holds_piece` says whether the store has it.
    pub fn request(&mut self, req: Request, holds_piece: bool, now: Duration) -> Answer {
        if !holds_piece {
            return Answer::NotFound;
        }
        let answer = match self.policy {
            Policy::Busy | Policy::QueueKeepHold(_) => {
                self.holds.retain(|_, h| h.until.is_none_or(|t| t > now));
                let held = self.holds.get(&req.index).is_some_and(|h| {
                    h.child != req.child
                        && match h.until {
                            Some(until) => until > now,
                            // The real server lets a piece go after
                            // EXCLUSIVE_FOR without progress; the model's
                            // flows always progress.
                            None => true,
                        }
                });
                let queue = match self.policy {
                    Policy::QueueKeepHold(bound) => bound,
                    _ => 0,
                };
                let hold = Hold {
                    child: req.child,
                    until: None,
                };
                if held {
                    Answer::Busy
                } else if self.busy_slots < self.slots {
                    self.holds.insert(req.index, hold);
                    Answer::Serve
                } else if self.queue.len() < queue {
                    self.holds.insert(req.index, hold);
                    self.queue.push_back(req);
                    Answer::Queued
                } else {
                    Answer::Busy
                }
            }
            Policy::Queue(bound) => {
                if self.busy_slots < self.slots {
                    Answer::Serve
                } else if self.queue.len() < bound {
                    self.queue.push_back(req);
                    Answer::Queued
                } else {
                    Answer::Busy
                }
            }
        };
        match answer {
            Answer::Serve => self.busy_slots += 1,
            Answer::Busy => self.busy_answers += 1,
            _ => {}
        }
        answer
    }

    /// The child acknowledged the whole piece at `now`: the slot is free, and the
    /// piece free for others, or held back for [`SEED_HOLD`] when this node is
    /// `seeding` (its upstream stream runs). Returns a queued request served now in the
    /// freed slot (variant only).
    pub fn upload_done(&mut self, req: Request, now: Duration, seeding: bool) -> Option<Request> {
        self.busy_slots -= 1;
        self.served += 1;
        if let Some(h) = self.holds.get_mut(&req.index)
            && h.child == req.child
        {
            if seeding {
                h.until = Some(now + SEED_HOLD);
            } else {
                self.holds.remove(&req.index);
            }
        }
        let next = self.queue.pop_front()?;
        self.busy_slots += 1;
        Some(next)
    }
}

//! In-memory twins of the engine's boundaries, for tests of the driver without a
//! network: [`TwinScheduler`] (a [`SchedulerClient`] whose plan streams the test
//! writes, and which records every report) and [`TwinFetcher`] (a
//! [`PieceFetcher`] over pieces the test puts in, per parent address).
//!
//! They prove the driver's logic; the real link, QUIC and registries are proved by
//! the integration tests with real processes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use shoal_proto::Digest;
use tokio::sync::mpsc;

use super::fetcher::PieceFetcher;
use super::plan::{PlanUpdate, PlannerError};
use super::scheduler::{PlanOpenError, PlanOpening, PlanStream, SchedulerClient};
use crate::scheduler_link::{Load, Report};
use crate::transfer::FetchError;

/// Writes one plan stream: send updates, drop it to end the stream.
pub type PlanWriter = mpsc::UnboundedSender<Result<PlanUpdate, PlannerError>>;

#[derive(Default)]
struct SchedulerState {
    connected: bool,
    opened: Vec<(Digest, u64, PlanWriter)>,
    openings: Vec<(Digest, PlanOpening)>,
    reports: Vec<Report>,
    announced: Vec<(Digest, u64)>,
}

/// A scheduler in memory. Cheap to clone; clones share state.
#[derive(Clone, Default)]
pub struct TwinScheduler {
    state: Arc<Mutex<SchedulerState>>,
    load: Arc<Load>,
}

impl TwinScheduler {
    /// A scheduler that is not reachable: every plan fails with
    /// [`PlanOpenError::Unavailable`].
    pub fn unavailable() -> Self {
        TwinScheduler::default()
    }

    /// A connected scheduler: every plan request opens a stream the test writes
    /// through [`TwinScheduler::writer`].
    pub fn connected() -> Self {
        let t = TwinScheduler::default();
        t.set_connected(true);
        t
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SchedulerState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Connects or disconnects it.
    pub fn set_connected(&self, connected: bool) {
        self.lock().connected = connected;
    }

    /// Plans opened so far: (task, size asked with).
    pub fn opened(&self) -> Vec<(Digest, u64)> {
        self.lock()
            .opened
            .iter()
            .map(|(d, s, _)| (*d, *s))
            .collect()
    }

    /// How each plan so far was asked for, in order (kept across
    /// [`TwinScheduler::end_plans`]).
    pub fn openings(&self) -> Vec<(Digest, PlanOpening)> {
        self.lock().openings.clone()
    }

    /// The writer of the latest plan stream opened for `digest`.
    pub fn writer(&self, digest: &Digest) -> Option<PlanWriter> {
        self.lock()
            .opened
            .iter()
            .rev()
            .find(|(d, _, _)| d == digest)
            .map(|(_, _, w)| w.clone())
    }

    /// Ends every open plan stream (a scheduler restart, as the peer sees it).
    pub fn end_plans(&self) {
        self.lock().opened.clear();
    }

    /// Every report received, in order.
    pub fn reports(&self) -> Vec<Report> {
        self.lock().reports.clone()
    }

    /// Tasks announced: (task, size).
    pub fn announced(&self) -> Vec<(Digest, u64)> {
        self.lock().announced.clone()
    }
}

#[async_trait::async_trait]
impl SchedulerClient for TwinScheduler {
    fn is_connected(&self) -> bool {
        self.lock().connected
    }

    async fn plan(
        &self,
        digest: &Digest,
        size: u64,
        opening: PlanOpening,
    ) -> Result<PlanStream, PlanOpenError> {
        let mut s = self.lock();
        if !s.connected {
            return Err(PlanOpenError::Unavailable);
        }
        let (tx, rx) = mpsc::unbounded_channel();
        s.opened.push((*digest, size, tx));
        s.openings.push((*digest, opening));
        Ok(tokio_stream::wrappers::UnboundedReceiverStream::new(rx).boxed())
    }

    fn report(&self, report: Report) {
        let mut s = self.lock();
        if s.connected {
            s.reports.push(report);
        }
    }

    fn announce(&self, digest: Digest, size: u64, hashes: Vec<Option<[u8; 32]>>) {
        let mut s = self.lock();
        if s.connected && hashes.iter().all(Option::is_some) {
            s.announced.push((digest, size));
        }
    }

    fn load(&self) -> &Load {
        &self.load
    }
}

/// How a twin parent answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TwinParent {
    /// Serves the pieces it holds.
    Honest,
    /// Serves every piece with its first byte flipped.
    Corrupt,
    /// Answers every request with this error.
    Failing(FetchError),
}

#[derive(Default)]
struct FetcherState {
    pieces: HashMap<(SocketAddr, Digest, u32), Bytes>,
    behaviour: HashMap<SocketAddr, TwinParent>,
    served: HashMap<SocketAddr, u64>,
}

/// Parents in memory, by address. Cheap to clone; clones share state.
#[derive(Clone, Default)]
pub struct TwinFetcher {
    state: Arc<Mutex<FetcherState>>,
}

impl TwinFetcher {
    fn lock(&self) -> std::sync::MutexGuard<'_, FetcherState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The parent at `addr` holds piece `index` of `digest`.
    pub fn insert(&self, addr: SocketAddr, digest: Digest, index: u32, bytes: Bytes) {
        self.lock().pieces.insert((addr, digest, index), bytes);
    }

    /// How the parent at `addr` answers from now on.
    pub fn set(&self, addr: SocketAddr, behaviour: TwinParent) {
        self.lock().behaviour.insert(addr, behaviour);
    }

    /// Pieces the parent at `addr` served (good or bad).
    pub fn served(&self, addr: SocketAddr) -> u64 {
        self.lock().served.get(&addr).copied().unwrap_or(0)
    }
}

#[async_trait::async_trait]
impl PieceFetcher for TwinFetcher {
    async fn fetch(
        &self,
        parent: SocketAddr,
        digest: &Digest,
        index: u32,
        len: u32,
        _timeout: Duration,
    ) -> Result<Bytes, FetchError> {
        let mut s = self.lock();
        let behaviour = s
            .behaviour
            .get(&parent)
            .cloned()
            .unwrap_or(TwinParent::Honest);
        if let TwinParent::Failing(e) = behaviour {
            return Err(e);
        }
        let Some(bytes) = s.pieces.get(&(parent, *digest, index)).cloned() else {
            return Err(FetchError::NotFound);
        };
        if bytes.len() != len as usize {
            return Err(FetchError::Malformed(format!(
                "{} bytes, asked for {len}",
                bytes.len()
            )));
        }
        *s.served.entry(parent).or_default() += 1;
        Ok(match behaviour {
            TwinParent::Corrupt => {
                let mut v = bytes.to_vec();
                if let Some(b) = v.first_mut() {
                    *b ^= 0xff;
                }
                Bytes::from(v)
            }
            _ => bytes,
        })
    }
}

//! Preheat: warm nodes with an image before it is needed.
//!
//! An operator posts a job (an image reference, its platforms, a scope of
//! peers, an optional upstream credential); the scheduler orders each chosen
//! peer, over that peer's session with this replica, to resolve the image's
//! manifest through its own upstream configuration and fetch every blob
//! through the swarm into its store. Peers answer with progress events; the
//! job ends when every peer ended (succeeded, failed, cancelled), and is
//! forgotten a while after.
//!
//! Layout:
//! - this file: the vocabulary ([`JobSpec`], [`Scope`], [`Credential`],
//!   [`PreheatOrder`]);
//! - [`spec`]: the request body, checked into a [`JobSpec`] (pure);
//! - [`jobs`]: [`Jobs`], the pure state machine of every job (`now` passed
//!   in, orders returned);
//! - `api.rs`: the operator API's routes over it.
//!
//! A job lives on the replica that accepted it: with several replicas each
//! peer has a session with every one, so one replica can order any peer, and
//! the layer downloads route to their owners by themselves.
//!
//! The credential is kept in memory only until the orders are sent, travels
//! over the peers' mutual-TLS sessions, and is never printed (its `Debug` is
//! redacted, no error quotes it). Not here: persistence (a restarted
//! scheduler forgets its jobs; the peers finish what they were told).

mod api;
pub mod jobs;
pub mod spec;

pub(crate) use api::{cancel, create, get, list};
pub use jobs::{JobError, JobState, JobView, Jobs, JobsConfig, PeerJobState, Report};

/// An image: registry (as containerd's `ns` names it), repository, tag or
/// digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// `docker.io`, `reg.example:5000`.
    pub registry: String,
    /// `library/nginx`.
    pub repository: String,
    /// A tag, or a digest (`sha256:…`).
    pub reference: String,
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sep = if self.reference.contains(':') {
            '@'
        } else {
            ':'
        };
        write!(
            f,
            "{}/{}{sep}{}",
            self.registry, self.repository, self.reference
        )
    }
}

/// Which peers a job orders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every peer with a session open to this scheduler.
    All,
    /// Those of one zone.
    Zone(String),
    /// This many of them (all when there are fewer), spread at random.
    Count(u32),
    /// This share of them, rounded up, at random.
    Percent(u8),
    /// These, by peer id or hostname.
    Nodes(Vec<String>),
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::All => f.write_str("all"),
            Scope::Zone(z) => write!(f, "zone={z}"),
            Scope::Count(n) => write!(f, "count={n}"),
            Scope::Percent(p) => write!(f, "percent={p}"),
            Scope::Nodes(n) => write!(f, "nodes={}", n.join(",")),
        }
    }
}

/// An upstream credential for a private image. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// HTTP Basic, or exchanged for a token at the registry's realm.
    Basic {
        /// The user.
        username: String,
        /// The password.
        password: String,
    },
    /// A registry bearer token, sent as it is.
    Token(String),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credential(<redacted>)")
    }
}

/// A checked job request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobSpec {
    /// The image.
    pub image: ImageRef,
    /// `os/arch[/variant]` each; empty: each node's own platform.
    pub platforms: Vec<String>,
    /// Which peers.
    pub scope: Scope,
    /// For a private image.
    pub credential: Option<Credential>,
}

/// What one peer is told to do for a job (the session command).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreheatOrder {
    /// The job.
    pub job_id: String,
    /// The image.
    pub image: ImageRef,
    /// The platforms (empty: the node's own).
    pub platforms: Vec<String>,
    /// The credential, if any.
    pub credential: Option<Credential>,
}

/// A peer this replica can order now (its session is open).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Peer id.
    pub id: String,
    /// Hostname.
    pub hostname: String,
    /// Zone label.
    pub zone: String,
}

//! Who may read a blob: the mirror's access decision, made before any byte from this
//! node's cache or from a peer reaches a caller.
//!
//! The rule: a caller may read blob `D` of repository `R` on registry `H` once `H`
//! answered a `HEAD /v2/R/blobs/D` carrying the caller's `Authorization` (or none) with
//! 2xx. The mirror makes that `HEAD`; this module remembers what it said, so that a pull
//! of many layers does not cost one upstream request per layer:
//!
//! - a **grant** per (registry, repository, credential fingerprint), for
//!   [`AccessConfig::ttl`] (default 60 s) after the last 2xx;
//! - a **membership** per (registry, repository, digest): upstream said this digest is
//!   in this repository (to anyone). A grant opens only blobs known to be in its
//!   repository, so a caller authorised for a public repository cannot name a private
//!   repository's digest under it. Kept until a 404 says otherwise (or the count bound);
//! - **public** per (registry, repository): an *anonymous* `HEAD` was answered 2xx. Kept
//!   until an anonymous 401/403 says otherwise (or the count bound). While upstream is
//!   unreachable, the blobs known in a public repository are served to any caller.
//!   A token registry (Docker Hub) answers every request without a token with a 401,
//!   and containerd's requests carry a token even for a public image, so the mirror
//!   probes: after a 2xx for a caller with credentials, at most every
//!   [`PUBLIC_RECHECK`] per repository, it asks upstream anonymously itself, with a
//!   token fetched from the challenge's realm without credentials (`blobs.rs`).
//!
//! Everything else is refused while upstream is unreachable
//! ([`Access::allows_offline`]).
//!
//! Only registries with a `hosts.toml` directory of their own count: one resolved
//! through `_default` is whatever host the caller names in `ns`, possibly a registry the
//! caller runs that claims any digest, so its blobs are relayed from it and never served
//! from the cache or peers (`blobs.rs`). The fingerprint is SHA-256 of a random per-process key
//! followed by the `Authorization` value: the credential itself is neither kept nor
//! logged here, and the fingerprint means nothing outside this process.
//!
//! Each table holds at most [`MAX_ENTRIES`] entries (memberships sixteen times that);
//! past that the oldest quarter is dropped, which only costs a `HEAD` later.
//!
//! Pure apart from the lock: `now` is passed in; the `HEAD` itself and the answers are
//! `blobs.rs`'s. Not here: manifests (always relayed from upstream, so upstream decides
//! them itself), the credentials a shared download falls back on
//! ([`crate::registry::CredentialPool`]).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::registry::Registry;
use reqwest::header::HeaderValue;
use sha2::{Digest as _, Sha256};
use shoal_proto::Digest;

use crate::metrics::{self, Sample};

/// Most grants (and public repositories) remembered; memberships: 16 times this.
pub const MAX_ENTRIES: usize = 4096;

/// How often a repository is probed anonymously for being public (see
/// [`Access::should_probe`]).
pub const PUBLIC_RECHECK: Duration = Duration::from_secs(600);

/// The access check's settings (`--access-check`, `--access-cache-ttl`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccessConfig {
    /// Check before serving from the cache or from peers (default: on). Off: a blob
    /// complete on the node is served to anyone, and a blob is fetched from peers when
    /// upstream cannot be reached, whoever asks (the behaviour before the check).
    pub enabled: bool,
    /// How long a grant is trusted after upstream's last 2xx for that caller and
    /// repository (default 60 s; zero: every request asks upstream).
    pub ttl: Duration,
}

impl Default for AccessConfig {
    fn default() -> Self {
        AccessConfig {
            enabled: true,
            ttl: Duration::from_secs(60),
        }
    }
}

/// A caller's credential as this process knows it: `None` for a caller without
/// `Authorization`, else a keyed hash of the header's bytes.
pub type Fingerprint = Option<[u8; 32]>;

/// Why a request was refused (the `reason` label of `access_refused_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Upstream answered 401.
    Unauthorized,
    /// Upstream answered 403.
    Denied,
    /// Upstream answered 404 (not in this repository, or no such repository).
    NotFound,
    /// Upstream answered another 4xx (429, …).
    Other,
    /// Upstream could not be reached and nothing remembered allows the caller.
    UpstreamUnreachable,
}

impl Refusal {
    /// The refusal of an upstream status (a 4xx).
    pub fn of_status(status: u16) -> Refusal {
        match status {
            401 => Refusal::Unauthorized,
            403 => Refusal::Denied,
            404 => Refusal::NotFound,
            _ => Refusal::Other,
        }
    }

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Unauthorized => "unauthorized",
            Refusal::Denied => "denied",
            Refusal::NotFound => "not_found",
            Refusal::Other => "other",
            Refusal::UpstreamUnreachable => "upstream_unreachable",
        }
    }

    const ALL: [Refusal; 5] = [
        Refusal::Unauthorized,
        Refusal::Denied,
        Refusal::NotFound,
        Refusal::Other,
        Refusal::UpstreamUnreachable,
    ];

    fn index(self) -> usize {
        Refusal::ALL
            .iter()
            .position(|r| *r == self)
            .expect("listed")
    }
}

/// Access counters (exported by [`AccessStats::register_metrics`]).
#[derive(Debug, Default)]
pub struct AccessStats {
    /// Blob requests that needed a decision (the check on).
    pub checks: AtomicU64,
    /// Of those, answered from a remembered grant without asking upstream.
    pub cache_hits: AtomicU64,
    /// `HEAD`s sent upstream for a decision.
    pub upstream_checks: AtomicU64,
    /// Served while upstream was unreachable (a public repository, or a grant still
    /// fresh).
    pub allowed_offline: AtomicU64,
    /// Blob requests for a registry resolved through `_default`, relayed from upstream
    /// without the cache or peers.
    pub relayed_untrusted: AtomicU64,
    /// Refusals by [`Refusal`] (in `Refusal::ALL`'s order).
    refused: [AtomicU64; 5],
}

impl AccessStats {
    /// Counts one refusal.
    pub fn refused(&self, why: Refusal) {
        self.refused[why.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Refusals so far for `why`.
    pub fn refusals(&self, why: Refusal) -> u64 {
        self.refused[why.index()].load(Ordering::Relaxed)
    }

    /// Registers the counters in `registry` (the daemon's `shoal_peer_` one):
    /// `access_checks_total`, `access_cache_hits_total`, `access_upstream_checks_total`,
    /// `access_allowed_offline_total`, `access_refused_total{reason}`.
    pub fn register_metrics(self: &std::sync::Arc<Self>, registry: &mut Registry) {
        metrics::register(registry, self.clone(), |s| {
            let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
            vec![
                Sample::Counter(
                    "access_checks",
                    "Blob requests the access check decided (served from cache or peers only if allowed).",
                    load(&s.checks),
                ),
                Sample::Counter(
                    "access_cache_hits",
                    "Access decisions answered from a remembered grant, without an upstream HEAD.",
                    load(&s.cache_hits),
                ),
                Sample::Counter(
                    "access_upstream_checks",
                    "HEADs sent upstream to decide whether a caller may read a blob.",
                    load(&s.upstream_checks),
                ),
                Sample::Counter(
                    "access_allowed_offline",
                    "Blob requests served while upstream was unreachable (public repository or fresh grant).",
                    load(&s.allowed_offline),
                ),
                Sample::Counter(
                    "access_relayed_untrusted",
                    "Blob requests for a registry without hosts.toml of its own (resolved through _default), relayed from upstream without the cache or peers.",
                    load(&s.relayed_untrusted),
                ),
                Sample::LabeledCounters(
                    "access_refused",
                    "Blob requests refused by the access check, by reason.",
                    "reason",
                    Refusal::ALL
                        .iter()
                        .map(|r| (r.label(), s.refusals(*r)))
                        .collect(),
                ),
            ]
        });
    }
}

/// What allowed a caller without asking upstream now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allowed {
    /// A grant for this caller and repository, still fresh.
    Grant,
    /// The repository is public (upstream unreachable only).
    Public,
}

/// The remembered decisions. `Send + Sync`; one per mirror.
#[derive(Debug)]
pub struct Access {
    config: AccessConfig,
    key: [u8; 32],
    state: Mutex<State>,
    /// Counters.
    pub stats: std::sync::Arc<AccessStats>,
}

type RepoKey = (String, String);

#[derive(Debug, Default)]
struct State {
    /// (registry, repository, fingerprint) → the last 2xx.
    grants: HashMap<(String, String, Fingerprint), Instant>,
    /// (registry, repository, digest) → the last 2xx.
    members: HashMap<(String, String, Digest), Instant>,
    /// (registry, repository) → the last anonymous 2xx.
    public: HashMap<RepoKey, Instant>,
    /// (registry, repository) → when an anonymous probe last started.
    probed: HashMap<RepoKey, Instant>,
}

impl Access {
    /// Empty tables, a fresh random key.
    pub fn new(config: AccessConfig) -> Access {
        Access {
            config,
            key: rand::random(),
            state: Mutex::new(State::default()),
            stats: Default::default(),
        }
    }

    /// The settings.
    pub fn config(&self) -> AccessConfig {
        self.config
    }

    /// Whether the check is on.
    pub fn enabled(&self) -> bool {
        self.config.enabled
    }

    /// The caller's fingerprint (`None` without `Authorization`).
    pub fn fingerprint(&self, authorization: Option<&HeaderValue>) -> Fingerprint {
        authorization.map(|a| {
            let mut h = Sha256::new();
            h.update(self.key);
            h.update(a.as_bytes());
            h.finalize().into()
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a remembered grant lets `fp` read `digest` of `repo` now, without asking
    /// upstream: a fresh grant, and the digest known in the repository.
    pub fn allows(
        &self,
        registry: &str,
        repo: &str,
        digest: &Digest,
        fp: Fingerprint,
        now: Instant,
    ) -> bool {
        let mut s = self.state();
        let key = (registry.to_owned(), repo.to_owned(), fp);
        let fresh = match s.grants.get(&key) {
            Some(at) if now.saturating_duration_since(*at) < self.config.ttl => true,
            Some(_) => {
                s.grants.remove(&key);
                false
            }
            None => false,
        };
        fresh
            && s.members
                .contains_key(&(registry.to_owned(), repo.to_owned(), *digest))
    }

    /// Upstream cannot be reached: whether `fp` may still read `digest` of `repo`, and
    /// why (a fresh grant, or a public repository that holds the digest).
    pub fn allows_offline(
        &self,
        registry: &str,
        repo: &str,
        digest: &Digest,
        fp: Fingerprint,
        now: Instant,
    ) -> Option<Allowed> {
        if self.allows(registry, repo, digest, fp, now) {
            return Some(Allowed::Grant);
        }
        let s = self.state();
        let (r, n) = (registry.to_owned(), repo.to_owned());
        let public = s.public.contains_key(&(r.clone(), n.clone()));
        (public && s.members.contains_key(&(r, n, *digest))).then_some(Allowed::Public)
    }

    /// Learns from upstream's answer `status` to a `HEAD` (or `GET`) of `digest` in
    /// `repo` carrying `fp`'s credential: 2xx grants (and makes the repository public
    /// when `fp` is anonymous); 401/403 withdraw the grant (and the public mark when
    /// anonymous); 404 forgets the digest in the repository.
    pub fn learn(
        &self,
        registry: &str,
        repo: &str,
        digest: &Digest,
        fp: Fingerprint,
        status: u16,
        now: Instant,
    ) {
        let mut s = self.state();
        let (r, n) = (registry.to_owned(), repo.to_owned());
        match status {
            200..=299 => {
                insert_bounded(&mut s.grants, (r.clone(), n.clone(), fp), now, MAX_ENTRIES);
                insert_bounded(
                    &mut s.members,
                    (r.clone(), n.clone(), *digest),
                    now,
                    MAX_ENTRIES * 16,
                );
                if fp.is_none() {
                    insert_bounded(&mut s.public, (r, n), now, MAX_ENTRIES);
                }
            }
            401 | 403 => {
                s.grants.remove(&(r.clone(), n.clone(), fp));
                if fp.is_none() {
                    s.public.remove(&(r, n));
                }
            }
            404 => {
                s.members.remove(&(r, n, *digest));
            }
            _ => {}
        }
    }

    /// Whether to probe `repo` anonymously now (no probe started within
    /// [`PUBLIC_RECHECK`]); true marks the probe as started.
    pub fn should_probe(&self, registry: &str, repo: &str, now: Instant) -> bool {
        let mut s = self.state();
        let key = (registry.to_owned(), repo.to_owned());
        if s.probed
            .get(&key)
            .is_some_and(|t| now.saturating_duration_since(*t) < PUBLIC_RECHECK)
        {
            return false;
        }
        insert_bounded(&mut s.probed, key, now, MAX_ENTRIES);
        true
    }

    /// Whether `repo` is known to be public.
    pub fn is_public(&self, registry: &str, repo: &str) -> bool {
        self.state()
            .public
            .contains_key(&(registry.to_owned(), repo.to_owned()))
    }

    /// Entries held now: (grants, memberships, public repositories).
    pub fn sizes(&self) -> (usize, usize, usize) {
        let s = self.state();
        (s.grants.len(), s.members.len(), s.public.len())
    }
}

/// Inserts `key` at `now`; past `max` entries, keeps the newest three quarters.
fn insert_bounded<K: Hash + Eq>(map: &mut HashMap<K, Instant>, key: K, now: Instant, max: usize) {
    map.insert(key, now);
    if map.len() > max {
        let mut times: Vec<Instant> = map.values().copied().collect();
        times.sort_unstable();
        let cut = times[map.len() - max * 3 / 4];
        map.retain(|_, t| *t >= cut);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> Digest {
        format!("sha256:{}", format!("{n:02x}").repeat(32))
            .parse()
            .unwrap()
    }

    fn access(ttl: u64) -> Access {
        Access::new(AccessConfig {
            enabled: true,
            ttl: Duration::from_secs(ttl),
        })
    }

    #[test]
    fn fingerprints_are_keyed_and_distinct() {
        let a = access(60);
        let alice = HeaderValue::from_static("Basic YWxpY2U6cHc=");
        let bob = HeaderValue::from_static("Basic Ym9iOnB3");
        assert_eq!(a.fingerprint(None), None);
        assert_eq!(a.fingerprint(Some(&alice)), a.fingerprint(Some(&alice)));
        assert_ne!(a.fingerprint(Some(&alice)), a.fingerprint(Some(&bob)));
        // Another process (another key) computes another fingerprint.
        assert_ne!(
            a.fingerprint(Some(&alice)),
            access(60).fingerprint(Some(&alice))
        );
        // The credential's bytes are nowhere in what is kept.
        let fp = a.fingerprint(Some(&alice)).unwrap();
        assert!(!fp.windows(5).any(|w| w == b"Basic"));
    }

    #[test]
    fn a_grant_lasts_its_ttl_and_opens_only_digests_known_in_its_repository() {
        let a = access(60);
        let t0 = Instant::now();
        let fp = a.fingerprint(Some(&HeaderValue::from_static("Bearer t")));
        assert!(!a.allows("r.io", "team/app", &d(1), fp, t0));
        a.learn("r.io", "team/app", &d(1), fp, 200, t0);
        assert!(a.allows("r.io", "team/app", &d(1), fp, t0 + Duration::from_secs(59)));
        assert!(!a.allows("r.io", "team/app", &d(1), fp, t0 + Duration::from_secs(60)));
        // Another caller, repository, registry or digest: not granted.
        a.learn("r.io", "team/app", &d(1), fp, 200, t0);
        let other = a.fingerprint(Some(&HeaderValue::from_static("Bearer u")));
        assert!(!a.allows("r.io", "team/app", &d(1), other, t0));
        assert!(!a.allows("r.io", "team/app", &d(1), None, t0));
        assert!(!a.allows("r.io", "team/other", &d(1), fp, t0));
        assert!(!a.allows("s.io", "team/app", &d(1), fp, t0));
        // Digest 2 is not known in team/app until upstream said so to someone.
        assert!(!a.allows("r.io", "team/app", &d(2), fp, t0));
        a.learn("r.io", "team/app", &d(2), other, 200, t0);
        assert!(a.allows("r.io", "team/app", &d(2), fp, t0));
    }

    #[test]
    fn refusals_withdraw_what_they_contradict() {
        let a = access(60);
        let t0 = Instant::now();
        let fp = a.fingerprint(Some(&HeaderValue::from_static("Bearer t")));
        a.learn("r.io", "app", &d(1), fp, 200, t0);
        a.learn("r.io", "app", &d(1), fp, 401, t0);
        assert!(!a.allows("r.io", "app", &d(1), fp, t0));
        a.learn("r.io", "app", &d(1), fp, 200, t0);
        a.learn("r.io", "app", &d(1), fp, 404, t0);
        assert!(!a.allows("r.io", "app", &d(1), fp, t0));
        // 429 and 5xx teach nothing.
        a.learn("r.io", "app", &d(1), fp, 200, t0);
        a.learn("r.io", "app", &d(1), fp, 429, t0);
        assert!(a.allows("r.io", "app", &d(1), fp, t0));
    }

    #[test]
    fn offline_only_public_repositories_and_fresh_grants_are_served() {
        let a = access(60);
        let t0 = Instant::now();
        let late = t0 + Duration::from_secs(3600);
        let fp = a.fingerprint(Some(&HeaderValue::from_static("Bearer t")));
        // Private: granted to fp, anonymous refused.
        a.learn("r.io", "private", &d(1), fp, 200, t0);
        a.learn("r.io", "private", &d(1), None, 401, t0);
        assert_eq!(
            a.allows_offline("r.io", "private", &d(1), fp, t0),
            Some(Allowed::Grant)
        );
        assert_eq!(a.allows_offline("r.io", "private", &d(1), fp, late), None);
        assert_eq!(a.allows_offline("r.io", "private", &d(1), None, t0), None);
        // Public: any caller, long after, for digests known in it only.
        a.learn("r.io", "public", &d(2), None, 200, t0);
        assert_eq!(
            a.allows_offline("r.io", "public", &d(2), None, late),
            Some(Allowed::Public)
        );
        assert_eq!(
            a.allows_offline("r.io", "public", &d(2), fp, late),
            Some(Allowed::Public)
        );
        assert_eq!(a.allows_offline("r.io", "public", &d(1), None, late), None);
        // Until an anonymous refusal says the repository is private now.
        a.learn("r.io", "public", &d(2), None, 403, late);
        assert_eq!(a.allows_offline("r.io", "public", &d(2), None, late), None);
    }

    #[test]
    fn a_repository_is_probed_once_per_recheck() {
        let a = access(60);
        let t0 = Instant::now();
        assert!(a.should_probe("r.io", "app", t0));
        assert!(!a.should_probe("r.io", "app", t0 + Duration::from_secs(1)));
        assert!(a.should_probe("r.io", "other", t0));
        assert!(a.should_probe("r.io", "app", t0 + PUBLIC_RECHECK));
        assert!(!a.is_public("r.io", "app"));
        a.learn("r.io", "app", &d(1), None, 200, t0);
        assert!(a.is_public("r.io", "app"));
    }

    #[test]
    fn zero_ttl_remembers_no_grant() {
        let a = access(0);
        let t0 = Instant::now();
        a.learn("r.io", "app", &d(1), None, 200, t0);
        assert!(!a.allows("r.io", "app", &d(1), None, t0));
    }

    #[test]
    fn tables_stay_bounded() {
        let a = access(60);
        let t0 = Instant::now();
        for i in 0..(MAX_ENTRIES * 2) {
            let fp = Some([(i % 251) as u8; 32]);
            a.learn(
                "r.io",
                &format!("repo{i}"),
                &d(1),
                fp,
                200,
                t0 + Duration::from_millis(i as u64),
            );
        }
        let (grants, members, public) = a.sizes();
        assert!(grants <= MAX_ENTRIES && members <= MAX_ENTRIES * 16 && public == 0);
        // The newest survive.
        let last = MAX_ENTRIES * 2 - 1;
        assert!(a.allows(
            "r.io",
            &format!("repo{last}"),
            &d(1),
            Some([(last % 251) as u8; 32]),
            t0 + Duration::from_millis(last as u64)
        ));
    }
}

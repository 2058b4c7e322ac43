//! [`CredentialPool`]: the `Authorization` values of callers that upstream recently
//! authorised for a repository of this registry, so that a shared download can go on
//! with another caller's credential when the one it started with expires.
//!
//! The engine runs one download per digest for every caller on the node; it fetches with
//! the credential of the caller that started it. When that token expires mid-blob, the
//! resumed `GET` gets a 401: [`BlobUpstream`](super::BlobUpstream) then tries the
//! credentials other callers were authorised with for the same repository, newest first.
//!
//! Kept in memory only, per registry client (so never sent to another registry), per
//! repository, at most [`PER_REPO`] values for at most [`KEEP`] after they were last
//! authorised, at most [`REPOS`] repositories; values are marked sensitive and never
//! logged or printed (`Debug` shows counts).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use reqwest::header::HeaderValue;

/// Credentials kept per repository.
pub(super) const PER_REPO: usize = 4;
/// Repositories kept.
pub(super) const REPOS: usize = 256;
/// How long a credential is kept after upstream last authorised it.
pub(super) const KEEP: Duration = Duration::from_secs(600);

/// Recently authorised credentials per repository of one registry.
#[derive(Default)]
pub struct CredentialPool {
    repos: Mutex<HashMap<String, VecDeque<(HeaderValue, Instant)>>>,
}

impl std::fmt::Debug for CredentialPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let repos = self.repos.lock().map(|r| r.len()).unwrap_or(0);
        f.debug_struct("CredentialPool")
            .field("repos", &repos)
            .finish_non_exhaustive()
    }
}

impl CredentialPool {
    /// Upstream authorised `authorization` for `repo` at `now`: it becomes the newest.
    pub fn remember(&self, repo: &str, authorization: &HeaderValue, now: Instant) {
        let mut value = authorization.clone();
        value.set_sensitive(true);
        let mut repos = self.repos.lock().unwrap_or_else(|e| e.into_inner());
        if !repos.contains_key(repo) && repos.len() >= REPOS {
            // Drop the repository whose newest credential is the oldest.
            let oldest = repos
                .iter()
                .min_by_key(|(_, q)| q.front().map(|(_, t)| *t))
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                repos.remove(&k);
            }
        }
        let q = repos.entry(repo.to_owned()).or_default();
        q.retain(|(v, _)| v != authorization);
        q.push_front((value, now));
        q.truncate(PER_REPO);
    }

    /// Upstream refused `authorization` for `repo`: it is dropped.
    pub fn forget(&self, repo: &str, authorization: &HeaderValue) {
        let mut repos = self.repos.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(q) = repos.get_mut(repo) {
            q.retain(|(v, _)| v != authorization);
        }
    }

    /// The credentials authorised for `repo` within `KEEP` (10 minutes) of `now`, newest
    /// first, except `own`.
    pub fn others(&self, repo: &str, own: Option<&HeaderValue>, now: Instant) -> Vec<HeaderValue> {
        let mut repos = self.repos.lock().unwrap_or_else(|e| e.into_inner());
        let Some(q) = repos.get_mut(repo) else {
            return Vec::new();
        };
        q.retain(|(_, t)| now.saturating_duration_since(*t) < KEEP);
        q.iter()
            .filter(|(v, _)| Some(v) != own)
            .map(|(v, _)| v.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_first_bounded_and_expiring() {
        let pool = CredentialPool::default();
        let t0 = Instant::now();
        let v = |i: usize| HeaderValue::from_str(&format!("Bearer t{i}")).unwrap();
        for i in 0..6 {
            pool.remember("app", &v(i), t0 + Duration::from_secs(i as u64));
        }
        let now = t0 + Duration::from_secs(6);
        assert_eq!(pool.others("app", None, now), vec![v(5), v(4), v(3), v(2)]);
        assert_eq!(pool.others("app", Some(&v(5)), now), vec![v(4), v(3), v(2)]);
        assert!(pool.others("other", None, now).is_empty());
        pool.forget("app", &v(4));
        assert_eq!(pool.others("app", Some(&v(5)), now), vec![v(3), v(2)]);
        // Remembering again moves it to the front, once.
        pool.remember("app", &v(2), now);
        assert_eq!(pool.others("app", None, now), vec![v(2), v(5), v(3)]);
        assert!(pool.others("app", None, now + KEEP).is_empty());
        assert!(!format!("{pool:?}").contains("Bearer"));
    }

    #[test]
    fn repositories_are_bounded() {
        let pool = CredentialPool::default();
        let t0 = Instant::now();
        let v = HeaderValue::from_static("Basic eDp5");
        for i in 0..(REPOS + 10) {
            pool.remember(&format!("r{i}"), &v, t0 + Duration::from_millis(i as u64));
        }
        assert_eq!(pool.repos.lock().unwrap().len(), REPOS);
        let now = t0 + Duration::from_secs(1);
        assert!(pool.others("r0", None, now).is_empty());
        assert_eq!(pool.others(&format!("r{}", REPOS + 9), None, now), vec![v]);
    }
}

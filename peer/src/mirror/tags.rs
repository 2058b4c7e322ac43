//! The last digest upstream gave for each tag, for `--stale-tag-window`: while upstream
//! is unreachable or rate-limits this node, a tag resolved within the window is
//! answered from its last known digest (the manifest itself then comes by digest, from
//! this node or its peers, through the access check like any other object).
//!
//! Opt-in: the window is zero (off) by default, because a stale answer is not what
//! containerd asked for: a tag moved upstream during the outage is answered with its
//! old digest. Pure apart from the lock: `now` is passed in.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use shoal_proto::Digest;

/// Most tags remembered; past that the oldest quarter is forgotten.
pub const MAX_TAGS: usize = 16_384;

/// What upstream answered for a tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The manifest's digest (`Docker-Content-Digest`).
    pub digest: Digest,
    /// Its `Content-Type`.
    pub media_type: String,
    /// When upstream answered.
    pub at: Instant,
}

/// (registry, repository, tag).
type TagKey = (String, String, String);

/// The remembered answers and the window they may be used in.
#[derive(Debug)]
pub struct TagMemory {
    window: Duration,
    tags: Mutex<HashMap<TagKey, Resolved>>,
}

impl TagMemory {
    /// A memory answering within `window` (zero: never; nothing is remembered).
    pub fn new(window: Duration) -> TagMemory {
        TagMemory {
            window,
            tags: Mutex::new(HashMap::new()),
        }
    }

    /// Whether stale answers are on.
    pub fn enabled(&self) -> bool {
        !self.window.is_zero()
    }

    /// The window.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Remembers upstream's answer for `tag` of `repo` on `registry`.
    pub fn remember(&self, registry: &str, repo: &str, tag: &str, resolved: Resolved) {
        if !self.enabled() {
            return;
        }
        let mut tags = self.tags.lock().unwrap_or_else(|e| e.into_inner());
        tags.insert((registry.into(), repo.into(), tag.into()), resolved);
        if tags.len() > MAX_TAGS {
            let mut times: Vec<Instant> = tags.values().map(|r| r.at).collect();
            times.sort_unstable();
            let cut = times[tags.len() - MAX_TAGS * 3 / 4];
            tags.retain(|_, r| r.at >= cut);
        }
    }

    /// The last answer for `tag`, if upstream gave it within the window before `now` and
    /// its media type is one the caller accepts (`accept` empty or with `*/*`: any).
    pub fn recall(
        &self,
        registry: &str,
        repo: &str,
        tag: &str,
        accept: &[String],
        now: Instant,
    ) -> Option<Resolved> {
        if !self.enabled() {
            return None;
        }
        let tags = self.tags.lock().unwrap_or_else(|e| e.into_inner());
        let r = tags.get(&(registry.into(), repo.into(), tag.into()))?;
        let fresh = now.saturating_duration_since(r.at) <= self.window;
        (fresh && accepts(accept, &r.media_type)).then(|| r.clone())
    }

    /// Tags remembered now.
    pub fn len(&self) -> usize {
        self.tags.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether `media_type` is among the `Accept` values (each may list several,
/// comma-separated, with parameters).
pub fn accepts(accept: &[String], media_type: &str) -> bool {
    let mut any = true;
    for v in accept.iter().flat_map(|v| v.split(',')) {
        let t = v.split(';').next().unwrap_or("").trim();
        if t.is_empty() {
            continue;
        }
        any = false;
        if t == "*/*" || t.eq_ignore_ascii_case(media_type) {
            return true;
        }
    }
    any
}

#[cfg(test)]
mod tests {
    use super::*;

    const INDEX: &str = "application/vnd.oci.image.index.v1+json";

    fn d(n: u8) -> Digest {
        format!("sha256:{}", format!("{n:02x}").repeat(32))
            .parse()
            .unwrap()
    }

    fn resolved(n: u8, at: Instant) -> Resolved {
        Resolved {
            digest: d(n),
            media_type: INDEX.into(),
            at,
        }
    }

    #[test]
    fn off_remembers_nothing() {
        let m = TagMemory::new(Duration::ZERO);
        let now = Instant::now();
        m.remember("r", "a/b", "v1", resolved(1, now));
        assert!(m.is_empty());
        assert_eq!(m.recall("r", "a/b", "v1", &[], now), None);
    }

    #[test]
    fn answers_within_the_window_only_and_the_latest() {
        let m = TagMemory::new(Duration::from_secs(60));
        let t0 = Instant::now();
        m.remember("r", "a/b", "v1", resolved(1, t0));
        m.remember("r", "a/b", "v1", resolved(2, t0 + Duration::from_secs(10)));
        let at = |s| t0 + Duration::from_secs(s);
        assert_eq!(
            m.recall("r", "a/b", "v1", &[], at(70)).unwrap().digest,
            d(2)
        );
        assert_eq!(m.recall("r", "a/b", "v1", &[], at(71)), None);
        assert_eq!(m.recall("r", "a/b", "v2", &[], at(11)), None);
        assert_eq!(m.recall("other", "a/b", "v1", &[], at(11)), None);
    }

    #[test]
    fn a_media_type_the_caller_does_not_accept_is_not_answered() {
        let m = TagMemory::new(Duration::from_secs(60));
        let now = Instant::now();
        m.remember("r", "a/b", "v1", resolved(1, now));
        let docker = vec!["application/vnd.docker.distribution.manifest.v2+json".into()];
        assert_eq!(m.recall("r", "a/b", "v1", &docker, now), None);
        let both = vec![
            "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.index.v1+json;q=0.9".into(),
        ];
        assert!(m.recall("r", "a/b", "v1", &both, now).is_some());
        assert!(m.recall("r", "a/b", "v1", &["*/*".into()], now).is_some());
    }

    #[test]
    fn the_count_is_bounded() {
        let m = TagMemory::new(Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..(MAX_TAGS + 10) {
            let at = t0 + Duration::from_millis(i as u64);
            m.remember("r", "a", &format!("t{i}"), resolved(1, at));
        }
        assert!(m.len() <= MAX_TAGS);
        let last = format!("t{}", MAX_TAGS + 9);
        assert!(m.recall("r", "a", &last, &[], t0).is_some());
        assert!(m.recall("r", "a", "t0", &[], t0).is_none());
    }
}

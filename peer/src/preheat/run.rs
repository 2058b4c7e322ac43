//! One preheat job on this node: resolve the image's manifest through the
//! registry client (the node's `hosts.toml`), pick the platform manifests of
//! an index, then fetch the config and layers through the download engine
//! (the swarm: one upstream copy per layer however many nodes preheat) into
//! the store, reporting progress as it goes.
//!
//! Auth: a first request without credentials; on a 401 the challenge says
//! how: `Basic` takes the job's user and password, `Bearer` a token from the
//! realm, asked with them (or anonymously without). A token credential is
//! sent as `Bearer` from the start. The `Authorization` built here lives in
//! this job's memory (and its downloads' upstream) only; it is marked
//! sensitive and never logged, and no error quotes it.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use reqwest::header::{CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use sha2::{Digest as _, Sha256};
use shoal_proto::Digest;
use shoal_proto::v1;
use tokio::sync::watch;
use tracing::{debug, info};

use super::manifest::{self, BlobRef, Parsed, Platform};
use crate::engine::{Download, Engine, Upstream};
use crate::registry::challenge::BearerChallenge;
use crate::registry::{Object, RegistryClient, UpstreamRequest};

/// Downloads of a job under way, with their sizes.
type Started = Arc<std::sync::Mutex<Vec<(Arc<Download>, u64)>>>;

/// Blobs of one job downloaded at once.
const PARALLEL_BLOBS: usize = 4;
/// How often progress is reported while blobs download.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);

/// What a job needs.
pub(super) struct Job {
    pub(super) order: v1::PreheatImage,
    pub(super) engine: Engine,
    pub(super) client: Arc<RegistryClient>,
}

/// How a job ended.
pub(super) enum Outcome {
    /// Every blob is on the node.
    Done,
    /// Why not.
    Failed(String),
    /// Cancelled.
    Cancelled,
}

/// Progress as it is reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Counts {
    pub(super) blobs_done: u32,
    pub(super) blobs_total: u32,
    pub(super) bytes_done: u64,
    pub(super) bytes_total: u64,
}

/// Runs `job` until done, failed or `cancel` turns true, sending progress to
/// `report`.
pub(super) async fn run(
    job: Job,
    mut cancel: watch::Receiver<bool>,
    report: impl Fn(Counts),
) -> Outcome {
    let work = async {
        let mut auth = Auth::new(job.order.credential.as_ref())?;
        let o = &job.order;
        let blobs = resolve(
            &job.client,
            &o.repository,
            &o.reference,
            &o.platforms,
            &mut auth,
        )
        .await?;
        let mut counts = Counts {
            blobs_total: blobs.len() as u32,
            bytes_total: blobs.iter().map(|b| b.size).sum(),
            ..Counts::default()
        };
        report(counts);
        info!(
            blobs = blobs.len(),
            bytes = counts.bytes_total,
            "preheat manifest resolved"
        );
        let upstream: Arc<dyn Upstream> = Arc::new(
            job.client
                .blob_upstream(o.repository.clone(), auth.header.clone()),
        );
        // Downloads under way, for the bytes of pieces already verified.
        let started: Started = Arc::default();
        let mut queue = blobs.iter().copied();
        let mut running = tokio::task::JoinSet::new();
        let mut spawn_next = |running: &mut tokio::task::JoinSet<Result<u64, String>>| {
            let Some(b) = queue.next() else {
                return;
            };
            let (engine, upstream, started) =
                (job.engine.clone(), upstream.clone(), started.clone());
            running.spawn(async move {
                let d = engine.fetch(b.digest, b.size, upstream);
                lock(&started).push((d.clone(), b.size));
                let r = d.wait().await;
                lock(&started).retain(|(x, _)| !Arc::ptr_eq(x, &d));
                r.map(|()| b.size)
                    .map_err(|e| format!("blob {}: {e}", b.digest))
            });
        };
        for _ in 0..PARALLEL_BLOBS {
            spawn_next(&mut running);
        }
        let mut tick = tokio::time::interval(PROGRESS_EVERY);
        let mut last = counts;
        loop {
            tokio::select! {
                next = running.join_next() => match next {
                    Some(Ok(Ok(size))) => {
                        counts.blobs_done += 1;
                        counts.bytes_done += size;
                        spawn_next(&mut running);
                    }
                    Some(Ok(Err(e))) => return Err(e),
                    Some(Err(e)) => return Err(format!("a blob download task ended: {e}")),
                    None => {
                        report(counts);
                        return Ok(());
                    }
                },
                _ = tick.tick() => {
                    let partial: u64 = lock(&started).iter().map(|(d, size)| verified(d, *size)).sum();
                    let now = Counts {
                        bytes_done: (counts.bytes_done + partial).min(counts.bytes_total),
                        ..counts
                    };
                    if now != last {
                        report(now);
                        last = now;
                    }
                }
            }
        }
    };
    tokio::select! {
        r = work => match r {
            Ok(()) => Outcome::Done,
            Err(e) => Outcome::Failed(e),
        },
        _ = cancel.wait_for(|c| *c) => Outcome::Cancelled,
    }
}

/// The job's credential and the `Authorization` it led to.
struct Auth<'a> {
    credential: Option<&'a v1::PreheatCredential>,
    header: Option<HeaderValue>,
}

impl<'a> Auth<'a> {
    fn new(credential: Option<&'a v1::PreheatCredential>) -> Result<Self, String> {
        let credential = credential
            .filter(|c| !(c.username.is_empty() && c.password.is_empty() && c.token.is_empty()));
        let header = match credential {
            Some(c) if !c.token.is_empty() => Some(sensitive(format!("Bearer {}", c.token))?),
            _ => None,
        };
        Ok(Auth { credential, header })
    }

    /// `Basic` of the user and password, if the job has them.
    fn basic(&self) -> Result<Option<HeaderValue>, String> {
        match self.credential {
            Some(c) if !c.username.is_empty() => {
                let raw = format!("{}:{}", c.username, c.password);
                let b64 = base64(raw.as_bytes());
                Ok(Some(sensitive(format!("Basic {b64}"))?))
            }
            _ => Ok(None),
        }
    }

    /// Answers a 401's challenge; false when there is nothing more to try.
    async fn answer(
        &mut self,
        client: &RegistryClient,
        challenge: Option<&str>,
    ) -> Result<bool, String> {
        let Some(challenge) = challenge else {
            return Ok(false);
        };
        if challenge
            .trim_start()
            .get(..6)
            .is_some_and(|s| s.eq_ignore_ascii_case("basic "))
        {
            let basic = self.basic()?;
            if basic.is_none() || self.header == basic {
                return Ok(false);
            }
            self.header = basic;
            return Ok(true);
        }
        let Some(bearer) = BearerChallenge::parse(challenge) else {
            return Ok(false);
        };
        let Some(token) = client.token(&bearer, self.basic()?).await else {
            return Err("the registry's token service refused the job's credential".into());
        };
        let header = Some(sensitive(format!("Bearer {token}"))?);
        if self.header == header {
            return Ok(false);
        }
        self.header = header;
        Ok(true)
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Bytes of `d`'s verified pieces (at most `size`).
fn verified(d: &Download, size: u64) -> u64 {
    let p = d.progress();
    let p = p.borrow();
    match p.shape {
        Some(shape) => (u64::from(p.have.count()) * u64::from(shape.piece_size())).min(size),
        None => 0,
    }
}

/// Standard base64 with padding (for `Basic`).
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn sensitive(value: String) -> Result<HeaderValue, String> {
    let mut v = HeaderValue::from_str(&value)
        .map_err(|_| "the credential holds characters a header cannot carry".to_owned())?;
    v.set_sensitive(true);
    Ok(v)
}

/// A manifest's body (checked against `reference` when it is a digest) and
/// its content type, with the auth dance.
async fn get_manifest(
    client: &RegistryClient,
    repo: &str,
    reference: &str,
    auth: &mut Auth<'_>,
) -> Result<(Vec<u8>, Option<String>), String> {
    for _ in 0..3 {
        let req = UpstreamRequest {
            method: reqwest::Method::GET,
            repo: repo.to_owned(),
            object: Object::Manifest(reference.to_owned()),
            accept: manifest::ACCEPT.iter().map(|s| s.to_string()).collect(),
            authorization: auth.header.clone(),
            range_from: None,
        };
        let resp = client
            .send(&req)
            .await
            .map_err(|e| format!("manifest {repo}:{reference}: {e}"))?;
        let status = resp.status();
        if status.as_u16() == 401 {
            let challenge = resp
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            if auth.answer(client, challenge.as_deref()).await? {
                debug!("preheat: answering the registry's challenge");
                continue;
            }
            return Err(format!(
                "manifest {repo}:{reference}: the registry answered 401 (a private image needs a credential with the job, or the one given is refused)"
            ));
        }
        if !status.is_success() {
            return Err(format!(
                "manifest {repo}:{reference}: the registry answered {status}"
            ));
        }
        if resp
            .content_length()
            .is_some_and(|n| n > manifest::MAX_MANIFEST as u64)
        {
            return Err(format!("manifest {repo}:{reference}: larger than 4 MiB"));
        }
        let content_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut body = Vec::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| format!("manifest {repo}:{reference}: {e}"))?;
            if body.len() + chunk.len() > manifest::MAX_MANIFEST {
                return Err(format!("manifest {repo}:{reference}: larger than 4 MiB"));
            }
            body.extend_from_slice(&chunk);
        }
        if let Ok(d) = reference.parse::<Digest>() {
            let got = Digest::from_sha256(Sha256::digest(&body).into());
            if got != d {
                return Err(format!(
                    "manifest {repo}@{reference}: the registry sent a document of digest {got}"
                ));
            }
        }
        return Ok((body, content_type));
    }
    Err(format!(
        "manifest {repo}:{reference}: the registry kept asking for credentials"
    ))
}

/// The blobs to fetch for `reference`: an image's config and layers, or those
/// of the platform manifests of an index.
async fn resolve(
    client: &RegistryClient,
    repo: &str,
    reference: &str,
    platforms: &[String],
    auth: &mut Auth<'_>,
) -> Result<Vec<BlobRef>, String> {
    let (body, ct) = get_manifest(client, repo, reference, auth).await?;
    let entries = match manifest::parse(ct.as_deref(), &body)? {
        Parsed::Image(blobs) => return Ok(blobs),
        Parsed::Index(entries) => entries,
    };
    let wanted: Vec<Platform> = if platforms.is_empty() {
        vec![Platform::of_node()]
    } else {
        platforms
            .iter()
            .map(|p| Platform::parse(p).ok_or_else(|| format!("bad platform {p:?}")))
            .collect::<Result<_, _>>()?
    };
    let mut blobs: Vec<BlobRef> = Vec::new();
    for digest in manifest::choose(&entries, &wanted)? {
        let (body, ct) = get_manifest(client, repo, &digest.to_string(), auth).await?;
        match manifest::parse(ct.as_deref(), &body)? {
            Parsed::Image(more) => {
                for b in more {
                    if !blobs.iter().any(|x| x.digest == b.digest) {
                        blobs.push(b);
                    }
                }
            }
            Parsed::Index(_) => {
                return Err(format!("manifest {digest} of the index is an index itself"));
            }
        }
    }
    Ok(blobs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_as_rfc_4648_says() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn a_credential_header_is_sensitive_and_never_printed() {
        let c = v1::PreheatCredential {
            username: "alice".into(),
            password: "s3cret-pw".into(),
            token: String::new(),
        };
        let auth = Auth::new(Some(&c)).unwrap();
        let basic = auth.basic().unwrap().unwrap();
        assert!(basic.is_sensitive());
        assert!(!format!("{basic:?}").contains("YWxpY2U"));
        assert!(!format!("{c:?}").contains("s3cret"));
    }
}

//! One node's pull in the swarm benchmark: a `GET` of the blob, streamed, hashed as it
//! arrives and thrown away, timed from a start instant that every node shares.
//!
//! The benchmark runs this inside each node's namespace (its own binary again, `fetch`
//! subcommand, under `ip netns exec`) so that the request leaves from the node's own
//! address, or reaches the node's own `127.0.0.1` mirror. The result is one JSON line
//! on stdout ([`Fetched`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use sha2::{Digest as _, Sha256};

/// What one fetch got.
#[derive(Debug, Clone, PartialEq)]
pub struct Fetched {
    /// The HTTP status (0 when no answer came).
    pub status: u16,
    /// Bytes of the body received.
    pub bytes: u64,
    /// `sha256:<hex>` of those bytes.
    pub digest: String,
    /// Seconds from the shared start to the last byte (or the error).
    pub secs: f64,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

impl Fetched {
    /// As one JSON line.
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "status": self.status,
            "bytes": self.bytes,
            "digest": self.digest,
            "secs": self.secs,
            "error": self.error,
        })
        .to_string()
    }

    /// Parses [`Fetched::to_json`]'s line.
    pub fn from_json(line: &str) -> Option<Fetched> {
        let v: serde_json::Value = serde_json::from_str(line.trim()).ok()?;
        Some(Fetched {
            status: u16::try_from(v["status"].as_u64()?).ok()?,
            bytes: v["bytes"].as_u64()?,
            digest: v["digest"].as_str()?.to_owned(),
            secs: v["secs"].as_f64()?,
            error: v["error"].as_str().map(str::to_owned),
        })
    }
}

/// Milliseconds since the Unix epoch: the clock every node of one machine shares.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Waits until `start_at_ms` (Unix ms), then fetches `url` to the end; gives up after
/// `limit` (a bound on a hang; the result then carries the error).
pub async fn fetch(url: &str, start_at_ms: u64, limit: Duration) -> Fetched {
    let wait = start_at_ms.saturating_sub(unix_ms());
    tokio::time::sleep(Duration::from_millis(wait)).await;
    let start = SystemTime::UNIX_EPOCH + Duration::from_millis(start_at_ms.max(unix_ms()));
    let since = |t: SystemTime| t.duration_since(start).map_or(0.0, |d| d.as_secs_f64());
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    let mut status = 0u16;
    let work = async {
        // No proxy: the lab has none, and the URL is inside it.
        let client = reqwest::Client::builder().no_proxy().build()?;
        let response = client.get(url).send().await?;
        status = response.status().as_u16();
        if !response.status().is_success() {
            anyhow::bail!("HTTP {status}");
        }
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk?;
            hasher.update(&chunk);
            bytes += chunk.len() as u64;
        }
        anyhow::Ok(())
    };
    let error = match tokio::time::timeout(limit, work).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(format!("{e:#}")),
        Err(_) => Some(format!("not done after {limit:?}")),
    };
    Fetched {
        status,
        bytes,
        digest: format!("sha256:{:x}", hasher.finalize()),
        secs: since(SystemTime::now()),
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip() {
        let f = Fetched {
            status: 200,
            bytes: 42,
            digest: "sha256:00".into(),
            secs: 1.5,
            error: None,
        };
        assert_eq!(Fetched::from_json(&f.to_json()), Some(f.clone()));
        let e = Fetched {
            error: Some("HTTP 404".into()),
            status: 404,
            ..f
        };
        assert_eq!(Fetched::from_json(&e.to_json()), Some(e));
        assert_eq!(Fetched::from_json("not json"), None);
    }
}

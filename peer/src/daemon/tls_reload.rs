//! Re-reads the peer's TLS directory (`--peer-tls-dir`) when its files change, a
//! renewed certificate or a rotated CA, and swaps the QUIC endpoint's server and
//! client configurations. Connections already open keep the configuration they
//! were made with; new ones use the new files. A set that does not load (a file
//! half-written, a key that does not match) is skipped with a warning and the
//! last good one stays. The scheduler link reads the directory at each
//! (re)connection by itself.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use quinn::Endpoint;
use tracing::{info, warn};

use crate::tls;
use crate::transfer::ClientTls;

/// The files whose change triggers a reload.
const FILES: [&str; 3] = ["ca.crt", "tls.crt", "tls.key"];

/// What identifies a version of the files: modification time and length of each.
fn stamp(dir: &Path) -> Vec<Option<(SystemTime, u64)>> {
    FILES
        .iter()
        .map(|f| {
            let m = std::fs::metadata(dir.join(f)).ok()?;
            Some((m.modified().ok()?, m.len()))
        })
        .collect()
}

/// Checks `dir` every `every`, and whenever `nudge` is notified (a renewal just
/// wrote the files), and on a change reloads `endpoint`'s server configuration and
/// the piece client's (`client`), until `stop` resolves.
pub(super) async fn watch(
    dir: PathBuf,
    endpoint: Endpoint,
    client: ClientTls,
    every: Duration,
    nudge: std::sync::Arc<tokio::sync::Notify>,
    stop: impl std::future::Future<Output = ()>,
) {
    // Stamps and certificate files are read on the blocking pool, off the async
    // workers that carry QUIC uploads and mirror bodies.
    let mut seen = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || stamp(&dir))
            .await
            .unwrap_or_default()
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            _ = tick.tick() => {}
            () = nudge.notified() => {}
        }
        let check = {
            let (dir, seen) = (dir.clone(), seen.clone());
            tokio::task::spawn_blocking(move || {
                let now = stamp(&dir);
                (now != seen).then(|| {
                    let loaded = tls::load_dir(&dir);
                    (now, loaded)
                })
            })
        };
        let Ok(Some((now, loaded))) = check.await else {
            continue;
        };
        match loaded {
            Ok(loaded) => {
                endpoint.set_server_config(Some(loaded.server_config()));
                client.set(loaded.client_config());
                seen = now;
                info!(tls.dir = %dir.display(), "peer certificate or CA changed on disk; reloaded for new QUIC connections");
            }
            // Not recorded as seen: the next tick tries again (the rest of a
            // rotation may still be on its way).
            Err(e) => {
                warn!(tls.dir = %dir.display(), error = %e, "peer TLS files changed but do not load; keeping the previous ones")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{Leaf, SERVER_NAME, init_dir, issue_dir, load_dir};

    /// Connects to `server` with the identity in `dir`; whether the handshake
    /// succeeded.
    async fn handshake(server: std::net::SocketAddr, dir: &Path) -> bool {
        let client =
            tls::endpoint("127.0.0.1:0".parse().unwrap(), &load_dir(dir).unwrap()).unwrap();
        let ok = match client.connect(server, SERVER_NAME) {
            Ok(connecting) => tokio::time::timeout(Duration::from_secs(5), connecting)
                .await
                .is_ok_and(|c| c.is_ok()),
            Err(_) => false,
        };
        client.close(0u32.into(), b"done");
        ok
    }

    #[tokio::test]
    async fn a_rotated_ca_is_used_for_new_connections() {
        let tmp = tempfile::tempdir().unwrap();
        let (old_ca, new_ca) = (tmp.path().join("old"), tmp.path().join("new"));
        init_dir(&old_ca).unwrap();
        init_dir(&new_ca).unwrap();
        let node = |ca: &Path, name: &str| {
            let out = tmp.path().join(name);
            issue_dir(ca, &out, &Leaf::node(name, Duration::from_secs(3600))).unwrap();
            out
        };
        let served = node(&old_ca, "served");
        let (old_client, new_client) = (node(&old_ca, "old-client"), node(&new_ca, "new-client"));

        let server =
            tls::endpoint("127.0.0.1:0".parse().unwrap(), &load_dir(&served).unwrap()).unwrap();
        let addr = server.local_addr().unwrap();
        let accept = tokio::spawn({
            let server = server.clone();
            async move {
                while let Some(incoming) = server.accept().await {
                    tokio::spawn(async move {
                        if let Ok(c) = incoming.await {
                            c.closed().await;
                        }
                    });
                }
            }
        });
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let client = ClientTls::default();
        tokio::spawn(watch(
            served.clone(),
            server.clone(),
            client.clone(),
            Duration::from_millis(20),
            std::sync::Arc::default(),
            async {
                let _ = stop_rx.await;
            },
        ));
        assert!(handshake(addr, &old_client).await);
        assert!(!handshake(addr, &new_client).await);

        // Rotate: the served directory gets the new CA and a certificate from it.
        let staged = node(&new_ca, "served-new");
        for f in FILES {
            std::fs::copy(staged.join(f), served.join(f)).unwrap();
        }
        let mut rotated = false;
        for _ in 0..250 {
            if handshake(addr, &new_client).await {
                rotated = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(rotated, "the new CA was never picked up");
        assert!(
            !handshake(addr, &old_client).await,
            "the retired CA is still trusted"
        );
        let _ = stop_tx.send(());
        server.close(0u32.into(), b"done");
        accept.abort();
    }
}

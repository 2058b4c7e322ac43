//! The scheduler's status page (`GET /`) in a real headless Chromium (Debian's
//! `chromium`), and a small live swarm for it to show.
//!
//! [`LiveSwarm`]: a `shoal-scheduler` process, peer processes in two zones, Debian's
//! `docker-registry` holding a generated image; [`LiveSwarm::pull`] pulls every blob
//! of the image through chosen peers' mirrors, as containerd would. [`dump_dom`]
//! loads the page and returns its DOM once the page has drawn the scheduler's data;
//! [`screenshot`] writes a PNG of it (`scripts/screenshot-status`).
//!
//! Not here: what the page must show (the test `scheduler/tests/status_page.rs`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;

use crate::image::{OciImage, random_bytes};
use crate::registry::Registry;
use crate::swarm::{PeerOptions, PeerProcess, SchedulerProcess, pull_blob};

/// The browser.
pub const CHROMIUM: &str = "chromium";
/// The repository the image is pushed to.
pub const REPO: &str = "status/app";

/// Whether Chromium is installed; under `CI=true` its absence fails the test
/// ([`crate::require_tools`]).
pub fn require_chromium(test: &str) -> bool {
    crate::require_tools(test, &[CHROMIUM, "docker-registry", "skopeo"])
}

/// A scheduler, peers and a registry with one image, all on 127.0.0.1.
#[derive(Debug)]
pub struct LiveSwarm {
    /// The scheduler.
    pub sched: SchedulerProcess,
    /// The peers, `peer-0` … in zones `zone-a`, `zone-b`, `zone-a`, … (declaring
    /// `--link-rate` 10gbit in zone-a, 1gbit in zone-b)
    pub peers: Vec<PeerProcess>,
    /// The registry.
    pub registry: Registry,
    /// The image in it (`REPO:v1`).
    pub image: OciImage,
    /// The scheduler's operator token (for writes: preheat, …).
    pub token: String,
}

impl LiveSwarm {
    /// Starts everything under `dir`: the registry with an image of one random layer
    /// per entry of `layer_mib` (its size in MiB), the scheduler, and `nodes` peers
    /// (with `peer_flags` added to each peer's command line); waits until every peer
    /// has joined.
    pub async fn start(
        dir: &Path,
        nodes: usize,
        layer_mib: &[usize],
        peer_flags: &[&str],
    ) -> anyhow::Result<Self> {
        let registry = Registry::start(&dir.join("registry"))?;
        let contents: Vec<Vec<u8>> = layer_mib
            .iter()
            .enumerate()
            .map(|(i, mib)| random_bytes(mib << 20, 40 + i as u64))
            .collect();
        let names: Vec<String> = (0..contents.len()).map(|i| format!("layer{i}")).collect();
        let files: Vec<[(&str, &[u8]); 1]> = names
            .iter()
            .zip(&contents)
            .map(|(n, c)| [(n.as_str(), c.as_slice())])
            .collect();
        let layers: Vec<&[(&str, &[u8])]> = files.iter().map(|f| &f[..]).collect();
        let image = OciImage::build_layers(&dir.join("image"), "v1", &layers)?;
        image.push(&registry.addr().to_string(), REPO, "v1")?;

        let tls = dir.join("tls");
        PeerProcess::tls_init(&tls)?;
        let token = "status-page-operator-token-0123".to_owned();
        let token_file = dir.join("operator-token");
        std::fs::write(&token_file, &token)?;
        let sched = SchedulerProcess::start_with(
            dir,
            &tls,
            &[
                "--operator-token-file".into(),
                token_file.display().to_string(),
            ],
        )
        .await?;
        let mut peers = Vec::new();
        for i in 0..nodes {
            let zone = if i % 2 == 0 { "zone-a" } else { "zone-b" };
            let rate = if i % 2 == 0 { "10gbit" } else { "1gbit" };
            let mut extra: Vec<String> = vec![
                "--zone".into(),
                zone.into(),
                "--link-rate".into(),
                rate.into(),
            ];
            extra.extend(peer_flags.iter().map(|f| f.to_string()));
            let opts = PeerOptions {
                scheduler: Some(sched.grpc_url()),
                default_upstream: Some(registry.url()),
                hosts_dir: None,
                tls_dir: tls.clone(),
                extra,
            };
            peers.push(PeerProcess::start(dir, &format!("peer-{i}"), &opts).await?);
        }
        sched.wait_for_peers(nodes).await?;
        Ok(LiveSwarm {
            sched,
            peers,
            registry,
            image,
            token,
        })
    }

    /// Pulls every blob of the image through the mirrors of the peers `which`, all at
    /// once, and checks each copy against its digest.
    pub async fn pull(&self, which: &[usize]) -> anyhow::Result<()> {
        let mut pulls = Vec::new();
        for &i in which {
            for blob in &self.image.blobs {
                let mirror = self.peers[i].mirror_url();
                let (digest, size) = (blob.digest.clone(), blob.size);
                pulls.push(tokio::spawn(async move {
                    let got = pull_blob(&mirror, REPO, &digest)
                        .await
                        .map_err(|e| anyhow::anyhow!("{mirror}: {digest}: {e}"))?;
                    anyhow::ensure!(got == (digest.clone(), size), "{mirror}: {got:?}");
                    Ok(())
                }));
            }
        }
        for p in pulls {
            p.await??;
        }
        Ok(())
    }

    /// Posts a preheat job of the image (`REPO:v1` in the registry) to the peers of
    /// `zone`; its JSON.
    pub async fn preheat(&self, zone: &str) -> anyhow::Result<serde_json::Value> {
        let body = serde_json::json!({
            "image": format!("{}/{REPO}:v1", self.registry.addr()),
            "scope": {"zone": zone},
        });
        let resp = reqwest::Client::new()
            .post(format!("{}/api/v1/preheat", self.sched.http_url()))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await?;
        anyhow::ensure!(resp.status().as_u16() == 201, "preheat: {}", resp.status());
        Ok(resp.json().await?)
    }

    /// `http://…/`: the status page.
    pub fn page_url(&self) -> String {
        format!("{}/", self.sched.http_url())
    }
}

/// Chromium's common flags: headless, a throw-away profile in `profile`, no sandbox
/// when running as root (Chromium refuses to start otherwise), nothing fetched from
/// the internet on its own.
fn chromium(profile: &Path) -> Command {
    let mut cmd = Command::new(CHROMIUM);
    cmd.args([
        "--headless",
        "--disable-gpu",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--mute-audio",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    if crate::is_root() {
        cmd.arg("--no-sandbox");
    }
    cmd
}

/// Runs `cmd`, killing it after `limit`; its stdout.
fn run(mut cmd: Command, limit: Duration) -> anyhow::Result<String> {
    let child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("starting chromium")?;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(limit) {
        Ok(out) => out?,
        Err(_) => {
            // Only the process this function started.
            let _ = Command::new("kill").arg(pid.to_string()).status();
            anyhow::bail!("chromium did not finish within {limit:?}");
        }
    };
    anyhow::ensure!(
        out.status.success(),
        "chromium failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The DOM of the page at `url` once it has drawn the scheduler's data
/// (`<body data-state="live">`), as `chromium --dump-dom` prints it. The page's
/// polls run in Chromium's virtual time (`--virtual-time-budget`), which waits for
/// the network; a dump taken before the first answer was drawn is taken again (at
/// most 10 times).
pub fn dump_dom(url: &str, profile: &Path) -> anyhow::Result<String> {
    let mut last = String::new();
    for _ in 0..10 {
        let mut cmd = chromium(profile);
        cmd.args(["--virtual-time-budget=5000", "--dump-dom", url]);
        last = run(cmd, Duration::from_secs(60))?;
        if last.contains(r#"data-state="live""#) {
            return Ok(last);
        }
    }
    anyhow::bail!("the page never drew the scheduler's data; last DOM:\n{last}")
}

/// A `width`×`height` PNG of the page at `url`, once it has drawn its data, into
/// `out`.
pub fn screenshot(
    url: &str,
    profile: &Path,
    out: &Path,
    width: u32,
    height: u32,
) -> anyhow::Result<PathBuf> {
    let out = std::path::absolute(out)?;
    let mut cmd = chromium(profile);
    cmd.args([
        "--virtual-time-budget=5000",
        "--force-device-scale-factor=1",
    ])
    .arg(format!("--window-size={width},{height}"))
    .arg(format!("--screenshot={}", out.display()))
    .arg(url);
    run(cmd, Duration::from_secs(60))?;
    anyhow::ensure!(out.is_file(), "chromium wrote no {}", out.display());
    Ok(out)
}

//! `shoal-status-screenshot`: a PNG of the scheduler's status page over a live swarm,
//! for the docs. Run it with `scripts/screenshot-status`, which installs what it needs
//! and builds the binaries first.
//!
//! ```text
//! shoal-status-screenshot [OUT.png]     # default docs/img/status-page.png
//! ```
//!
//! It starts (see `shoal_tests::status_page::LiveSwarm`) a registry with a three-layer
//! image, a scheduler and five peers in two zones whose uploads are limited to
//! 8 MiB/s; three peers pull the image, then two more start pulling it from them, and
//! the page is shot while they do. Everything runs on 127.0.0.1 under a temporary
//! directory, and is stopped and removed at the end.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use shoal_tests::status_page::{LiveSwarm, screenshot};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "docs/img/status-page.png".into()),
    );
    let work = std::env::temp_dir().join(format!("shoal-status-{}", std::process::id()));
    let result = shoot(&work, &out).await;
    let _ = std::fs::remove_dir_all(&work);
    let out = result?;
    println!("wrote {}", out.display());
    Ok(())
}

async fn shoot(work: &std::path::Path, out: &std::path::Path) -> anyhow::Result<PathBuf> {
    let swarm = LiveSwarm::start(work, 5, &[64, 24, 4], &["--upload-rate-limit", "8MiB"])
        .await
        .context("starting the swarm")?;
    swarm.pull(&[0, 1, 2]).await.context("the first pulls")?;
    // Two more peers pull from the first three, slowly enough to be seen doing it.
    let swarm = std::sync::Arc::new(swarm);
    let later = {
        let swarm = swarm.clone();
        tokio::spawn(async move { swarm.pull(&[3, 4]).await })
    };
    let overview = format!("{}api/v1/overview", swarm.page_url());
    for _ in 0..100 {
        let o: serde_json::Value = reqwest::get(&overview).await?.json().await?;
        let busy = o["tasks"]
            .as_array()
            .is_some_and(|ts| ts.iter().any(|t| t["downloading"].as_u64() > Some(0)));
        if busy {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (url, profile) = (swarm.page_url(), work.join("chromium"));
    let out = out.to_path_buf();
    let shot =
        tokio::task::spawn_blocking(move || screenshot(&url, &profile, &out, 1400, 1520)).await??;
    later.await?.context("the later pulls")?;
    Ok(shot)
}

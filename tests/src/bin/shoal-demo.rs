//! `shoal-demo`: the main job (see `shoal_tests::demo`). Run it with `scripts/demo`,
//! which installs what it needs and builds the release binaries first.
//!
//! ```text
//! shoal-demo [--nodes 3] [--rate 1gbit] [--big-layer-mib 64] [--keep]
//! ```
//!
//! Needs root (network namespaces, containerd).

use std::time::Duration;

use anyhow::{Context, bail};
use shoal_tests::demo::{self, DemoOptions};
use shoal_tests::netns::LinkRate;

const USAGE: &str = "usage: shoal-demo [--nodes N] [--rate RATE] [--big-layer-mib MIB] [--keep]";

fn main() -> anyhow::Result<()> {
    let mut nodes = 3;
    let mut rate: LinkRate = "1gbit".parse().map_err(anyhow::Error::msg)?;
    let mut big_layer_mib = 64;
    let mut keep = false;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .with_context(|| format!("{flag} needs a value; {USAGE}"))
        };
        match flag.as_str() {
            "--nodes" => nodes = value()?.parse().context("--nodes takes a number")?,
            "--rate" => rate = value()?.parse().map_err(anyhow::Error::msg)?,
            "--big-layer-mib" => {
                big_layer_mib = value()?.parse().context("--big-layer-mib takes a number")?
            }
            "--keep" => keep = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => bail!("unknown argument {other:?}; {USAGE}"),
        }
    }
    for tool in [
        "docker-registry",
        "skopeo",
        "containerd",
        "ctr",
        "curl",
        "ip",
        "tc",
    ] {
        anyhow::ensure!(
            which(tool),
            "{tool} is not installed; scripts/demo installs it (scripts/install-deps)"
        );
    }
    anyhow::ensure!(
        shoal_tests::is_root(),
        "the demo needs root: network namespaces and containerd"
    );
    // Short: containerd's socket path must fit in 107 bytes.
    let work_dir = std::path::PathBuf::from(format!("/tmp/shoal-demo-{}", std::process::id()));
    let opts = DemoOptions {
        nodes,
        rate,
        big_layer_mib,
        prefix: format!("sd{}", std::process::id() % 100_000),
        work_dir: work_dir.clone(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let result = demo::run(&opts, |cleaner| {
        let dir = work_dir.clone();
        rt.spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            eprintln!(
                "demo: interrupted; stopping everything and removing {}",
                dir.display()
            );
            cleaner.cleanup();
            if !keep {
                remove_dir(&dir);
            }
            std::process::exit(130);
        });
    });
    // Everything the run started is stopped by now (dropped), the lab removed.
    if keep {
        eprintln!("demo: logs kept in {}", work_dir.display());
    } else {
        remove_dir(&work_dir);
    }
    let report = result?;
    println!("\n{}", demo::render(&report));
    println!(
        "the scheduler's view (shoalctl tasks):\n{}",
        report.scheduler_view
    );
    rt.shutdown_timeout(Duration::from_millis(100));
    Ok(())
}

fn which(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

/// Removes the work dir; a containerd killed mid-unpack may leave a mount behind in
/// it, so a failure is reported, not fatal.
fn remove_dir(dir: &std::path::Path) {
    if let Err(e) = std::fs::remove_dir_all(dir)
        && dir.exists()
    {
        eprintln!("demo: could not remove {}: {e}", dir.display());
    }
}

//! The peer daemon as containerd sees it, measured on loopback with a real
//! `shoal-peer run` process (release build; `scripts/bench-peer` builds it first):
//!
//! 1. RSS idle, then the peak during N concurrent blob downloads through the mirror
//!    (default 8 × 1 GiB; `SHOAL_BENCH_BLOBS`, `SHOAL_BENCH_MIB`): the kernel's
//!    high-water mark (`VmHWM` in `/proc/<pid>/status`) after them.
//! 2. A blob already on the node streamed through the mirror, beside
//!    `cat FILE > /dev/null` of its blob file in the same run (the ratio is what to
//!    compare across machines).
//! 3. Time to first byte of a cached blob (p50/p99 over 200 requests), after the
//!    peer was restarted and the blob read once (the first read after a restart
//!    verifies every piece; it is reported on its own line).
//!
//! No scheduler: every download comes from upstream (one plain HTTP upstream per
//! blob, in this process). Prints a table; asserts nothing.

use std::time::{Duration, Instant};

use futures::StreamExt;
use shoal_tests::blob;
use shoal_tests::swarm::{PeerOptions, PeerProcess};
use shoal_tests::upstream::CountingUpstream;

const REPO: &str = "bench/blob";

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn status(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
        * 1024
}

async fn get_all(url: String) -> (u64, Duration) {
    let start = Instant::now();
    let resp = reqwest::get(&url).await.expect("GET");
    assert!(resp.status().is_success(), "{url}: {}", resp.status());
    let mut n = 0u64;
    let mut body = resp.bytes_stream();
    while let Some(c) = body.next().await {
        n += c.expect("body").len() as u64;
    }
    (n, start.elapsed())
}

fn main() {
    let blobs = env("SHOAL_BENCH_BLOBS", 8);
    let mib = env("SHOAL_BENCH_MIB", 1024);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(run(blobs, mib));
}

async fn run(blobs: usize, mib: usize) {
    let dir = tempfile::tempdir_in(std::env::var("SHOAL_BENCH_DIR").unwrap_or("/var/tmp".into()))
        .expect("temp dir");
    let hosts = dir.path().join("certs.d");
    let mut ups = Vec::new();
    for i in 0..blobs {
        let (data, digest) = blob(mib << 20, i as u64 + 1);
        let up = CountingUpstream::start(REPO, &digest, data, Duration::ZERO)
            .await
            .expect("upstream");
        let ns = up.url().trim_start_matches("http://").to_owned();
        std::fs::create_dir_all(hosts.join(&ns)).unwrap();
        std::fs::write(
            hosts.join(&ns).join("hosts.toml"),
            format!("server = \"{}\"\n", up.url()),
        )
        .unwrap();
        ups.push((up, digest, ns));
    }
    let tls = dir.path().join("tls");
    PeerProcess::tls_init(&tls).expect("tls init");
    let options = PeerOptions {
        scheduler: None,
        default_upstream: None,
        hosts_dir: Some(hosts),
        tls_dir: tls,
        extra: vec![
            "--cache-size".into(),
            format!("{}MiB", (blobs + 1) * mib * 2),
        ],
    };
    let mut peer = PeerProcess::start(dir.path(), "peer", &options)
        .await
        .expect("peer");
    let pid = peer.pid().expect("pid");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = status(pid, "VmRSS:");

    // 1. N concurrent downloads. The kernel keeps the peak (VmHWM) itself.
    let start = Instant::now();
    let gets: Vec<_> = ups
        .iter()
        .map(|(_, d, ns)| {
            tokio::spawn(get_all(format!(
                "{}/v2/{REPO}/blobs/{d}?ns={ns}",
                peer.mirror_url()
            )))
        })
        .collect();
    let mut total = 0;
    for g in gets {
        total += g.await.expect("join").0;
    }
    let cold = start.elapsed();
    let rss_after = status(pid, "VmRSS:");
    let hwm = status(pid, "VmHWM:");
    assert_eq!(total, (blobs * (mib << 20)) as u64, "every byte arrived");

    // 2. Cached blob through the mirror vs cat of its file.
    let (_, d0, ns0) = &ups[0];
    let file = peer
        .data_dir()
        .join("blobs/sha256")
        .join(d0.trim_start_matches("sha256:"));
    let url = format!("{}/v2/{REPO}/blobs/{d0}?ns={ns0}", peer.mirror_url());
    let mut cat = Vec::new();
    let mut mirror = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let ok = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("cat '{}' > /dev/null", file.display()))
            .status()
            .expect("cat")
            .success();
        assert!(ok);
        cat.push((mib << 20) as f64 / t.elapsed().as_secs_f64() / 1e6);
        let (n, el) = get_all(url.clone()).await;
        mirror.push(n as f64 / el.as_secs_f64() / 1e6);
    }
    let best = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);

    // 2b. After a restart: the first read hashes every piece against its recorded
    // hash before it is served (damage at rest is never served); later reads do not.
    peer.kill();
    let peer = PeerProcess::start(dir.path(), "peer", &options)
        .await
        .expect("peer restarted");
    let url = format!("{}/v2/{REPO}/blobs/{d0}?ns={ns0}", peer.mirror_url());
    let (n, el) = get_all(url.clone()).await;
    assert_eq!(n, (mib << 20) as u64, "every byte after the restart");
    let first_after_restart = n as f64 / el.as_secs_f64() / 1e6;

    // 3. Time to first byte of a cached blob.
    let client = reqwest::Client::new();
    let mut ttfb = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        let resp = client.get(&url).send().await.expect("GET");
        let mut body = resp.bytes_stream();
        let _ = body.next().await;
        ttfb.push(t.elapsed().as_secs_f64() * 1e3);
        drop(body);
    }
    ttfb.sort_by(f64::total_cmp);

    let mb = |b: u64| b as f64 / (1 << 20) as f64;
    println!("| what | value |");
    println!("|---|---|");
    println!("| peer RSS idle | {:.1} MiB |", mb(idle));
    println!(
        "| peer RSS peak during {blobs} concurrent {mib} MiB downloads (VmHWM) | {:.1} MiB (right after: {:.1} MiB) |",
        mb(hwm),
        mb(rss_after)
    );
    println!(
        "| {blobs} × {mib} MiB from upstream through the mirror | {:.1} s, {:.0} MB/s in all |",
        cold.as_secs_f64(),
        total as f64 / cold.as_secs_f64() / 1e6
    );
    println!(
        "| cat blob file > /dev/null (best of 3) | {:.0} MB/s |",
        best(&cat)
    );
    println!(
        "| cached blob through the mirror (best of 3) | {:.0} MB/s ({:.2} × cat) |",
        best(&mirror),
        best(&mirror) / best(&cat)
    );
    println!(
        "| cached blob, first read after a restart (every piece verified) | {:.0} MB/s ({:.2} × cat) |",
        first_after_restart,
        first_after_restart / best(&cat)
    );
    println!(
        "| time to first byte, cached blob (200 requests) | p50 {:.2} ms, p99 {:.2} ms |",
        ttfb[100], ttfb[197]
    );
}

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
//!    verifies every piece; it is reported on its own line): with the access check
//!    on (default: the decision remembered for 60 s), on with `--access-cache-ttl 0s`
//!    (an upstream `HEAD` before every request) and off, in the same run.
//! 4. Upstream requests per pull of a 10-layer image on a warm node (every blob
//!    already on the node), through a real `docker-registry` whose access log is
//!    counted: check on, and off.
//!
//! No scheduler: every download comes from upstream (one plain HTTP upstream per
//! blob, in this process). Prints a table; asserts nothing but the bytes.

use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt;
use shoal_tests::blob;
use shoal_tests::image::{OciImage, random_bytes};
use shoal_tests::registry::Registry;
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

    // 3. Time to first byte of a cached blob: the access check on (decisions
    // remembered), on with every decision asked upstream, and off.
    let ttfb = ttfb_of(&url).await;
    let mut peer = peer;
    let mut ttfb_with = async |extra: &[&str]| {
        let mut o = options.clone();
        o.extra.extend(extra.iter().map(|s| s.to_string()));
        peer.kill();
        peer = PeerProcess::start(dir.path(), "peer", &o)
            .await
            .expect("peer restarted");
        let url = format!("{}/v2/{REPO}/blobs/{d0}?ns={ns0}", peer.mirror_url());
        // The first read after a restart verifies every piece: not measured.
        get_all(url.clone()).await;
        ttfb_of(&url).await
    };
    let ttfb_uncached = ttfb_with(&["--access-cache-ttl", "0s"]).await;
    let ttfb_off = ttfb_with(&["--access-check", "off"]).await;

    // 4. Upstream requests per pull of a 10-layer image on a warm node.
    let per_pull = upstream_requests_per_warm_pull(dir.path()).await;

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
    let p = |v: &[f64]| {
        format!(
            "p50 {:.2} ms, p99 {:.2} ms",
            v[v.len() / 2],
            v[v.len() * 99 / 100 - 1]
        )
    };
    println!(
        "| time to first byte, cached blob (200 requests), access check on (decision remembered) | {} |",
        p(&ttfb)
    );
    println!(
        "| time to first byte, cached blob, access check on with --access-cache-ttl 0s (a HEAD upstream each time) | {} |",
        p(&ttfb_uncached)
    );
    println!(
        "| time to first byte, cached blob, access check off | {} |",
        p(&ttfb_off)
    );
    match per_pull {
        Ok((on, expired, off)) => println!(
            "| upstream requests per pull of a 10-layer image on a warm node (manifest HEAD + GET, 11 blobs) | check on: {on} within the TTL of the last pull's grant, {expired} once it expired; off: {off} |"
        ),
        Err(e) => println!("| upstream requests per warm pull | not measured: {e} |"),
    }
}

/// Times to first byte of 200 `GET`s of `url`, in ms, sorted.
async fn ttfb_of(url: &str) -> Vec<f64> {
    let client = reqwest::Client::new();
    let mut ttfb = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        let resp = client.get(url).send().await.expect("GET");
        assert!(resp.status().is_success(), "{url}: {}", resp.status());
        let mut body = resp.bytes_stream();
        let _ = body.next().await;
        ttfb.push(t.elapsed().as_secs_f64() * 1e3);
        drop(body);
    }
    ttfb.sort_by(f64::total_cmp);
    ttfb
}

/// A 10-layer image in a real `docker-registry`, pulled through a fresh peer (cold),
/// then again (warm): the registry requests of the warm pull with the access check on
/// (within the grant's TTL, and once it expired) and off (manifest `HEAD` by tag and `GET` by digest, config and
/// 10 layers, as containerd asks).
async fn upstream_requests_per_warm_pull(dir: &Path) -> anyhow::Result<(usize, usize, usize)> {
    let work = dir.join("ten-layers");
    let layers: Vec<Vec<u8>> = (0..10).map(|i| random_bytes(256 << 10, 100 + i)).collect();
    let files: Vec<Vec<(&str, &[u8])>> = layers.iter().map(|l| vec![("data", &l[..])]).collect();
    let refs: Vec<&[(&str, &[u8])]> = files.iter().map(Vec::as_slice).collect();
    let image = OciImage::build_layers(&work.join("oci"), "v1", &refs)?;
    let registry = Registry::start(&work.join("registry"))?;
    image.push(&registry.addr().to_string(), "bench/ten", "v1")?;
    let ns = registry.addr().to_string();
    let hosts = work.join("certs.d");
    std::fs::create_dir_all(hosts.join(&ns))?;
    std::fs::write(
        hosts.join(&ns).join("hosts.toml"),
        format!("server = \"http://{ns}\"\n"),
    )?;
    let tls = work.join("tls");
    PeerProcess::tls_init(&tls)?;
    let mut options = PeerOptions {
        scheduler: None,
        default_upstream: None,
        hosts_dir: Some(hosts),
        tls_dir: tls,
        extra: Vec::new(),
    };
    let pull = |mirror: String| {
        let (image, ns) = (image.clone(), ns.clone());
        async move {
            let client = reqwest::Client::new();
            let base = format!("{mirror}/v2/bench/ten");
            let accept = "application/vnd.oci.image.manifest.v1+json";
            let head = client
                .head(format!("{base}/manifests/v1?ns={ns}"))
                .header("accept", accept)
                .send()
                .await?;
            anyhow::ensure!(
                head.status().is_success(),
                "manifest HEAD: {}",
                head.status()
            );
            let m = client
                .get(format!(
                    "{base}/manifests/{}?ns={ns}",
                    image.manifest_digest
                ))
                .header("accept", accept)
                .send()
                .await?;
            anyhow::ensure!(m.status().is_success(), "manifest GET: {}", m.status());
            for b in &image.blobs {
                let (n, _) = get_all(format!("{base}/blobs/{}?ns={ns}", b.digest)).await;
                anyhow::ensure!(n == b.size, "blob {}: {n} bytes", b.digest);
            }
            anyhow::Ok(())
        }
    };
    let requests = || {
        registry
            .access_log()
            .iter()
            .filter(|a| a.from_shoal())
            .count()
    };
    // A cold pull, then the warm pull counted (after `wait`: grants expire).
    let mut warm_pull = async |extra: &[&str], wait: Duration| {
        options.extra = extra.iter().map(|s| s.to_string()).collect();
        let peer = PeerProcess::start(&work, "ten", &options).await?;
        pull(peer.mirror_url()).await?;
        tokio::time::sleep(wait).await;
        let before = requests();
        pull(peer.mirror_url()).await?;
        anyhow::Ok(requests() - before)
    };
    let on = warm_pull(&[], Duration::ZERO).await?;
    let expired = warm_pull(&["--access-cache-ttl", "1s"], Duration::from_millis(1500)).await?;
    let off = warm_pull(&["--access-check", "off"], Duration::ZERO).await?;
    Ok((on, expired, off))
}

//! The swarm benchmark in a small configuration (3 nodes, a 32 MiB blob, 100 Mbit/s
//! links), as CI's smoke test of `shoal-bench-swarm`: every mode runs in real network
//! namespaces with the real registry, pull-through cache, scheduler and peers, and the
//! test checks the bytes — every node's copy matches the digest, and the registry's
//! egress is what each mode implies — never the time.
//!
//! Needs root (network namespaces), `ip`/`tc` (iproute2), docker-registry, skopeo and
//! curl: skips with a printed reason outside CI, fails under `CI=true`.

use std::collections::HashMap;
use std::process::Command;

use shoal_tests::swarm::workspace_bin;
use shoal_tests::{require_root, require_tools};

/// `mode=… key=value …` lines into mode → key → value.
fn machine_lines(stdout: &str) -> HashMap<String, HashMap<String, f64>> {
    stdout
        .lines()
        .filter(|l| l.starts_with("mode="))
        .map(|l| {
            let mut mode = String::new();
            let mut kv = HashMap::new();
            for field in l.split_whitespace() {
                let (k, v) = field.split_once('=').expect("key=value");
                if k == "mode" {
                    mode = v.to_owned();
                } else {
                    kv.insert(k.to_owned(), v.parse().expect("a number"));
                }
            }
            (mode, kv)
        })
        .collect()
}

#[test]
fn three_nodes_32_mib_every_mode_delivers_the_blob_and_shoal_fetches_it_once() {
    let test = "swarm_bench_smoke";
    if !require_tools(test, &["ip", "tc", "docker-registry", "skopeo", "curl"]) {
        return;
    }
    if !require_root(test, "making network namespaces") {
        return;
    }
    let out_dir = tempfile::tempdir().unwrap();
    let out = Command::new(workspace_bin("shoal-bench-swarm"))
        .args([
            "--nodes",
            "3",
            "--size",
            "32MiB",
            "--rate",
            "100mbit",
            "--modes",
            "alone,direct,cache,shoal",
            "--timeline",
            "--out",
        ])
        .arg(out_dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "shoal-bench-swarm failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    // Every node's bytes hashed to the blob's digest, in every mode.
    assert_eq!(
        stdout.matches("| all digests match |").count(),
        4,
        "{stdout}"
    );
    assert!(!stdout.contains("MISMATCH"), "{stdout}");

    let lines = machine_lines(&stdout);
    assert_eq!(
        lines.len(),
        4,
        "one machine-readable line per mode:\n{stdout}"
    );
    for (mode, kv) in &lines {
        let pulling = if mode == "alone" { 1.0 } else { 3.0 };
        assert_eq!(kv["nodes"], pulling, "{mode}");
        // Every mode is also divided by the time one node needs alone.
        let by_alone = kv["p50_alone_ratio"];
        assert!(by_alone.is_finite() && by_alone > 0.0, "{mode}: {by_alone}");
        assert!(kv["size"] >= (32 << 20) as f64, "{mode}: {}", kv["size"]);
        for k in ["p50_ratio", "max_ratio"] {
            assert!(kv[k].is_finite() && kv[k] > 0.0, "{mode} {k} = {}", kv[k]);
        }
        // The machine did work while the nodes pulled (a share of its cores).
        let busy = kv["cpu_busy"];
        assert!(busy > 0.0 && busy <= 1.01, "{mode} cpu_busy = {busy}");
    }
    // The peers' own CPU, from their `process_cpu_seconds_total`: shoal mode only.
    let peer_cpu = lines["shoal"]["peer_cpu_s_per_gib"];
    assert!(
        peer_cpu.is_finite() && peer_cpu > 0.0,
        "peer_cpu_s_per_gib = {peer_cpu}\n{stdout}"
    );
    assert!(!lines["direct"].contains_key("peer_cpu_s_per_gib"));
    // Alone: one node, one copy; direct: the registry served the blob once per node.
    let alone = lines["alone"]["egress_ratio"];
    assert!((alone - 1.0).abs() < 0.01, "alone egress {alone}");
    let direct = lines["direct"]["egress_ratio"];
    assert!((direct - 3.0).abs() < 0.01, "direct egress {direct}");
    // The cache fetched it at least once; Shoal exactly once for the whole swarm.
    assert!(lines["cache"]["egress_ratio"] >= 0.99, "{stdout}");
    let shoal = lines["shoal"]["egress_ratio"];
    assert!(
        (0.99..=1.05).contains(&shoal),
        "shoal: the registry served {shoal} copies of the blob, not one\n{stdout}\n{stderr}"
    );
    // `--timeline`: one idle line per node and mode (1 node alone, 3 in the others),
    // none idle longer than its pull took.
    let idle: Vec<(f64, f64)> = stderr
        .lines()
        .filter_map(|l| {
            let rest = l.split("downlink idle ").nth(1)?;
            let mut words = rest.split_whitespace();
            let idle = words.next()?.parse().ok()?;
            let secs = words.nth(3)?.parse().ok()?;
            Some((idle, secs))
        })
        .collect();
    assert_eq!(idle.len(), 10, "{stderr}");
    for (idle, secs) in idle {
        assert!(
            (0.0..=secs).contains(&idle),
            "idle {idle} s of {secs} s\n{stderr}"
        );
    }
    // The report files were written, naming the TCP congestion control.
    let md = std::fs::read_to_string(out_dir.path().join("swarm.md")).unwrap();
    assert!(md.contains("| shoal |"), "{md}");
    assert!(md.contains(", TCP congestion control "), "{md}");
    let png = std::fs::read(out_dir.path().join("swarm.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "swarm.png is a PNG");
}

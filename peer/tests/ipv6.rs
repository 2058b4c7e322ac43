//! The swarm smoke test on IPv6 only: `shoal-bench-swarm --ipv6` in Shoal's mode, with 3
//! nodes pulling a 32 MiB blob over 100 Mbit/s links, in network namespaces whose hosts
//! have no IPv4 address at all (not even `127.0.0.1`; see `shoal_tests::netns`).
//!
//! What runs there is what a cluster runs: Debian's `docker-registry` listening on its
//! host's ULA, `shoal-scheduler` and every `shoal-peer run` on the default `[::]`
//! listeners (peers advertise the address they find on their node), the scheduler's URL
//! and certificate for an IPv6 literal, the peers' mirror on `[::1]`, and each node
//! asking for the blob with `ns=[fd00:5ea1::2]:5000` (percent-encoded, as containerd
//! sends it), which the peers resolve through a `hosts.toml` under that name.
//!
//! Checked: every node's bytes hash to the blob's digest, and the registry served the
//! blob once for the whole swarm (egress 1.0 copy). Never a time.
//!
//! Needs root (network namespaces), `ip`/`tc`, `docker-registry`, `skopeo` and `curl`:
//! skips with a printed reason outside CI, fails under `CI=true`.

use std::process::Command;

use shoal_tests::swarm::workspace_bin;
use shoal_tests::{require_root, require_tools};

#[test]
fn three_nodes_on_ipv6_only_get_the_blob_and_the_registry_serves_it_once() {
    let test = "ipv6";
    if !require_tools(test, &["ip", "tc", "docker-registry", "skopeo", "curl"]) {
        return;
    }
    if !require_root(test, "making network namespaces") {
        return;
    }
    let out_dir = tempfile::tempdir().unwrap();
    let out = Command::new(workspace_bin("shoal-bench-swarm"))
        .args([
            "--nodes", "3", "--size", "32MiB", "--rate", "100mbit", "--modes", "shoal", "--ipv6",
            "--out",
        ])
        .arg(out_dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "shoal-bench-swarm --ipv6 failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.contains("| all digests match |") && !stdout.contains("MISMATCH"),
        "{stdout}"
    );
    let line = stdout
        .lines()
        .find(|l| l.starts_with("mode=shoal "))
        .unwrap_or_else(|| panic!("no machine-readable line:\n{stdout}"));
    let field = |k: &str| -> f64 {
        line.split_whitespace()
            .find_map(|f| f.strip_prefix(&format!("{k}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {k} in {line}"))
    };
    assert_eq!(field("nodes"), 3.0);
    assert!(field("size") >= (32 << 20) as f64, "{line}");
    let egress = field("egress_ratio");
    assert!(
        (0.99..=1.05).contains(&egress),
        "the registry served {egress} copies of the blob, not one\n{stdout}\n{stderr}"
    );
    eprintln!("{test}: {line}");
}

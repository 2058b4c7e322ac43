//! The benchmark lab's fair uplinks ([`UplinkQueue::Fair`]): what a host sends to
//! another host goes through that host's own queue on the sender's uplink, not the
//! default one and not a third host's. Checked on the kernel's own counters (`tc -s
//! class show`) after a real TCP transfer between two lab hosts, never on a timing.
//!
//! Needs root (network namespaces), `ip`/`tc` (iproute2) and python3 (the two ends of
//! the transfer): skips with a printed reason outside CI, fails under `CI=true`.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use shoal_tests::netns::{Lab, LinkRate, UplinkQueue, fair_class};
use shoal_tests::{require_root, require_tools};

const BYTES: u64 = 2 << 20;

/// The `Sent N bytes` counter of class `classid` in `tc -s class show` output.
fn sent_bytes(tc_output: &str, classid: &str) -> u64 {
    let mut lines = tc_output.lines();
    while let Some(line) = lines.next() {
        if line.starts_with(&format!("class htb {classid} ")) {
            let sent = lines.next().expect("a statistics line");
            let n = sent
                .split_whitespace()
                .nth(1)
                .expect("`Sent N bytes`")
                .parse()
                .expect("a byte count");
            return n;
        }
    }
    panic!("no class {classid} in:\n{tc_output}")
}

#[test]
fn traffic_to_a_host_goes_through_that_hosts_own_queue() {
    let test = "lab_uplink_queue";
    if !require_tools(test, &["ip", "tc", "python3"]) {
        return;
    }
    if !require_root(test, "making network namespaces") {
        return;
    }
    let prefix = format!("suq{}", std::process::id());
    let mut lab = Lab::new(&prefix, "100mbit".parse::<LinkRate>().unwrap())
        .unwrap()
        .with_uplink_queue(UplinkQueue::Fair);
    let a = lab.add_host("a").unwrap();
    let b = lab.add_host("b").unwrap();
    let c = lab.add_host("c").unwrap();

    // b listens and counts what it receives; a sends it BYTES.
    let listen = b.addr(7000);
    let mut sink = lab.command(&b, Path::new("python3"));
    sink.args([
        "-c",
        &format!(
            "import socket\n\
             s = socket.create_server(('{}', {}))\n\
             c, _ = s.accept()\n\
             n = 0\n\
             while (d := c.recv(65536)):\n    n += len(d)\n\
             print(n)",
            listen.ip(),
            listen.port()
        ),
    ])
    .stdout(Stdio::piped());
    let sink = sink.spawn().unwrap();
    let mut sent = false;
    for _ in 0..50 {
        let status = lab
            .command(&a, Path::new("python3"))
            .args([
                "-c",
                &format!(
                    "import socket\n\
                     s = socket.create_connection(('{}', {}))\n\
                     s.sendall(b'x' * {BYTES})\n\
                     s.close()",
                    listen.ip(),
                    listen.port()
                ),
            ])
            .stderr(Stdio::null())
            .status()
            .unwrap();
        if status.success() {
            sent = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(sent, "a could not connect to b's listener at {listen}");
    let out = sink.wait_with_output().unwrap();
    let received: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert_eq!(received, BYTES, "b received every byte a sent");

    let show = lab
        .command(&a, Path::new("tc"))
        .args(["-s", "class", "show", "dev", "eth0"])
        .output()
        .unwrap();
    assert!(show.status.success());
    let classes = String::from_utf8_lossy(&show.stdout);
    let to_b = sent_bytes(&classes, &fair_class(&b));
    let to_c = sent_bytes(&classes, &fair_class(&c));
    let default = sent_bytes(&classes, "1:2");
    assert!(
        to_b >= BYTES,
        "a's queue for b carried {to_b} bytes, less than the {BYTES} a sent b\n{classes}"
    );
    assert!(
        to_c < 16 << 10,
        "a's queue for c carried {to_c} bytes, though a sent c nothing\n{classes}"
    );
    assert!(
        default < 16 << 10,
        "a's default queue carried {default} bytes: the transfer was not classified\n{classes}"
    );
    // The link counters the benchmark reports: a's uplink and b's downlink carried the
    // transfer and its headers, c's downlink nothing of it.
    let (la, lb, lc) = (
        lab.link_bytes(&a).unwrap(),
        lab.link_bytes(&b).unwrap(),
        lab.link_bytes(&c).unwrap(),
    );
    assert!(la.tx >= BYTES, "a's uplink counted {} bytes", la.tx);
    assert!(lb.rx >= BYTES, "b's downlink counted {} bytes", lb.rx);
    assert!(lc.rx < 16 << 10, "c's downlink counted {} bytes", lc.rx);
    // The benchmark's timeline samples the same downlink counters, all hosts at once.
    let all = lab.downlink_counters().unwrap();
    assert_eq!(
        all.keys().map(String::as_str).collect::<Vec<_>>(),
        ["a", "b", "c"],
        "one counter per host"
    );
    assert!(
        all["b"] >= lb.rx,
        "b's downlink: {} then {}",
        lb.rx,
        all["b"]
    );
    assert!(
        all["b"] - lb.rx < 16 << 10,
        "b's downlink grew after the transfer"
    );
    assert!(
        all["c"] < 16 << 10,
        "c's downlink counted {} bytes",
        all["c"]
    );
    lab.cleanup();
}

/// `Lab::with_mtu` gives both ends of every host's link the MTU (jumbo frames for
/// `shoal-bench-swarm --mtu 9000`).
#[test]
fn a_lab_with_jumbo_frames_sets_both_ends_of_each_link() {
    let test = "lab_mtu";
    if !require_tools(test, &["ip", "tc"]) {
        return;
    }
    if !require_root(test, "making network namespaces") {
        return;
    }
    let prefix = format!("smt{}", std::process::id());
    let mut lab = Lab::new(&prefix, "100mbit".parse::<LinkRate>().unwrap())
        .unwrap()
        .with_mtu(Some(9000));
    let a = lab.add_host("a").unwrap();
    let mtu = |ns: &str, dev: &str| -> u64 {
        let out = std::process::Command::new("ip")
            .args(["-n", ns, "-j", "link", "show", "dev", dev])
            .output()
            .unwrap();
        assert!(out.status.success(), "ip link show {dev} in {ns}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v[0]["mtu"].as_u64().expect("an mtu")
    };
    assert_eq!(mtu(&a.ns, "eth0"), 9000, "the host's end");
    assert_eq!(
        mtu(&format!("{prefix}-br"), "v-a"),
        9000,
        "the bridge's end"
    );
    lab.cleanup();
}

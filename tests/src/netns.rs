//! A small shaped network for the swarm benchmark: one network namespace per host, all
//! joined by a bridge that lives in a namespace of its own, every link shaped with
//! `tc … tbf` in both directions, and processes started inside a host's namespace with
//! `ip netns exec`.
//!
//! Layout of a [`Lab`] with prefix `P`:
//! - `P-br`: the bridge `br0` and one veth end per host (`v-<role>`);
//! - `P-<role>`: a host, its veth end named `eth0` with `10.200.0.<n>/24`, and `lo` up
//!   (so a host's own 127.0.0.1 works, e.g. a peer's registry mirror).
//!
//! An IPv6-only lab ([`Lab::with_family`], [`Family::V6`]) gives `eth0` `fd00:5ea1::<n>/64`
//! instead (no DAD, so it is usable at once) and takes `127.0.0.1` off `lo`: a host then
//! has no IPv4 address at all, only `::1`, its ULA and the link-local address the kernel
//! adds.
//!
//! Nothing is created in the caller's namespace (each veth pair is made in the bridge
//! namespace with its other end placed straight into the host's), and the addresses are
//! reachable only from the lab's own namespaces, so parallel labs with different
//! prefixes cannot clash and no traffic leaves them.
//!
//! Shaping: `tbf` only shapes what a device sends. The host's `eth0` is shaped (its
//! uplink), and so is the bridge's end of the same link (what the bridge sends to the
//! host: its downlink), so every host has a full-duplex link of the given rate, as a
//! switch port would.
//!
//! A host's uplink queue ([`UplinkQueue`]) is one FIFO by default. With
//! [`UplinkQueue::Fair`] it is one queue per destination host instead, served round
//! robin, which is what a Linux host's default `fq_codel` does for flows to different
//! hosts: a sparse flow (the acknowledgements of a download) is not queued behind a bulk
//! one (the uploads). This kernel has no `fq_codel`, `sfq` or `fq`, so it is built from
//! `htb` classes, one per other host, and `u32` filters on the destination address.
//! The downlinks stay a FIFO, as a switch port's is.
//!
//! Clean-up: [`Lab::cleanup`] (also on drop, and from a [`Cleaner`] that a signal
//! handler holds) kills every process still running in the lab's namespaces — only
//! the lab's own processes can be there — and deletes the namespaces.
//!
//! Partitions: [`Lab::set_link`] takes a host's link down and up again (the fault suite).
//!
//! Not here: what runs on the hosts (the benchmark decides), latency (no netem).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use anyhow::Context;

/// A link rate as `tc` takes it (`100mbit`, `1gbit`, `500kbit`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkRate {
    /// Bits per second (`mbit` is 10^6 bits, as in `tc`).
    pub bits_per_sec: u64,
    /// The text passed to `tc`.
    pub tc: String,
}

impl FromStr for LinkRate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim().to_ascii_lowercase();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a rate like 100mbit"))?;
        let mult = match unit {
            "bit" => 1,
            "kbit" => 1_000,
            "mbit" => 1_000_000,
            "gbit" => 1_000_000_000,
            _ => return Err(format!("{s:?}: unit must be bit, kbit, mbit or gbit")),
        };
        let bits_per_sec = n.checked_mul(mult).filter(|b| *b >= 8_000).ok_or_else(|| {
            format!("{s:?}: must be at least 8kbit and fit in 64 bits of bits per second")
        })?;
        Ok(LinkRate {
            bits_per_sec,
            tc: format!("{n}{unit}"),
        })
    }
}

impl LinkRate {
    /// The `tbf` burst in bytes: 10 ms at this rate, at least 32 KiB (a burst below
    /// rate ÷ HZ cannot reach the rate).
    pub fn burst_bytes(&self) -> u64 {
        (self.bits_per_sec / 8 / 100).max(32 << 10)
    }
}

/// A host's link counters ([`Lab::link_bytes`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkBytes {
    /// Bytes received (what its downlink carried).
    pub rx: u64,
    /// Bytes sent (what its uplink carried).
    pub tx: u64,
}

impl LinkBytes {
    /// The counts since `earlier`.
    pub fn since(self, earlier: LinkBytes) -> LinkBytes {
        LinkBytes {
            rx: self.rx.saturating_sub(earlier.rx),
            tx: self.tx.saturating_sub(earlier.tx),
        }
    }
}

/// `program`, or `ip netns exec NS program` when `netns` is set (for helpers that
/// run either on loopback or on a lab host).
pub fn command_in(netns: Option<&str>, program: &str) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, program]);
            c
        }
        None => Command::new(program),
    }
}

/// One host of the lab.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// Its role, e.g. `registry`, `node-3`.
    pub role: String,
    /// Its namespace's name.
    pub ns: String,
    /// Its address on the bridge.
    pub ip: IpAddr,
}

impl Host {
    /// `ip:port` (`[ip]:port` for IPv6), the way URLs and `--*-listen` flags take it.
    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.ip, port)
    }

    /// The host's own loopback address (`127.0.0.1`, or `::1` in an IPv6-only lab).
    pub fn loopback(&self) -> IpAddr {
        match self.ip {
            IpAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
            IpAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
        }
    }
}

/// How a host's uplink (its `eth0`) queues what it sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UplinkQueue {
    /// One FIFO (`tbf` with 50 ms of queue): a download's acknowledgements wait behind
    /// everything the host uploads.
    #[default]
    Fifo,
    /// One queue per destination host, served round robin at packet granularity (`htb`
    /// classes of equal share, each with its own 50 ms FIFO): the nearest this kernel
    /// gets to `fq_codel`.
    Fair,
}

impl UplinkQueue {
    /// For a report's heading: `FIFO uplinks`, `fair-queued uplinks`.
    pub fn describe(self) -> &'static str {
        match self {
            UplinkQueue::Fifo => "FIFO uplinks",
            UplinkQueue::Fair => "fair-queued uplinks",
        }
    }
}

impl FromStr for UplinkQueue {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fifo" => Ok(UplinkQueue::Fifo),
            "fair" => Ok(UplinkQueue::Fair),
            _ => Err(format!("{s:?}: the uplink queue is fifo or fair")),
        }
    }
}

/// The address family of a lab's hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Family {
    /// `10.200.0.<n>/24`, and `127.0.0.1` on `lo`.
    #[default]
    V4,
    /// `fd00:5ea1::<n>/64`, and only `::1` on `lo`.
    V6,
}

#[derive(Debug, Default)]
struct State {
    /// Namespaces to delete, the bridge's first.
    namespaces: Vec<String>,
    cleaned: bool,
}

/// Deletes a lab's namespaces from another thread (a signal handler); see
/// [`Lab::cleaner`].
#[derive(Debug, Clone)]
pub struct Cleaner(Arc<Mutex<State>>);

impl Cleaner {
    /// Kills every process in the lab's namespaces and deletes them. Idempotent.
    pub fn cleanup(&self) {
        let mut state = match self.0.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        if state.cleaned {
            return;
        }
        // Hosts first: deleting a host namespace removes its veth pair, then the bridge.
        for ns in state.namespaces.iter().rev() {
            kill_all_in(ns);
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
        state.cleaned = true;
    }
}

/// Kills the processes in namespace `ns` (`ip netns pids`), i.e. what the lab started.
fn kill_all_in(ns: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() else {
        return;
    };
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        if pid.parse::<u32>().is_ok() {
            let _ = Command::new("kill")
                .args(["-KILL", pid])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A bridge namespace and its hosts; deleted (with every process in them) when dropped.
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    bridge_ns: String,
    rate: LinkRate,
    family: Family,
    uplink: UplinkQueue,
    mtu: Option<u32>,
    hosts: Vec<Host>,
    state: Arc<Mutex<State>>,
}

/// Runs `ip ARGS…`, failing with its stderr.
fn ip(args: &[&str]) -> anyhow::Result<()> {
    run("ip", args)
}

/// Runs `tc -n NS ARGS…`.
fn tc_in(ns: &str, args: &[&str]) -> anyhow::Result<()> {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    run("tc", &all)
}

/// Bytes the root queue of `dev` in `ns` has sent (`tc -s -j qdisc show`).
fn root_qdisc_bytes(ns: &str, dev: &str) -> anyhow::Result<u64> {
    let out = Command::new("tc")
        .args(["-n", ns, "-s", "-j", "qdisc", "show", "dev", dev, "root"])
        .output()?;
    anyhow::ensure!(out.status.success(), "tc -s qdisc show dev {dev} in {ns}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    v[0]["bytes"]
        .as_u64()
        .with_context(|| format!("no bytes in `tc -s -j qdisc show dev {dev} root` in {ns}"))
}

/// The `htb` class of `host`'s queue on a fair uplink ([`UplinkQueue::Fair`]):
/// `1:` and 0x100 + the last part of its address (`10.200.0.<n>`, `fd00:5ea1::<n>`), in
/// hex, as `tc` names it.
pub fn fair_class(host: &Host) -> String {
    let last = match host.ip {
        IpAddr::V4(a) => a.octets()[3],
        IpAddr::V6(a) => a.octets()[15],
    };
    format!("1:{:x}", 0x100 + u32::from(last))
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program} (Debian package iproute2)"))?;
    anyhow::ensure!(
        out.status.success(),
        "`{program} {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

impl Lab {
    /// Creates the bridge namespace `<prefix>-br` of an IPv4 lab. Fails with a clear
    /// message when network namespaces cannot be made here (not root, or no
    /// `CAP_SYS_ADMIN`).
    pub fn new(prefix: &str, rate: LinkRate) -> anyhow::Result<Self> {
        Self::with_family(prefix, rate, Family::V4)
    }

    /// As [`Lab::new`], for hosts of `family`.
    pub fn with_family(prefix: &str, rate: LinkRate, family: Family) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !prefix.is_empty()
                && prefix.len() <= 40
                && prefix
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "lab prefix {prefix:?}: use up to 40 letters, digits, - or _"
        );
        let bridge_ns = format!("{prefix}-br");
        let state = Arc::new(Mutex::new(State::default()));
        ip(&["netns", "add", &bridge_ns]).map_err(|e| {
            anyhow::anyhow!(
                "cannot create network namespaces here ({e}); the swarm benchmark needs \
                 root with CAP_SYS_ADMIN and CAP_NET_ADMIN (a privileged container at least)"
            )
        })?;
        state
            .lock()
            .expect("fresh lock")
            .namespaces
            .push(bridge_ns.clone());
        let lab = Lab {
            prefix: prefix.to_string(),
            bridge_ns,
            rate,
            family,
            uplink: UplinkQueue::Fifo,
            mtu: None,
            hosts: Vec::new(),
            state,
        };
        let br = lab.bridge_ns.as_str();
        ip(&["-n", br, "link", "add", "br0", "type", "bridge"])
            .context("creating a bridge (kernel module `bridge`)")?;
        ip(&["-n", br, "link", "set", "br0", "up"])?;
        ip(&["-n", br, "link", "set", "lo", "up"])?;
        Ok(lab)
    }

    /// Sets how the hosts' uplinks queue (see [`UplinkQueue`]), before the first host.
    ///
    /// # Panics
    /// When a host was added already (its uplink would not match the others').
    pub fn with_uplink_queue(mut self, uplink: UplinkQueue) -> Self {
        assert!(
            self.hosts.is_empty(),
            "set the uplink queue before adding hosts"
        );
        self.uplink = uplink;
        self
    }

    /// Sets every link's MTU (the kernel's default for a veth is 1500), before the
    /// first host: jumbo frames (9000) as many clusters' node networks have.
    ///
    /// # Panics
    /// When a host was added already.
    pub fn with_mtu(mut self, mtu: Option<u32>) -> Self {
        assert!(self.hosts.is_empty(), "set the MTU before adding hosts");
        self.mtu = mtu;
        self
    }

    /// A handle that can clean the lab up from another thread.
    pub fn cleaner(&self) -> Cleaner {
        Cleaner(self.state.clone())
    }

    /// The namespace-name prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The link rate of every host.
    pub fn rate(&self) -> &LinkRate {
        &self.rate
    }

    /// The address family of its hosts.
    pub fn family(&self) -> Family {
        self.family
    }

    /// The hosts added so far.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Adds a host `<prefix>-<role>` with the next address (10.200.0.2, .3, …, or
    /// fd00:5ea1::2, ::3, …) and a link to the bridge shaped in both directions.
    pub fn add_host(&mut self, role: &str) -> anyhow::Result<Host> {
        anyhow::ensure!(self.hosts.len() < 250, "at most 250 hosts per lab");
        // Every fair uplink has a queue per other host: the set-up grows with the square.
        anyhow::ensure!(
            self.uplink == UplinkQueue::Fifo || self.hosts.len() < 64,
            "at most 64 hosts per lab with fair uplinks (use FIFO uplinks for more)"
        );
        anyhow::ensure!(
            role.len() <= 12 && role.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
            "host role {role:?}: up to 12 letters, digits or -"
        );
        let ns = format!("{}-{role}", self.prefix);
        let n = 2 + self.hosts.len() as u8;
        let (ip_addr, prefix_len): (IpAddr, u8) = match self.family {
            Family::V4 => (Ipv4Addr::new(10, 200, 0, n).into(), 24),
            Family::V6 => (
                Ipv6Addr::new(0xfd00, 0x5ea1, 0, 0, 0, 0, 0, n.into()).into(),
                64,
            ),
        };
        ip(&["netns", "add", &ns])?;
        self.state
            .lock()
            .expect("lab lock")
            .namespaces
            .push(ns.clone());
        let br = self.bridge_ns.clone();
        let port = format!("v-{role}");
        // Both ends are created where they live: nothing touches the caller's namespace.
        ip(&[
            "-n", &br, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ])
        .context("creating a veth pair (kernel module `veth`)")?;
        if let Some(mtu) = self.mtu {
            let mtu = mtu.to_string();
            ip(&["-n", &br, "link", "set", &port, "mtu", &mtu])?;
            ip(&["-n", &ns, "link", "set", "eth0", "mtu", &mtu])?;
        }
        ip(&["-n", &br, "link", "set", &port, "master", "br0", "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        let cidr = format!("{ip_addr}/{prefix_len}");
        match self.family {
            Family::V4 => ip(&["-n", &ns, "addr", "add", &cidr, "dev", "eth0"])?,
            Family::V6 => {
                ip(&["-n", &ns, "addr", "add", &cidr, "dev", "eth0", "nodad"])?;
                ip(&["-n", &ns, "addr", "del", "127.0.0.1/8", "dev", "lo"])?;
            }
        }
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        let host = Host {
            role: role.to_string(),
            ns,
            ip: ip_addr,
        };
        match self.uplink {
            UplinkQueue::Fifo => self.shape(&host.ns, "eth0")?,
            UplinkQueue::Fair => {
                self.shape_fair_root(&host.ns)?;
                // A queue on the new host for every host already here, and one for the
                // new host on every host already here.
                for other in &self.hosts {
                    self.add_fair_queue(&host, other)?;
                    self.add_fair_queue(other, &host)?;
                }
            }
        }
        self.shape(&br, &port)?;
        self.hosts.push(host.clone());
        Ok(host)
    }

    /// `tc qdisc replace dev DEV root tbf …` in namespace `ns`.
    fn shape(&self, ns: &str, dev: &str) -> anyhow::Result<()> {
        let burst = self.rate.burst_bytes().to_string();
        tc_in(
            ns,
            &[
                "qdisc",
                "replace",
                "dev",
                dev,
                "root",
                "tbf",
                "rate",
                &self.rate.tc,
                "burst",
                &burst,
                "latency",
                "50ms",
            ],
        )
        .context("shaping a link with tc tbf (kernel module `sch_tbf`)")
    }

    /// The root of a fair uplink on `ns`'s `eth0`: an `htb` of the link's rate whose
    /// default class takes what goes to no known host (ARP, neighbour discovery).
    fn shape_fair_root(&self, ns: &str) -> anyhow::Result<()> {
        let rate = &self.rate.tc;
        let burst = self.rate.burst_bytes().to_string();
        tc_in(
            ns,
            &[
                "qdisc", "replace", "dev", "eth0", "root", "handle", "1:", "htb", "default", "2",
            ],
        )
        .context("shaping a link with tc htb (kernel module `sch_htb`)")?;
        tc_in(
            ns,
            &[
                "class", "add", "dev", "eth0", "parent", "1:", "classid", "1:1", "htb", "rate",
                rate, "ceil", rate, "burst", &burst, "cburst", &burst,
            ],
        )?;
        self.add_fair_class(ns, "1:2")
    }

    /// On `from`'s uplink, a queue of its own for what goes to `to`.
    fn add_fair_queue(&self, from: &Host, to: &Host) -> anyhow::Result<()> {
        let flow = fair_class(to);
        self.add_fair_class(&from.ns, &flow)?;
        let (proto, matcher, dst) = match to.ip {
            IpAddr::V4(a) => ("ip", "ip", format!("{a}/32")),
            IpAddr::V6(a) => ("ipv6", "ip6", format!("{a}/128")),
        };
        tc_in(
            &from.ns,
            &[
                "filter", "add", "dev", "eth0", "parent", "1:", "protocol", proto, "prio", "1",
                "u32", "match", matcher, "dst", &dst, "flowid", &flow,
            ],
        )
        .context("classifying by destination with tc u32 (kernel module `cls_u32`)")
    }

    /// One class of a fair uplink: an equal share, borrowing up to the whole link, a
    /// one-packet quantum (as `fq_codel`'s), and its own FIFO of 50 ms at line rate.
    fn add_fair_class(&self, ns: &str, class: &str) -> anyhow::Result<()> {
        let rate = &self.rate.tc;
        let share = format!("{}bit", (self.rate.bits_per_sec / 64).max(8_000));
        let burst = self.rate.burst_bytes().to_string();
        // As deep as the FIFO uplink's (a GSO packet on a veth can be 64 KiB: a shallower
        // queue drops whole bursts and the class never reaches its share).
        let limit = (self.rate.bits_per_sec / 8 / 20 + self.rate.burst_bytes()).to_string();
        tc_in(
            ns,
            &[
                "class", "add", "dev", "eth0", "parent", "1:1", "classid", class, "htb", "rate",
                &share, "ceil", rate, "burst", &burst, "cburst", &burst, "quantum", "1514",
            ],
        )?;
        tc_in(
            ns,
            &[
                "qdisc", "add", "dev", "eth0", "parent", class, "bfifo", "limit", &limit,
            ],
        )
    }

    /// `ip netns exec <host ns> program`, with the proxy variables removed (traffic must
    /// stay inside the lab).
    pub fn command(&self, host: &Host, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &host.ns]).arg(program);
        for v in [
            "http_proxy",
            "https_proxy",
            "all_proxy",
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
        ] {
            c.env_remove(v);
        }
        c.stdin(Stdio::null());
        c
    }

    /// Starts `program args…` on `host` with stdout and stderr in `log`; killed when the
    /// returned handle is dropped.
    pub fn spawn(
        &self,
        host: &Host,
        program: &Path,
        args: &[String],
        log: &Path,
    ) -> anyhow::Result<NsProcess> {
        let out =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = self
            .command(host, program)
            .args(args)
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {} on {}", program.display(), host.role))?;
        Ok(NsProcess {
            child: Some(child),
            log: log.to_path_buf(),
        })
    }

    /// Bytes `host`'s link has carried so far, as its shaping counted them: what the
    /// root queue of the bridge's port sent to the host (its downlink) and what the root
    /// queue of its `eth0` sent (its uplink). Link-layer frames, payload plus Ethernet,
    /// IP and TCP/UDP headers per segment, as the rate is charged (the devices' own
    /// counters see a GSO batch's headers once).
    pub fn link_bytes(&self, host: &Host) -> anyhow::Result<LinkBytes> {
        Ok(LinkBytes {
            rx: root_qdisc_bytes(&self.bridge_ns, &format!("v-{}", host.role))?,
            tx: root_qdisc_bytes(&host.ns, "eth0")?,
        })
    }

    /// The TCP congestion control `host`'s connections use (a namespace starts with
    /// the machine's default: `bbr`, `cubic`, …).
    pub fn tcp_congestion_control(&self, host: &Host) -> anyhow::Result<String> {
        let out = self
            .command(host, Path::new("cat"))
            .arg("/proc/sys/net/ipv4/tcp_congestion_control")
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "reading the TCP congestion control in {}",
            host.ns
        );
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// What every host's downlink has carried so far, by role: the same counter as
    /// [`Lab::link_bytes`]'s `rx`, for all hosts from one `tc` call (cheap enough to
    /// sample every few tens of milliseconds during a pull).
    pub fn downlink_counters(&self) -> anyhow::Result<BTreeMap<String, u64>> {
        let out = Command::new("tc")
            .args(["-n", &self.bridge_ns, "-s", "-j", "qdisc", "show"])
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "tc -s qdisc show in {}",
            self.bridge_ns
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let mut counters = BTreeMap::new();
        for q in v.as_array().into_iter().flatten() {
            let root = q["root"].as_bool() == Some(true);
            if let (true, Some(role), Some(bytes)) = (
                root,
                q["dev"].as_str().and_then(|d| d.strip_prefix("v-")),
                q["bytes"].as_u64(),
            ) {
                counters.insert(role.to_string(), bytes);
            }
        }
        Ok(counters)
    }

    /// Takes `host`'s link down (`up` false) or brings it up again, at the bridge's end
    /// (`ip link set v-<role> down|up` in the bridge namespace), as a switch port or a
    /// pulled cable would: the host's own `eth0` keeps its address and routes and loses
    /// its carrier, so what it sends is dropped silently, and its own `127.0.0.1` (a
    /// peer's mirror) still answers. The port stays on the bridge and keeps its shaping.
    pub fn set_link(&self, host: &Host, up: bool) -> anyhow::Result<()> {
        let port = format!("v-{}", host.role);
        ip(&[
            "-n",
            &self.bridge_ns,
            "link",
            "set",
            &port,
            if up { "up" } else { "down" },
        ])
    }

    /// Kills every process in the lab's namespaces and deletes them. Idempotent.
    pub fn cleanup(&self) {
        self.cleaner().cleanup();
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// A process started in a host's namespace; SIGKILLed and reaped when dropped.
#[derive(Debug)]
pub struct NsProcess {
    child: Option<Child>,
    log: PathBuf,
}

impl NsProcess {
    /// Its log so far.
    pub fn log(&self) -> String {
        crate::read_log(&self.log)
    }

    /// Where its log is.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Whether it has exited (and how).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Kills it now.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for NsProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uplink_queues_parse() {
        assert_eq!("fair".parse(), Ok(UplinkQueue::Fair));
        assert_eq!("fifo".parse(), Ok(UplinkQueue::Fifo));
        assert!("fq_codel".parse::<UplinkQueue>().is_err());
        assert_eq!(UplinkQueue::default(), UplinkQueue::Fifo);
    }

    #[test]
    fn rates_parse_like_tc() {
        let r: LinkRate = "100mbit".parse().unwrap();
        assert_eq!(r.bits_per_sec, 100_000_000);
        assert_eq!(r.tc, "100mbit");
        assert_eq!(r.burst_bytes(), 125_000);
        assert_eq!(
            "1Gbit".parse::<LinkRate>().unwrap().bits_per_sec,
            1_000_000_000
        );
        assert_eq!(
            "64kbit".parse::<LinkRate>().unwrap().burst_bytes(),
            32 << 10
        );
        assert!("100".parse::<LinkRate>().is_err());
        assert!("100mb".parse::<LinkRate>().is_err());
        assert!("mbit".parse::<LinkRate>().is_err());
    }
}

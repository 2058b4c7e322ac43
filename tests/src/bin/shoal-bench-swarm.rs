//! `shoal-bench-swarm`: the swarm benchmark (see `shoal_tests::bench`). Run it with
//! `scripts/bench-swarm`, which builds the release binaries first.
//!
//! ```text
//! shoal-bench-swarm [--nodes 8] [--size 256MiB] [--rate 100mbit] [--modes [alone,]direct,cache,shoal]
//!                   [--out DIR] [--font TTF] [--keep] [--ipv6] [--uplink fair|fifo]
//!                   [--mtu BYTES] [--timeline] [--peer-flag ARG]... [--scheduler-flag ARG]...
//! ```
//!
//! `--uplink fifo|fair` sets how every host's uplink queues (default `fair`: one queue
//! per destination host, as a Linux host's `fq_codel` does; `fifo`: one FIFO, where a
//! download's acknowledgements wait behind the host's uploads). See
//! `shoal_tests::netns::UplinkQueue`.
//!
//! `--mtu 9000` gives every link jumbo frames (default: the kernel's 1500), to see what
//! framing costs: each TCP or QUIC packet carries its headers, and a larger packet
//! fewer of them per byte.
//!
//! `--timeline` samples every node's downlink every 50 ms during the pulls and prints,
//! per node, how long it idled and when: before its first bytes, in the second after
//! them, or later (`shoal_tests::bench::timeline`); the samples go to `timeline.csv` in
//! the mode's work directory (kept with `--keep`). Opt-in: sampling costs some CPU.
//!
//! `--ipv6` runs it on a lab whose hosts have IPv6 addresses only (see
//! `shoal_tests::netns`): every listener, URL and `ns` is an IPv6 literal.
//!
//! `--modes alone,…` first times one node pulling from the registry by itself (the
//! time one node needs alone, measured), and divides every mode's p50 by it too
//! (`p50 ÷ alone`, `p50_alone_ratio=`), beside the ratio to the raw link's limit.
//!
//! `--peer-flag` / `--scheduler-flag` pass one more argument to every `shoal-peer run`
//! / to `shoal-scheduler` (repeat it for a flag and its value), to measure a tunable.
//!
//! Prints the markdown table, writes it and the PNG chart to `--out` (default
//! `target/bench-swarm`), and ends with one `mode=… nodes=… size=… p50_ratio=…
//! max_ratio=… egress_ratio=… cpu_busy=…` line per mode (shoal's also has
//! `peer_cpu_s_per_gib=…`: the CPU the pulls cost, see `bench::report::CpuUse`). Exits 1 when any node's bytes do not
//! match the blob's digest. Needs root (network namespaces).
//!
//! `shoal-bench-swarm fetch URL START_MS LIMIT_S` is the per-node pull it runs inside
//! each node's namespace.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use shoal_tests::bench::report::{self, Mode};
use shoal_tests::bench::{self, Options, chart, fetch};
use shoal_tests::netns::{Family, LinkRate, UplinkQueue};

const USAGE: &str = "usage: shoal-bench-swarm [--nodes N] [--size SIZE] [--rate RATE] \
[--modes [alone,]direct,cache,shoal] [--out DIR] [--font TTF] [--keep] [--ipv6] [--uplink fair|fifo] \
[--mtu BYTES] [--timeline] [--peer-flag ARG]... [--scheduler-flag ARG]...";

struct Args {
    opts: Options,
    out: PathBuf,
    font: PathBuf,
}

fn parse_size(s: &str) -> anyhow::Result<u64> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n
        .parse()
        .with_context(|| format!("{s:?} is not a size like 256MiB"))?;
    let mult: u64 = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => bail!("{s:?}: the unit must be B, KiB, MiB or GiB"),
    };
    n.checked_mul(mult)
        .filter(|b| *b > 0)
        .with_context(|| format!("{s:?} is out of range"))
}

fn parse_args() -> anyhow::Result<Args> {
    let mut nodes = 8;
    let mut size = 256 << 20;
    let mut rate: LinkRate = "100mbit".parse().map_err(anyhow::Error::msg)?;
    let mut modes = Mode::DEFAULT.to_vec();
    let mut out = PathBuf::from("target/bench-swarm");
    let mut font = PathBuf::from(chart::DEFAULT_FONT);
    let mut keep = false;
    let mut family = Family::V4;
    let mut uplink = UplinkQueue::Fair;
    let mut mtu = None;
    let mut timeline = false;
    let mut peer_flags = Vec::new();
    let mut scheduler_flags = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .with_context(|| format!("{flag} needs a value; {USAGE}"))
        };
        match flag.as_str() {
            "--nodes" => nodes = value()?.parse().context("--nodes takes a number")?,
            "--size" => size = parse_size(&value()?)?,
            "--rate" => rate = value()?.parse().map_err(anyhow::Error::msg)?,
            "--modes" => {
                modes = value()?
                    .split(',')
                    .map(|m| Mode::parse(m.trim()).with_context(|| format!("unknown mode {m:?}")))
                    .collect::<anyhow::Result<_>>()?
            }
            "--out" => out = value()?.into(),
            "--font" => font = value()?.into(),
            "--keep" => keep = true,
            "--ipv6" => family = Family::V6,
            "--uplink" => uplink = value()?.parse().map_err(anyhow::Error::msg)?,
            "--mtu" => {
                let v = value()?;
                let n: u32 = v
                    .parse()
                    .ok()
                    .filter(|n| (1280..=65_535).contains(n))
                    .with_context(|| format!("--mtu {v:?}: a number of bytes, 1280 to 65535"))?;
                mtu = Some(n);
            }
            "--timeline" => timeline = true,
            "--peer-flag" => peer_flags.push(value()?),
            "--scheduler-flag" => scheduler_flags.push(value()?),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}; {USAGE}"),
        }
    }
    let line_secs = size as f64 * 8.0 / rate.bits_per_sec as f64;
    let work_dir = std::env::temp_dir().join(format!("shoal-bench-{}", std::process::id()));
    Ok(Args {
        opts: Options {
            nodes,
            size,
            rate,
            modes,
            prefix: format!("sb{}", std::process::id() % 100_000),
            work_dir,
            keep,
            // Direct mode needs about nodes × the line rate; twice that, and a minute.
            pull_limit: Duration::from_secs_f64(60.0 + 2.0 * line_secs * nodes as f64),
            peer_flags,
            scheduler_flags,
            family,
            uplink,
            mtu,
            timeline,
        },
        out,
        font,
    })
}

fn main() -> anyhow::Result<()> {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("fetch") {
        return fetch_main(&argv[2..]);
    }
    let args = parse_args()?;
    bench::check_binaries()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let work_dir = args.opts.work_dir.clone();
    let keep = args.opts.keep;
    let result = bench::run(&args.opts, |cleaner| {
        // Ctrl-C or SIGTERM: remove the lab (and its processes) and the work dir.
        let dir = work_dir.clone();
        rt.spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            eprintln!("bench: interrupted; removing the lab");
            cleaner.cleanup();
            if !keep {
                let _ = std::fs::remove_dir_all(&dir);
            }
            std::process::exit(130);
        });
    });
    if !keep {
        let _ = std::fs::remove_dir_all(&work_dir);
    } else {
        eprintln!("bench: logs kept in {}", work_dir.display());
    }
    let (setup, runs) = result?;

    let table = report::markdown(&setup, &runs);
    println!("\n{table}");
    std::fs::create_dir_all(&args.out)?;
    let md = args.out.join("swarm.md");
    std::fs::write(&md, &table)?;
    let png = args.out.join("swarm.png");
    chart::draw(&png, &args.font, &setup, &runs)?;
    eprintln!("bench: wrote {} and {}", md.display(), png.display());
    for r in &runs {
        println!("{}", r.machine_line(&setup, &runs));
    }
    if let Some(bad) = runs.iter().find(|r| !r.figures(&setup).all_bytes_ok) {
        bail!(
            "{} mode: a node's bytes do not match the blob",
            bad.mode.name()
        );
    }
    Ok(())
}

/// `fetch URL START_MS LIMIT_S`: one node's pull; prints one JSON line.
fn fetch_main(args: &[String]) -> anyhow::Result<()> {
    let [url, start, limit] = args else {
        bail!("usage: shoal-bench-swarm fetch URL START_MS LIMIT_S");
    };
    let start: u64 = start.parse().context("START_MS")?;
    let limit = Duration::from_secs(limit.parse().context("LIMIT_S")?);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let fetched = rt.block_on(fetch::fetch(url, start, limit));
    println!("{}", fetched.to_json());
    Ok(())
}

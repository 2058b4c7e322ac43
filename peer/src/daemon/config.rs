//! `shoal-peer run`'s configuration: flags with `SHOAL_*` environment
//! variables, validated all at once (every problem is reported, then the
//! process exits with status 2).

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU64;
use std::path::PathBuf;

use clap::Args;

use crate::store::StoreConfig;

/// Flags of `shoal-peer run`. Values are taken as text and checked in
/// [`Settings::resolve`].
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Scheduler gRPC URL, e.g. http://shoal-scheduler:7600 (repeatable; comma-separated in the env var).
    #[arg(long = "scheduler", env = "SHOAL_SCHEDULER", value_delimiter = ',')]
    pub schedulers: Vec<String>,
    /// QUIC piece server address (UDP).
    #[arg(long, env = "SHOAL_QUIC_LISTEN", default_value = "0.0.0.0:7651")]
    pub quic_listen: String,
    /// IP other peers use to reach this one [default: the listen IP when it is not unspecified, else the node's first non-loopback address].
    #[arg(long, env = "SHOAL_ADVERTISE_ADDR")]
    pub advertise_addr: Option<String>,
    /// Where blobs, metadata and the peer id live.
    #[arg(long, env = "SHOAL_DATA_DIR", default_value = "/var/lib/shoal")]
    pub data_dir: PathBuf,
    /// Disk quota for cached blobs, e.g. 20GiB, 500MiB.
    #[arg(long, env = "SHOAL_CACHE_SIZE", default_value = "10GiB")]
    pub cache_size: String,
    /// Metrics and health address (HTTP).
    #[arg(long, env = "SHOAL_HTTP_LISTEN", default_value = "0.0.0.0:7652")]
    pub http_listen: String,
    /// Directory with ca.crt, tls.crt, tls.key (from `shoal-peer tls init` or the chart's Secret).
    #[arg(long, env = "SHOAL_PEER_TLS_DIR")]
    pub peer_tls_dir: Option<PathBuf>,
    /// Development only: make up a throw-away CA instead of --peer-tls-dir (peers started this way cannot talk to each other).
    #[arg(long, env = "SHOAL_DEV_EPHEMERAL_TLS")]
    pub dev_ephemeral_tls: bool,
    /// Pieces uploaded at once.
    #[arg(long, env = "SHOAL_UPLOAD_SLOTS", default_value = "8")]
    pub upload_slots: String,
    /// Upload rate limit, e.g. 500MiB (per second); unlimited when unset.
    #[arg(long, env = "SHOAL_UPLOAD_RATE_LIMIT")]
    pub upload_rate_limit: Option<String>,
    /// Topology zone of this node (from its topology.kubernetes.io/zone label).
    #[arg(long, env = "SHOAL_ZONE", default_value = "")]
    pub zone: String,
    /// Log format: text or json.
    #[arg(long, env = "SHOAL_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
    /// Registry mirror address containerd pulls through (HTTP). Keep it on loopback:
    /// the mirror trusts its callers.
    #[arg(long, env = "SHOAL_MIRROR_LISTEN", default_value = "127.0.0.1:7650")]
    pub mirror_listen: String,
    /// containerd's hosts dir: upstream TLS (ca, client certs), headers and servers per registry.
    #[arg(
        long,
        env = "SHOAL_CONTAINERD_HOSTS_DIR",
        default_value = "/etc/containerd/certs.d"
    )]
    pub containerd_hosts_dir: PathBuf,
    /// Upstream registry for requests without containerd's ns parameter, e.g. ghcr.io or http://10.0.0.9:5000.
    #[arg(long, env = "SHOAL_DEFAULT_UPSTREAM")]
    pub default_upstream: Option<String>,
    /// Garbage collection starts when the cache is above this fraction of --cache-size.
    #[arg(long, env = "SHOAL_CACHE_HIGH_WATERMARK", default_value = "0.9")]
    pub cache_high_watermark: String,
    /// Garbage collection evicts least recently used blobs down to this fraction of --cache-size.
    #[arg(long, env = "SHOAL_CACHE_LOW_WATERMARK", default_value = "0.75")]
    pub cache_low_watermark: String,
}

/// How `tls` is obtained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSource {
    /// Load ca.crt, tls.crt, tls.key from this directory.
    Dir(PathBuf),
    /// A throw-away CA (development only).
    Ephemeral,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Scheduler URLs (may be empty: then every download goes upstream).
    pub schedulers: Vec<String>,
    /// QUIC listen address.
    pub quic_listen: SocketAddr,
    /// The QUIC address other peers dial.
    pub advertise: SocketAddr,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Cache quota and watermarks.
    pub cache: StoreConfig,
    /// Metrics/health listen address.
    pub http_listen: SocketAddr,
    /// Where the peer certificate comes from.
    pub tls: TlsSource,
    /// Upload slots.
    pub upload_slots: usize,
    /// Upload rate limit in bytes per second.
    pub upload_rate_limit: Option<NonZeroU64>,
    /// Zone label.
    pub zone: String,
    /// JSON logs.
    pub json_logs: bool,
    /// Registry mirror listen address.
    pub mirror_listen: SocketAddr,
    /// containerd's hosts dir.
    pub containerd_hosts_dir: PathBuf,
    /// Upstream for requests without `ns`.
    pub default_upstream: Option<String>,
}

/// Parses `10GiB`, `500MiB`, `64KiB`, `1024` (bytes).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 10GiB or 500MiB"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        _ => return Err(format!("{s:?}: unknown unit (use B, KiB, MiB, GiB or TiB)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// The node's first non-loopback IPv4 address (else IPv6), if any.
fn node_ip() -> Option<IpAddr> {
    let addrs = if_addrs::get_if_addrs().ok()?;
    let mut ips: Vec<IpAddr> = addrs
        .into_iter()
        .filter(|a| !a.is_loopback())
        .map(|a| a.ip())
        .collect();
    ips.sort_by_key(|ip| ip.is_ipv6());
    ips.into_iter().next()
}

impl Settings {
    /// Validates every flag, returning all problems at once.
    pub fn resolve(a: RunArgs) -> Result<Settings, Vec<String>> {
        let mut errors = Vec::new();
        for s in &a.schedulers {
            if !(s.starts_with("http://") || s.starts_with("https://")) {
                errors.push(format!(
                    "--scheduler: {s:?} must be an http:// or https:// URL"
                ));
            }
        }
        let mut addr = |name: &str, v: &str| {
            v.parse::<SocketAddr>()
                .map_err(|_| errors.push(format!("--{name}: {v:?} is not an ip:port address")))
                .ok()
        };
        let quic_listen = addr("quic-listen", &a.quic_listen);
        let http_listen = addr("http-listen", &a.http_listen);
        let mirror_listen = addr("mirror-listen", &a.mirror_listen);
        let mut fraction = |name: &str, v: &str| match v.parse::<f64>() {
            Ok(f) if f > 0.0 && f <= 1.0 => Some(f),
            _ => {
                errors.push(format!(
                    "--{name}: {v:?} must be a fraction above 0 and at most 1"
                ));
                None
            }
        };
        let high = fraction("cache-high-watermark", &a.cache_high_watermark);
        let low = fraction("cache-low-watermark", &a.cache_low_watermark);
        let cache_size = parse_size(&a.cache_size)
            .map_err(|e| errors.push(format!("--cache-size: {e}")))
            .ok();
        if let (Some(cache_size), Some(high), Some(low)) = (cache_size, high, low) {
            let c = StoreConfig {
                cache_size,
                high_watermark: high,
                low_watermark: low,
            };
            if let Err(e) = c.validate() {
                errors.push(format!("--cache-low-watermark/--cache-high-watermark: {e}"));
            }
        }
        if let Some(d) = &a.default_upstream
            && (d.is_empty() || d.contains(char::is_whitespace))
        {
            errors.push(format!(
                "--default-upstream: {d:?} is not a registry host or URL"
            ));
        }
        let upload_slots = match a.upload_slots.parse::<usize>() {
            Ok(n) if (1..=1024).contains(&n) => Some(n),
            _ => {
                errors.push(format!(
                    "--upload-slots: {:?} must be a whole number from 1 to 1024",
                    a.upload_slots
                ));
                None
            }
        };
        let upload_rate_limit = match &a.upload_rate_limit {
            None => None,
            Some(v) => match parse_size(v).map(NonZeroU64::new) {
                Ok(Some(n)) => Some(n),
                Ok(None) => {
                    errors.push(
                        "--upload-rate-limit: must be above 0 (leave it unset for no limit)".into(),
                    );
                    None
                }
                Err(e) => {
                    errors.push(format!("--upload-rate-limit: {e}"));
                    None
                }
            },
        };
        let tls = match (&a.peer_tls_dir, a.dev_ephemeral_tls) {
            (Some(_), true) => {
                errors.push("--peer-tls-dir and --dev-ephemeral-tls exclude each other".into());
                None
            }
            (Some(d), false) => Some(TlsSource::Dir(d.clone())),
            (None, true) => Some(TlsSource::Ephemeral),
            (None, false) => {
                errors.push(
                    "--peer-tls-dir is required: peer traffic is mutually authenticated (create one with `shoal-peer tls init DIR`)"
                        .into(),
                );
                None
            }
        };
        let json_logs = match a.log_format.as_str() {
            "text" => false,
            "json" => true,
            other => {
                errors.push(format!("--log-format: {other:?} must be text or json"));
                false
            }
        };
        let advertise_ip = match (&a.advertise_addr, quic_listen) {
            (Some(ip), _) => ip
                .parse::<IpAddr>()
                .map_err(|_| errors.push(format!("--advertise-addr: {ip:?} is not an IP address")))
                .ok(),
            (None, Some(l)) if !l.ip().is_unspecified() => Some(l.ip()),
            (None, Some(_)) => node_ip().or_else(|| {
                errors.push(
                    "--advertise-addr: no non-loopback address found on this node; set it".into(),
                );
                None
            }),
            (None, None) => None,
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        let quic_listen = quic_listen.expect("checked");
        Ok(Settings {
            schedulers: a.schedulers,
            quic_listen,
            advertise: SocketAddr::new(advertise_ip.expect("checked"), quic_listen.port()),
            data_dir: a.data_dir,
            cache: StoreConfig {
                cache_size: cache_size.expect("checked"),
                high_watermark: high.expect("checked"),
                low_watermark: low.expect("checked"),
            },
            http_listen: http_listen.expect("checked"),
            tls: tls.expect("checked"),
            upload_slots: upload_slots.expect("checked"),
            upload_rate_limit,
            zone: a.zone,
            json_logs,
            mirror_listen: mirror_listen.expect("checked"),
            containerd_hosts_dir: a.containerd_hosts_dir,
            default_upstream: a.default_upstream,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        run: RunArgs,
    }

    fn resolve(args: &[&str]) -> Result<Settings, Vec<String>> {
        let mut v = vec!["shoal-peer"];
        v.extend_from_slice(args);
        Settings::resolve(T::parse_from(v).run)
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("10GiB").unwrap(), 10 << 30);
        assert_eq!(parse_size("512").unwrap(), 512);
        assert!(parse_size("10 GB").is_err());
        assert!(parse_size("99999999999TiB").is_err());
    }

    #[test]
    fn listen_ip_is_advertised_and_tls_is_required() {
        let s = resolve(&["--quic-listen", "127.0.0.2:9000", "--dev-ephemeral-tls"]).unwrap();
        assert_eq!(s.advertise, "127.0.0.2:9000".parse().unwrap());
        let errs = resolve(&["--quic-listen", "127.0.0.2:9000"]).unwrap_err();
        assert!(errs[0].contains("--peer-tls-dir is required"), "{errs:?}");
    }

    #[test]
    fn every_error_at_once() {
        let errs = resolve(&[
            "--scheduler",
            "sched:7600",
            "--quic-listen",
            "x",
            "--cache-size",
            "lots",
            "--upload-slots",
            "0",
            "--log-format",
            "xml",
        ])
        .unwrap_err();
        assert_eq!(errs.len(), 6, "{errs:?}");
        let errs = resolve(&[
            "--dev-ephemeral-tls",
            "--quic-listen",
            "127.0.0.1:1",
            "--mirror-listen",
            "localhost",
            "--cache-high-watermark",
            "0.5",
            "--cache-low-watermark",
            "0.8",
        ])
        .unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs[0].contains("--mirror-listen"), "{errs:?}");
        assert!(errs[1].contains("watermark"), "{errs:?}");
    }
}

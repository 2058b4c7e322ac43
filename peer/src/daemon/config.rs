//! `shoal-peer run`'s configuration: flags, their `SHOAL_*` environment variables, and
//! an optional TOML file (`--config`), in that order of precedence. Load → normalise →
//! validate: every problem is reported at once (then the process exits with status 2),
//! and unknown keys in the file are rejected.
//!
//! Layout: this file (flags, [`Settings`], validation), `config/file.rs` (the file's
//! shape and loading), `config/values.rs` (sizes, durations, directory lists, the
//! node's address), `config/tests.rs`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU64;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::link_rate::LinkRate;
use crate::mirror::AccessConfig;
use crate::registry::UpstreamPolicy;
use crate::store::StoreConfig;
use file::{File, Text};
use values::{node_ip, parse_rate_limit};
pub use values::{parse_duration, parse_size, split_hosts_dirs};

mod file;
mod values;

/// Flags of `shoal-peer run`. Values are taken as text and checked in
/// [`Settings::resolve`], so that all errors are reported together. A flag (or its
/// environment variable) wins over the same key in `--config`, which wins over the
/// default.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Optional TOML file with the same keys as the flags (snake_case), plus per-registry
    /// upstream settings under `[registries."HOST"]` and `[registries._default]`.
    #[arg(long, env = "SHOAL_CONFIG")]
    pub config: Option<PathBuf>,
    /// Scheduler gRPC URL, e.g. https://shoal-scheduler:7600, one per replica (repeatable; comma-separated in the env var), or dns+https://NAME:PORT for every address of a headless Service, resolved again every 5 s [default: none: every download goes upstream].
    #[arg(long = "scheduler", env = "SHOAL_SCHEDULER", value_delimiter = ',')]
    pub schedulers: Vec<String>,
    /// Test and development only: resolve dns+ scheduler names from this /etc/hosts-style file (re-read at every resolution) instead of DNS.
    #[arg(long, env = "SHOAL_DEV_SCHEDULER_HOSTS_FILE", hide = true)]
    pub dev_scheduler_hosts_file: Option<PathBuf>,
    /// QUIC piece server address (UDP); `[::]` is dual-stack where the OS allows, and falls back to 0.0.0.0 where IPv6 is unavailable [default: `[::]:7651`].
    #[arg(long, env = "SHOAL_QUIC_LISTEN")]
    pub quic_listen: Option<String>,
    /// IP other peers use to reach this one, IPv4 or IPv6 (`fd00::1`, no brackets) [default: the listen IP when it is not unspecified, else the node's first non-loopback IPv4 address, else its first global IPv6 one].
    #[arg(long, env = "SHOAL_ADVERTISE_ADDR")]
    pub advertise_addr: Option<String>,
    /// Where blobs, metadata and the peer id live [default: /var/lib/shoal].
    #[arg(long, env = "SHOAL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Disk quota for cached blobs, e.g. 20GiB, 500MiB [default: 10GiB].
    #[arg(long, env = "SHOAL_CACHE_SIZE")]
    pub cache_size: Option<String>,
    /// Metrics and health address (HTTP), bound as --quic-listen is [default: `[::]:7652`].
    #[arg(long, env = "SHOAL_HTTP_LISTEN")]
    pub http_listen: Option<String>,
    /// Directory with ca.crt, tls.crt, tls.key (from `shoal-peer tls init` or the chart's Secret).
    #[arg(long, env = "SHOAL_PEER_TLS_DIR")]
    pub peer_tls_dir: Option<PathBuf>,
    /// Development only: make up a throw-away CA instead of --peer-tls-dir (peers started this way cannot talk to each other).
    #[arg(long, env = "SHOAL_DEV_EPHEMERAL_TLS")]
    pub dev_ephemeral_tls: bool,
    /// Pieces uploaded at once [default: 8].
    #[arg(long, env = "SHOAL_UPLOAD_SLOTS")]
    pub upload_slots: Option<String>,
    /// This node's link rate, declared to the scheduler (it prefers the fastest
    /// downloader as a task's back-to-source peer): auto (the advertised
    /// interface's speed), unknown, or e.g. 25gbit, 1000mbit [default: auto].
    #[arg(long, env = "SHOAL_LINK_RATE")]
    pub link_rate: Option<String>,
    /// Upload rate limit, e.g. 500MiB (per second) [default: unlimited].
    #[arg(long, env = "SHOAL_UPLOAD_RATE_LIMIT")]
    pub upload_rate_limit: Option<String>,
    /// Topology zone of this node (from its topology.kubernetes.io/zone label) [default: empty].
    #[arg(long, env = "SHOAL_ZONE")]
    pub zone: Option<String>,
    /// Log format: text or json [default: text].
    #[arg(long, env = "SHOAL_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Registry mirror address containerd pulls through (HTTP). Loopback only (the
    /// mirror trusts its callers) unless --mirror-allow-remote [default: 127.0.0.1:7650].
    #[arg(long, env = "SHOAL_MIRROR_LISTEN")]
    pub mirror_listen: Option<String>,
    /// Accept a --mirror-listen beyond loopback: anyone who reaches it can pull through
    /// this node's upstream credentials and cache (logged as a warning at start).
    #[arg(long, env = "SHOAL_MIRROR_ALLOW_REMOTE")]
    pub mirror_allow_remote: bool,
    /// containerd's hosts dirs (its `config_path`): upstream TLS (ca, client certs), headers and servers per registry; several dirs are `:`-separated and searched in order, the first with a directory for a registry wins, as containerd does (EKS: /etc/containerd/certs.d:/etc/docker/certs.d) [default: /etc/containerd/certs.d].
    #[arg(long, env = "SHOAL_CONTAINERD_HOSTS_DIR")]
    pub containerd_hosts_dir: Option<PathBuf>,
    /// containerd's content store, read-only (e.g. /var/lib/containerd/io.containerd.content.v1.content): blobs containerd committed are verified, served to peers and the mirror from there, and not kept twice [default: none, off].
    #[arg(long, env = "SHOAL_CONTAINERD_CONTENT_DIR")]
    pub containerd_content_dir: Option<PathBuf>,
    /// CRI-O / Podman nodes: containers-registries.conf (its drop-ins are read from --containers-registries-conf-dir). Requests without ns whose first path component names a registry configured there (as `shoal-peer containers configure` writes it: mirror location `127.0.0.1:7650/<registry>`) go to that registry's location and other mirrors, with its insecure flag and the certificates of --containers-certs-dir [default: none: off].
    #[arg(long, env = "SHOAL_CONTAINERS_REGISTRIES_CONF", value_name = "FILE")]
    pub containers_registries_conf: Option<PathBuf>,
    /// The registries.conf.d drop-in directory [default: the --containers-registries-conf file's directory + /registries.conf.d].
    #[arg(long, env = "SHOAL_CONTAINERS_REGISTRIES_CONF_DIR", value_name = "DIR")]
    pub containers_registries_conf_dir: Option<PathBuf>,
    /// containers/image's per-registry certificate dirs (`<dir>/<host:port>/`: *.crt CAs, *.cert + *.key client pairs), `:`-separated, the first with a directory for a host wins [default: /etc/containers/certs.d:/etc/docker/certs.d].
    #[arg(long, env = "SHOAL_CONTAINERS_CERTS_DIR", value_name = "DIRS")]
    pub containers_certs_dir: Option<PathBuf>,
    /// Upstream registry for requests without containerd's ns parameter, e.g. ghcr.io or http://10.0.0.9:5000 [default: none].
    #[arg(long, env = "SHOAL_DEFAULT_UPSTREAM")]
    pub default_upstream: Option<String>,
    /// Garbage collection starts when the cache is above this fraction of --cache-size [default: 0.9].
    #[arg(long, env = "SHOAL_CACHE_HIGH_WATERMARK")]
    pub cache_high_watermark: Option<String>,
    /// Garbage collection evicts least recently used blobs down to this fraction of --cache-size [default: 0.75].
    #[arg(long, env = "SHOAL_CACHE_LOW_WATERMARK")]
    pub cache_low_watermark: Option<String>,
    /// An unfinished blob nobody read or wrote for this long is deleted, e.g. 30m, 2h [default: 1h].
    #[arg(long, env = "SHOAL_CACHE_INCOMPLETE_TTL")]
    pub cache_incomplete_ttl: Option<String>,
    /// Before serving a blob from this node's cache or from peers, ask upstream (a HEAD
    /// with the caller's credentials, decisions remembered briefly) whether this caller
    /// may read it; while upstream is unreachable serve only public repositories and
    /// fresh grants: on or off (off: the cache and peers serve anyone who reaches the
    /// mirror) [default: on].
    #[arg(long, env = "SHOAL_ACCESS_CHECK")]
    pub access_check: Option<String>,
    /// How long upstream's yes for a caller and repository is trusted without asking
    /// again, e.g. 60s, 5m (0s: ask for every request) [default: 60s].
    #[arg(long, env = "SHOAL_ACCESS_CACHE_TTL")]
    pub access_cache_ttl: Option<String>,
    /// While upstream is unreachable or rate-limits this node (429), answer a tag that
    /// upstream resolved within this window from its last known digest, marked with a
    /// `Shoal-Stale-Tag` header, e.g. 1h (0s: never, tags always go upstream) [default: 0s].
    #[arg(long, env = "SHOAL_STALE_TAG_WINDOW")]
    pub stale_tag_window: Option<String>,
    /// Re-verify every complete blob at start, at most this many bytes per second (e.g. 50MiB; 0 turns the scrub off) [default: 50MiB].
    #[arg(long, env = "SHOAL_SCRUB_RATE")]
    pub scrub_rate: Option<String>,
    /// Where the node certificate in --peer-tls-dir comes from: `files` (put there by
    /// hand, a Secret or cert-manager) or `token-review` (this peer makes its key and
    /// gets the certificate from the scheduler's issuer with its ServiceAccount token,
    /// then renews it at two thirds of its life) [default: files].
    #[arg(long, env = "SHOAL_IDENTITY")]
    pub identity: Option<String>,
    /// The node this peer runs on (the downward API's spec.nodeName): the name in its
    /// certificate and its peer id. Required with --identity token-review.
    #[arg(long, env = "SHOAL_NODE_NAME")]
    pub node_name: Option<String>,
    /// The pod's projected ServiceAccount token for the issuer's audience, read at every
    /// request. Required with --identity token-review.
    #[arg(long, env = "SHOAL_SA_TOKEN_FILE")]
    pub sa_token_file: Option<PathBuf>,
    /// The scheduler's certificate issuer, e.g. `https://shoal-scheduler.shoal.svc:7601`.
    /// Required with --identity token-review.
    #[arg(long, env = "SHOAL_ISSUER_URL")]
    pub issuer_url: Option<String>,
    /// The CA the issuer's serving certificate chains to. Required with --identity
    /// token-review.
    #[arg(long, env = "SHOAL_ISSUER_CA_FILE")]
    pub issuer_ca_file: Option<PathBuf>,
}

/// How a node gets its certificate from the scheduler's issuer (`--identity
/// token-review`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issuance {
    /// This node's name: the certificate's common name and the peer id.
    pub node_name: String,
    /// The projected ServiceAccount token, read at every request.
    pub token_file: PathBuf,
    /// `https://` URL of the issuer.
    pub issuer_url: String,
    /// The CA of the issuer's serving certificate.
    pub issuer_ca_file: PathBuf,
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
    /// `--dev-scheduler-hosts-file` (test and development only).
    pub scheduler_hosts_file: Option<PathBuf>,
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
    /// The link rate declared to the scheduler (`--link-rate`).
    pub link_rate: LinkRate,
    /// Upload rate limit in bytes per second.
    pub upload_rate_limit: Option<NonZeroU64>,
    /// Zone label.
    pub zone: String,
    /// JSON logs.
    pub json_logs: bool,
    /// Registry mirror listen address: loopback unless `mirror_allow_remote`.
    pub mirror_listen: SocketAddr,
    /// A mirror address beyond loopback was accepted (`--mirror-allow-remote`).
    pub mirror_allow_remote: bool,
    /// containerd's hosts dirs, in its search order (`--containerd-hosts-dir`, `:`-separated).
    pub containerd_hosts_dirs: Vec<PathBuf>,
    /// containerd's content store, served from read-only (`--containerd-content-dir`).
    pub containerd_content_dir: Option<PathBuf>,
    /// CRI-O / Podman: where containers-registries.conf is (`None`: not read).
    pub containers: Option<crate::registry::ContainersFiles>,
    /// Upstream for requests without `ns`.
    pub default_upstream: Option<String>,
    /// Bytes per second the scrub at start reads (0: no scrub).
    pub scrub_rate: u64,
    /// How hard to try a registry without its own entry (`[registries._default]`).
    pub upstream: UpstreamPolicy,
    /// Per registry (`[registries."HOST"]`, over `[registries._default]`).
    pub registry_policies: BTreeMap<String, UpstreamPolicy>,
    /// The mirror's access check (`--access-check`, `--access-cache-ttl`).
    pub access: AccessConfig,
    /// `--stale-tag-window` (zero: off).
    pub stale_tag_window: Duration,
    /// `--identity token-review`: the node certificate in the TLS directory comes from
    /// the scheduler's issuer, and is renewed.
    pub issuance: Option<Issuance>,
}

impl Settings {
    /// Parses the words of `shoal-peer run …` (the first is the program name, the
    /// subcommand is not included), then [`Settings::resolve`]s them; tests start an
    /// in-process node this way.
    pub fn from_args<I, T>(words: I) -> Result<Settings, Vec<String>>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        #[derive(clap::Parser)]
        struct Run {
            #[command(flatten)]
            run: RunArgs,
        }
        let run = <Run as clap::Parser>::try_parse_from(words).map_err(|e| vec![e.to_string()])?;
        Settings::resolve(run.run)
    }

    /// Merges flags over the config file over defaults and validates everything,
    /// returning every problem found.
    pub fn resolve(a: RunArgs) -> Result<Settings, Vec<String>> {
        let mut errors = Vec::new();
        let file = match &a.config {
            None => File::default(),
            Some(path) => File::load(path).unwrap_or_else(|e| {
                errors.push(e);
                File::default()
            }),
        };
        let (upstream, registry_policies) = file.policies(a.config.as_deref(), &mut errors);
        let get = |flag: Option<String>, file: Option<Text>, default: &str| -> String {
            flag.or(file.map(|t| t.0))
                .unwrap_or_else(|| default.to_string())
        };
        let schedulers = if a.schedulers.is_empty() {
            file.scheduler.unwrap_or_default()
        } else {
            a.schedulers
        };
        let quic_listen = get(a.quic_listen, file.quic_listen, "[::]:7651");
        let http_listen = get(a.http_listen, file.http_listen, "[::]:7652");
        let mirror_listen = get(a.mirror_listen, file.mirror_listen, "127.0.0.1:7650");
        let cache_size = get(a.cache_size, file.cache_size, "10GiB");
        let high = get(a.cache_high_watermark, file.cache_high_watermark, "0.9");
        let low = get(a.cache_low_watermark, file.cache_low_watermark, "0.75");
        let incomplete_ttl = get(a.cache_incomplete_ttl, file.cache_incomplete_ttl, "1h");
        let scrub_rate = get(a.scrub_rate, file.scrub_rate, "50MiB");
        let upload_slots = get(a.upload_slots, file.upload_slots, "8");
        let upload_rate_limit = a.upload_rate_limit.or(file.upload_rate_limit.map(|t| t.0));
        let link_rate = get(a.link_rate, file.link_rate, "auto");
        let log_format = get(a.log_format, file.log_format, "text");
        let access_check = get(a.access_check, file.access_check, "on");
        let access_cache_ttl = get(a.access_cache_ttl, file.access_cache_ttl, "60s");
        let stale_tag_window = get(a.stale_tag_window, file.stale_tag_window, "0s");
        let zone = get(a.zone, file.zone, "");
        let advertise_addr = a.advertise_addr.or(file.advertise_addr.map(|t| t.0));
        let default_upstream = a.default_upstream.or(file.default_upstream.map(|t| t.0));
        let data_dir = a
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("/var/lib/shoal"));
        let containerd_hosts_dirs = a
            .containerd_hosts_dir
            .or(file.containerd_hosts_dir)
            .unwrap_or_else(|| PathBuf::from("/etc/containerd/certs.d"));
        let containerd_hosts_dirs = split_hosts_dirs(&containerd_hosts_dirs)
            .map_err(|e| errors.push(format!("--containerd-hosts-dir: {e}")))
            .unwrap_or_default();
        let containers = a
            .containers_registries_conf
            .or(file.containers_registries_conf)
            .map(|conf| {
                let drop_in_dir = a
                    .containers_registries_conf_dir
                    .or(file.containers_registries_conf_dir)
                    .unwrap_or_else(|| conf.with_file_name("registries.conf.d"));
                let certs = a
                    .containers_certs_dir
                    .or(file.containers_certs_dir)
                    .unwrap_or_else(|| {
                        PathBuf::from("/etc/containers/certs.d:/etc/docker/certs.d")
                    });
                let certs_dirs = split_hosts_dirs(&certs)
                    .map_err(|e| errors.push(format!("--containers-certs-dir: {e}")))
                    .unwrap_or_default();
                crate::registry::ContainersFiles {
                    registries_conf: conf,
                    drop_in_dir,
                    certs_dirs,
                }
            });
        let peer_tls_dir = a.peer_tls_dir.or(file.peer_tls_dir);
        let dev_ephemeral_tls = a.dev_ephemeral_tls || file.dev_ephemeral_tls.unwrap_or(false);
        let mirror_allow_remote =
            a.mirror_allow_remote || file.mirror_allow_remote.unwrap_or(false);

        for s in &schedulers {
            if let Err(e) = crate::scheduler_link::membership::Source::parse(s) {
                errors.push(format!("--scheduler: {e}"));
            }
        }
        let mut addr = |name: &str, v: &str| {
            v.parse::<SocketAddr>()
                .map_err(|_| errors.push(format!("--{name}: {v:?} is not an ip:port address")))
                .ok()
        };
        let quic_listen = addr("quic-listen", &quic_listen);
        let http_listen = addr("http-listen", &http_listen);
        let mirror_listen = addr("mirror-listen", &mirror_listen);
        if let Some(m) = mirror_listen
            && !m.ip().is_loopback()
            && !mirror_allow_remote
        {
            errors.push(format!(
                "--mirror-listen: {m} is not a loopback address; the mirror trusts its callers \
                 (whoever reaches it pulls through this node's upstream credentials and cache), \
                 and containerd reaches it on the node itself: give 127.0.0.1:PORT or [::1]:PORT \
                 (or pass --mirror-allow-remote to accept that risk)"
            ));
        }
        let mut fraction = |name: &str, v: &str| match v.parse::<f64>() {
            Ok(f) if f > 0.0 && f <= 1.0 => Some(f),
            _ => {
                errors.push(format!(
                    "--{name}: {v:?} must be a fraction above 0 and at most 1"
                ));
                None
            }
        };
        let high = fraction("cache-high-watermark", &high);
        let low = fraction("cache-low-watermark", &low);
        let cache_size = parse_size(&cache_size)
            .map_err(|e| errors.push(format!("--cache-size: {e}")))
            .ok();
        let scrub_rate = parse_size(&scrub_rate)
            .map_err(|e| errors.push(format!("--scrub-rate: {e}")))
            .ok();
        let incomplete_ttl = parse_duration(&incomplete_ttl)
            .and_then(|d| {
                if d.is_zero() {
                    Err("must be above zero".to_string())
                } else {
                    Ok(d)
                }
            })
            .map_err(|e| errors.push(format!("--cache-incomplete-ttl: {e}")))
            .ok();
        if let (Some(cache_size), Some(high), Some(low)) = (cache_size, high, low) {
            let c = StoreConfig {
                cache_size,
                high_watermark: high,
                low_watermark: low,
                ..StoreConfig::default()
            };
            if let Err(e) = c.validate() {
                errors.push(format!("--cache-low-watermark/--cache-high-watermark: {e}"));
            }
        }
        if let Some(d) = &default_upstream
            && (d.is_empty() || d.contains(char::is_whitespace))
        {
            errors.push(format!(
                "--default-upstream: {d:?} is not a registry host or URL"
            ));
        }
        let upload_slots = match upload_slots.parse::<usize>() {
            Ok(n) if (1..=1024).contains(&n) => Some(n),
            _ => {
                errors.push(format!(
                    "--upload-slots: {upload_slots:?} must be a whole number from 1 to 1024"
                ));
                None
            }
        };
        let link_rate = LinkRate::parse(&link_rate)
            .map_err(|e| errors.push(format!("--link-rate: {e}")))
            .ok();
        let upload_rate_limit = upload_rate_limit
            .map(|v| {
                parse_rate_limit(&v).map_err(|e| errors.push(format!("--upload-rate-limit: {e}")))
            })
            .transpose()
            .ok()
            .flatten();
        let tls = match (peer_tls_dir, dev_ephemeral_tls) {
            (Some(_), true) => {
                errors.push("--peer-tls-dir and --dev-ephemeral-tls exclude each other".into());
                None
            }
            (Some(d), false) => Some(TlsSource::Dir(d)),
            (None, true) => Some(TlsSource::Ephemeral),
            (None, false) => {
                errors.push(
                    "--peer-tls-dir is required: peer traffic is mutually authenticated (create one with `shoal-peer tls init DIR`)"
                        .into(),
                );
                None
            }
        };
        let access_enabled = match access_check.as_str() {
            "on" => true,
            "off" => false,
            other => {
                errors.push(format!("--access-check: {other:?} must be on or off"));
                true
            }
        };
        let access_ttl = parse_duration(&access_cache_ttl)
            .map_err(|e| errors.push(format!("--access-cache-ttl: {e}")))
            .unwrap_or_default();
        let stale_tag_window = parse_duration(&stale_tag_window)
            .map_err(|e| errors.push(format!("--stale-tag-window: {e}")))
            .unwrap_or_default();
        let issuance = resolve_issuance(
            IssuanceArgs {
                identity: a.identity.or(file.identity.map(|t| t.0)),
                node_name: a.node_name.or(file.node_name.map(|t| t.0)),
                sa_token_file: a.sa_token_file.or(file.sa_token_file),
                issuer_url: a.issuer_url.or(file.issuer_url.map(|t| t.0)),
                issuer_ca_file: a.issuer_ca_file.or(file.issuer_ca_file),
            },
            tls.as_ref(),
            &mut errors,
        );
        let json_logs = match log_format.as_str() {
            "text" => false,
            "json" => true,
            other => {
                errors.push(format!("--log-format: {other:?} must be text or json"));
                false
            }
        };
        let advertise_ip = match (&advertise_addr, quic_listen) {
            (Some(ip), _) => ip
                .parse::<IpAddr>()
                .map_err(|_| {
                    errors.push(format!(
                        "--advertise-addr: {ip:?} is not an IP address (an IPv6 one without brackets: fd00::1)"
                    ))
                })
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
            schedulers,
            scheduler_hosts_file: a.dev_scheduler_hosts_file,
            quic_listen,
            advertise: SocketAddr::new(advertise_ip.expect("checked"), quic_listen.port()),
            data_dir,
            cache: StoreConfig {
                cache_size: cache_size.expect("checked"),
                high_watermark: high.expect("checked"),
                low_watermark: low.expect("checked"),
                incomplete_ttl: incomplete_ttl.expect("checked"),
            },
            http_listen: http_listen.expect("checked"),
            tls: tls.expect("checked"),
            upload_slots: upload_slots.expect("checked"),
            link_rate: link_rate.expect("checked"),
            upload_rate_limit,
            zone,
            json_logs,
            mirror_listen: mirror_listen.expect("checked"),
            mirror_allow_remote,
            containerd_hosts_dirs,
            containerd_content_dir: a.containerd_content_dir.or(file.containerd_content_dir),
            containers,
            scrub_rate: scrub_rate.expect("checked"),
            default_upstream,
            upstream,
            registry_policies,
            access: AccessConfig {
                enabled: access_enabled,
                ttl: access_ttl,
            },
            stale_tag_window,
            issuance,
        })
    }
}

/// The `--identity` flags, merged.
struct IssuanceArgs {
    identity: Option<String>,
    node_name: Option<String>,
    sa_token_file: Option<PathBuf>,
    issuer_url: Option<String>,
    issuer_ca_file: Option<PathBuf>,
}

/// `--identity` and its flags: `None` for `files`; problems go to `errors`.
fn resolve_issuance(
    a: IssuanceArgs,
    tls: Option<&TlsSource>,
    errors: &mut Vec<String>,
) -> Option<Issuance> {
    match a.identity.as_deref().unwrap_or("files") {
        "files" => return None,
        "token-review" => {}
        other => {
            errors.push(format!(
                "--identity: {other:?} must be files or token-review"
            ));
            return None;
        }
    }
    let before = errors.len();
    if matches!(tls, Some(TlsSource::Ephemeral)) {
        errors.push(
            "--identity token-review writes its certificate into --peer-tls-dir; it excludes --dev-ephemeral-tls"
                .into(),
        );
    }
    let mut required = |name: &str, v: bool| {
        if !v {
            errors.push(format!("--{name} is required with --identity token-review"));
        }
    };
    required("node-name", a.node_name.is_some());
    required("sa-token-file", a.sa_token_file.is_some());
    required("issuer-url", a.issuer_url.is_some());
    required("issuer-ca-file", a.issuer_ca_file.is_some());
    if let Some(n) = &a.node_name
        && !crate::store::is_valid_peer_id(n)
    {
        errors.push(format!(
            "--node-name: {n:?} cannot be a peer id (1 to 128 of A-Z a-z 0-9 . _ -)"
        ));
    }
    if let Some(u) = &a.issuer_url
        && !u.starts_with("https://")
    {
        errors.push(format!("--issuer-url: {u:?} must be an https:// URL"));
    }
    if errors.len() > before {
        return None;
    }
    Some(Issuance {
        node_name: a.node_name?,
        token_file: a.sa_token_file?,
        issuer_url: a.issuer_url?,
        issuer_ca_file: a.issuer_ca_file?,
    })
}

#[cfg(test)]
mod tests;

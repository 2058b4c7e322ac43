//! `shoal-scheduler`'s configuration: flags, their `SHOAL_*` environment
//! variables, and an optional TOML file (`--config`), in that order of
//! precedence. Load → normalise → validate: every problem is reported at
//! once, and unknown keys in the file are rejected.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

use crate::auth::OperatorToken;
use crate::core::CoreConfig;
use crate::issuer::{IssuerArgs, IssuerSettings};

/// Command-line flags. Every value is taken as text and checked in
/// [`Settings::resolve`], so that all errors are reported together.
#[derive(Debug, Parser)]
#[command(
    name = "shoal-scheduler",
    version,
    about = "Shoal's scheduler: tracks which peer holds which piece and hands out download plans."
)]
pub struct Args {
    /// Optional TOML file with the same keys as the flags (snake_case).
    #[arg(long, env = "SHOAL_CONFIG")]
    pub config: Option<PathBuf>,
    /// gRPC address for peers; `[::]` is dual-stack where the OS allows, and falls back to 0.0.0.0 where IPv6 is unavailable [default: `[::]:7600`].
    #[arg(long, env = "SHOAL_GRPC_LISTEN")]
    pub grpc_listen: Option<String>,
    /// Operator HTTP API address, bound as --grpc-listen is [default: `[::]:7680`].
    #[arg(long, env = "SHOAL_HTTP_LISTEN")]
    pub http_listen: Option<String>,
    /// How long a peer stays after its last message, e.g. 30s [default: 30s].
    #[arg(long, env = "SHOAL_PEER_TTL")]
    pub peer_ttl: Option<String>,
    /// Peers fetching one task from upstream at once [default: 1].
    #[arg(long, env = "SHOAL_MAX_BACK_TO_SOURCE")]
    pub max_back_to_source: Option<String>,
    /// Replace a back-to-source peer silent for this long [default: 20s].
    #[arg(long, env = "SHOAL_BACK_TO_SOURCE_STALL")]
    pub back_to_source_stall: Option<String>,
    /// How long a task's first back-to-source election waits for a downloader
    /// as fast as the fastest joined peer (by declared link rate); 0s: never
    /// [default: 250ms].
    #[arg(long, env = "SHOAL_FASTER_SOURCE_WAIT")]
    pub faster_source_wait: Option<String>,
    /// A back-to-source peer hands the rest of a blob over to a downloader whose
    /// declared link rate is at least this many times its own; 0: never
    /// [default: 2].
    #[arg(long, env = "SHOAL_HAND_OVER_RATIO")]
    pub hand_over_ratio: Option<String>,
    /// Parents per plan [default: 8].
    #[arg(long, env = "SHOAL_MAX_PARENTS")]
    pub max_parents: Option<String>,
    /// Downloads one peer serves as a parent at once; a download that would get
    /// fewer than half its parents may take a parent up to 2 past this (not one
    /// fetching the blob from upstream) [default: 8].
    #[arg(long, env = "SHOAL_MAX_CHILDREN_PER_PARENT")]
    pub max_children_per_parent: Option<String>,
    /// How often plan updates are flushed to peers [default: 100ms].
    #[arg(long, env = "SHOAL_PLAN_INTERVAL")]
    pub plan_interval: Option<String>,
    /// Log format: text or json [default: text].
    #[arg(long, env = "SHOAL_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// File holding the bearer token that the operator API's write endpoints
    /// (quarantine, drop) require; without it they answer 403 [default: none].
    #[arg(long, env = "SHOAL_OPERATOR_TOKEN_FILE")]
    pub operator_token_file: Option<PathBuf>,
    /// Directory with the gRPC serving certificate (tls.crt, tls.key) and the
    /// cluster CA (ca.crt) that every peer's client certificate must chain to.
    /// Re-read when the files change. Required unless --insecure-plaintext.
    #[arg(long, env = "SHOAL_TLS_DIR")]
    pub tls_dir: Option<PathBuf>,
    /// Directory with a serving certificate (tls.crt, tls.key, and ca.crt) for
    /// the operator API: it is then served over TLS (no client certificate;
    /// writes still need the token). May be the same as --tls-dir. Re-read when
    /// the files change [default: plain HTTP].
    #[arg(long, env = "SHOAL_HTTP_TLS_DIR")]
    pub http_tls_dir: Option<PathBuf>,
    /// Development only: serve gRPC in plain text to anyone, with no identity
    /// checks (logged as a warning at start) [default: off].
    #[arg(long, env = "SHOAL_INSECURE_PLAINTEXT")]
    pub insecure_plaintext: bool,
    /// Accept the shared peer certificate (common name `shoal-peer`, names no
    /// node) for any peer id. Without it each peer needs its own node
    /// certificate [default: off].
    #[arg(long, env = "SHOAL_ALLOW_SHARED_IDENTITY")]
    pub allow_shared_identity: bool,
    /// Test hook: panic in the core when this peer id joins (the fault tests
    /// check that the process then exits). Never set in production.
    #[arg(long, env = "SHOAL_TEST_PANIC_ON_JOIN", hide = true)]
    pub test_panic_on_join: Option<String>,
    /// The certificate issuer's flags.
    #[command(flatten)]
    pub issuer: IssuerArgs,
}

/// How the gRPC port is secured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrpcSecurity {
    /// Mutual TLS with the files in this directory.
    MutualTls(PathBuf),
    /// Plain text, no identity checks (`--insecure-plaintext`).
    InsecurePlaintext,
}

/// The config file: the same keys as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    grpc_listen: Option<String>,
    http_listen: Option<String>,
    peer_ttl: Option<String>,
    max_back_to_source: Option<String>,
    back_to_source_stall: Option<String>,
    faster_source_wait: Option<String>,
    hand_over_ratio: Option<String>,
    max_parents: Option<String>,
    max_children_per_parent: Option<String>,
    plan_interval: Option<String>,
    log_format: Option<String>,
    operator_token_file: Option<PathBuf>,
    tls_dir: Option<PathBuf>,
    http_tls_dir: Option<PathBuf>,
    insecure_plaintext: Option<bool>,
    allow_shared_identity: Option<bool>,
    issuer_ca_dir: Option<PathBuf>,
    issuer_listen: Option<String>,
    issuer_cert_lifetime: Option<String>,
    issuer_audience: Option<String>,
    issuer_service_account: Option<String>,
    issuer_daemonset: Option<String>,
    kube_api_url: Option<String>,
    kube_token_file: Option<PathBuf>,
    kube_ca_file: Option<PathBuf>,
}

impl File {
    /// The issuer's keys.
    fn issuer(&mut self) -> IssuerArgs {
        IssuerArgs {
            issuer_ca_dir: self.issuer_ca_dir.take(),
            issuer_listen: self.issuer_listen.take(),
            issuer_cert_lifetime: self.issuer_cert_lifetime.take(),
            issuer_audience: self.issuer_audience.take(),
            issuer_service_account: self.issuer_service_account.take(),
            issuer_daemonset: self.issuer_daemonset.take(),
            kube_api_url: self.kube_api_url.take(),
            kube_token_file: self.kube_token_file.take(),
            kube_ca_file: self.kube_ca_file.take(),
        }
    }
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// gRPC listen address.
    pub grpc_listen: SocketAddr,
    /// Operator API listen address.
    pub http_listen: SocketAddr,
    /// Flush interval of plan updates.
    pub plan_interval: Duration,
    /// Log format.
    pub log_format: LogFormat,
    /// The token write endpoints require; `None`: they are disabled (403).
    /// Read once at start, from `--operator-token-file`: one line of at
    /// least 16 visible ASCII characters. Never logged.
    pub operator_token: Option<OperatorToken>,
    /// How gRPC is secured (mutual TLS unless the development switch is on).
    pub grpc_security: GrpcSecurity,
    /// Accept the shared peer certificate for any peer id.
    pub allow_shared_identity: bool,
    /// Serve the operator API over TLS with the files in this directory.
    pub http_tls_dir: Option<PathBuf>,
    /// Test hook: panic when this peer id joins.
    pub test_panic_on_join: Option<String>,
    /// The certificate issuer, when `--issuer-ca-dir` turns it on.
    pub issuer: Option<IssuerSettings>,
    /// The core's tunables.
    pub core: CoreConfig,
}

/// The longest `--faster-source-wait` accepted.
const MAX_FASTER_SOURCE_WAIT: Duration = Duration::from_secs(10);

/// `--hand-over-ratio`'s bounds (besides 0): below 1.2 a source would hand
/// over for a gain smaller than what the second upstream download costs.
const MIN_HAND_OVER_RATIO: f64 = 1.2;
const MAX_HAND_OVER_RATIO: f64 = 1000.0;

/// Parses `30s`, `500ms`, `2m`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30s, 500ms or 2m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!(
            "{s:?} is not a duration like 30s, 500ms or 2m (units: ms, s, m, h)"
        )),
    }
}

impl Settings {
    /// Parses command-line words (the first is the program name), as the
    /// binary does, then [`Settings::resolve`]s them; tests start an
    /// in-process scheduler this way.
    pub fn from_args<I, T>(words: I) -> Result<Settings, Vec<String>>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let args = Args::try_parse_from(words).map_err(|e| vec![e.to_string()])?;
        Settings::resolve(args)
    }

    /// Merges flags over the file over defaults and validates everything,
    /// returning every problem found.
    pub fn resolve(args: Args) -> Result<Settings, Vec<String>> {
        let mut errors = Vec::new();
        let mut file = match &args.config {
            None => File::default(),
            Some(path) => match std::fs::read_to_string(path) {
                Err(e) => {
                    errors.push(format!("config file {}: {e}", path.display()));
                    File::default()
                }
                Ok(text) => toml::from_str(&text).unwrap_or_else(|e| {
                    errors.push(format!("config file {}: {e}", path.display()));
                    File::default()
                }),
            },
        };
        let file_issuer = file.issuer();
        let get = |name: &str,
                   flag: Option<String>,
                   file: Option<String>,
                   default: &str|
         -> (String, String) {
            (
                name.to_string(),
                flag.or(file).unwrap_or_else(|| default.to_string()),
            )
        };
        let grpc = get(
            "grpc-listen",
            args.grpc_listen,
            file.grpc_listen,
            "[::]:7600",
        );
        let http = get(
            "http-listen",
            args.http_listen,
            file.http_listen,
            "[::]:7680",
        );
        let ttl = get("peer-ttl", args.peer_ttl, file.peer_ttl, "30s");
        let b2s = get(
            "max-back-to-source",
            args.max_back_to_source,
            file.max_back_to_source,
            "1",
        );
        let stall = get(
            "back-to-source-stall",
            args.back_to_source_stall,
            file.back_to_source_stall,
            "20s",
        );
        let faster_wait = get(
            "faster-source-wait",
            args.faster_source_wait,
            file.faster_source_wait,
            "250ms",
        );
        let hand_over = get(
            "hand-over-ratio",
            args.hand_over_ratio,
            file.hand_over_ratio,
            "2",
        );
        let parents = get("max-parents", args.max_parents, file.max_parents, "8");
        let children = get(
            "max-children-per-parent",
            args.max_children_per_parent,
            file.max_children_per_parent,
            "8",
        );
        let interval = get(
            "plan-interval",
            args.plan_interval,
            file.plan_interval,
            "100ms",
        );
        let log = get("log-format", args.log_format, file.log_format, "text");

        let mut addr = |(name, v): (String, String)| {
            v.parse::<SocketAddr>()
                .map_err(|_| errors.push(format!("--{name}: {v:?} is not an ip:port address")))
                .ok()
        };
        let grpc_listen = addr(grpc);
        let http_listen = addr(http);
        let mut duration = |(name, v): (String, String), min: Duration| match parse_duration(&v) {
            Ok(d) if d >= min => Some(d),
            Ok(_) => {
                errors.push(format!("--{name}: {v} is below the minimum of {min:?}"));
                None
            }
            Err(e) => {
                errors.push(format!("--{name}: {e}"));
                None
            }
        };
        let peer_ttl = duration(ttl, Duration::from_secs(1));
        let stall = duration(stall, Duration::from_secs(1));
        let plan_interval = duration(interval, Duration::from_millis(10));
        let faster_wait = duration(faster_wait, Duration::ZERO);
        let faster_wait = match faster_wait {
            Some(d) if d > MAX_FASTER_SOURCE_WAIT => {
                errors.push(format!(
                    "--faster-source-wait: {d:?} is above the maximum of {MAX_FASTER_SOURCE_WAIT:?} (a slower node's pull may wait this long)"
                ));
                None
            }
            d => d,
        };
        let hand_over = match hand_over.1.parse::<f64>() {
            Ok(r) if r == 0.0 || (MIN_HAND_OVER_RATIO..=MAX_HAND_OVER_RATIO).contains(&r) => {
                Some(r)
            }
            _ => {
                errors.push(format!(
                    "--hand-over-ratio: {:?} must be 0 (never) or a number from {MIN_HAND_OVER_RATIO} to {MAX_HAND_OVER_RATIO}",
                    hand_over.1
                ));
                None
            }
        };
        let mut count = |(name, v): (String, String), max: u32| match v.parse::<u32>() {
            Ok(n) if (1..=max).contains(&n) => Some(n),
            _ => {
                errors.push(format!(
                    "--{name}: {v:?} must be a whole number from 1 to {max}"
                ));
                None
            }
        };
        let b2s = count(b2s, 16);
        let parents = count(parents, 64);
        let children = count(children, 1024);
        let log_format = match log.1.as_str() {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            other => {
                errors.push(format!("--log-format: {other:?} must be text or json"));
                None
            }
        };
        let operator_token = match args.operator_token_file.or(file.operator_token_file) {
            None => None,
            Some(path) => match OperatorToken::from_file(&path) {
                Ok(t) => Some(t),
                Err(e) => {
                    // Names the file, never its content.
                    errors.push(format!("--operator-token-file {}: {e}", path.display()));
                    None
                }
            },
        };
        let insecure = args.insecure_plaintext || file.insecure_plaintext.unwrap_or(false);
        let grpc_security = match (args.tls_dir.or(file.tls_dir), insecure) {
            (Some(dir), false) => Some(GrpcSecurity::MutualTls(dir)),
            (None, true) => Some(GrpcSecurity::InsecurePlaintext),
            (Some(_), true) => {
                errors.push("--tls-dir and --insecure-plaintext exclude each other".into());
                None
            }
            (None, false) => {
                errors.push(
                    "--tls-dir is required: gRPC is mutual TLS (a directory with tls.crt and tls.key, the \
                     scheduler's serving certificate, and ca.crt, the cluster CA that peers' certificates \
                     chain to; `shoal-peer tls issue --scheduler` makes one). For development only, \
                     --insecure-plaintext serves plain text to anyone."
                        .into(),
                );
                None
            }
        };
        let allow_shared_identity =
            args.allow_shared_identity || file.allow_shared_identity.unwrap_or(false);
        let issuer = args.issuer.or(file_issuer).resolve(
            matches!(grpc_security, Some(GrpcSecurity::MutualTls(_))),
            &mut errors,
        );
        if let (Some(i), Some(g), Some(h)) = (&issuer, grpc_listen, http_listen)
            && i.listen.port() != 0
            && (i.listen == g || i.listen == h)
        {
            errors.push(format!(
                "--issuer-listen {} is also --grpc-listen or --http-listen",
                i.listen
            ));
        }
        if let (Some(g), Some(h)) = (grpc_listen, http_listen)
            && g == h
            && g.port() != 0
        {
            errors.push(format!("--grpc-listen and --http-listen are both {g}"));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let core = CoreConfig {
            peer_ttl: peer_ttl.expect("checked"),
            max_back_to_source: b2s.expect("checked") as usize,
            back_to_source_stall: stall.expect("checked"),
            faster_source_wait: faster_wait.expect("checked"),
            hand_over_ratio: hand_over.expect("checked"),
            max_parents: parents.expect("checked") as usize,
            max_children_per_parent: children.expect("checked"),
            seed: rand::random(),
            ..CoreConfig::default()
        };
        Ok(Settings {
            grpc_listen: grpc_listen.expect("checked"),
            http_listen: http_listen.expect("checked"),
            plan_interval: plan_interval.expect("checked"),
            log_format: log_format.expect("checked"),
            operator_token,
            grpc_security: grpc_security.expect("checked"),
            allow_shared_identity,
            http_tls_dir: args.http_tls_dir.or(file.http_tls_dir),
            test_panic_on_join: args.test_panic_on_join,
            issuer,
            core,
        })
    }
}

#[cfg(test)]
mod tests;

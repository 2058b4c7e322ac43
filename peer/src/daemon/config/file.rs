//! The config file of `shoal-peer run --config FILE`: the same keys as the flags
//! (snake_case), every one optional, unknown keys rejected. Values stay text here, as
//! flags do, and are checked once in [`Settings::resolve`](super::Settings::resolve).
//! Only the file has the per-registry upstream settings:
//!
//! ```toml
//! [registries._default]      # every registry without its own table
//! idle_timeout = "20s"
//! [registries."ghcr.io"]     # over _default; the name as containerd's ns gives it
//! connect_timeout = "5s"
//! attempts = 2
//! ```
//!
//! Not here: defaults and validation (`config.rs`).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use super::parse_duration;
use crate::registry::UpstreamPolicy;
use crate::registry::names;

/// The file's shape.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct File {
    /// `--scheduler`, as a list of URLs.
    pub(super) scheduler: Option<Vec<String>>,
    pub(super) quic_listen: Option<Text>,
    pub(super) advertise_addr: Option<Text>,
    pub(super) data_dir: Option<PathBuf>,
    pub(super) cache_size: Option<Text>,
    pub(super) http_listen: Option<Text>,
    pub(super) peer_tls_dir: Option<PathBuf>,
    pub(super) dev_ephemeral_tls: Option<bool>,
    pub(super) upload_slots: Option<Text>,
    pub(super) upload_rate_limit: Option<Text>,
    pub(super) link_rate: Option<Text>,
    pub(super) zone: Option<Text>,
    pub(super) log_format: Option<Text>,
    pub(super) mirror_listen: Option<Text>,
    pub(super) mirror_allow_remote: Option<bool>,
    pub(super) containerd_hosts_dir: Option<PathBuf>,
    pub(super) containerd_content_dir: Option<PathBuf>,
    pub(super) containers_registries_conf: Option<PathBuf>,
    pub(super) containers_registries_conf_dir: Option<PathBuf>,
    pub(super) containers_certs_dir: Option<PathBuf>,
    pub(super) default_upstream: Option<Text>,
    pub(super) cache_high_watermark: Option<Text>,
    pub(super) cache_low_watermark: Option<Text>,
    pub(super) cache_incomplete_ttl: Option<Text>,
    pub(super) scrub_rate: Option<Text>,
    pub(super) access_check: Option<Text>,
    pub(super) access_cache_ttl: Option<Text>,
    pub(super) stale_tag_window: Option<Text>,
    pub(super) identity: Option<Text>,
    pub(super) node_name: Option<Text>,
    pub(super) sa_token_file: Option<PathBuf>,
    pub(super) issuer_url: Option<Text>,
    pub(super) issuer_ca_file: Option<PathBuf>,
    /// `[registries._default]` and `[registries."HOST"]`: how hard to try upstream.
    #[serde(default)]
    pub(super) registries: BTreeMap<String, RegistryEntry>,
}

/// The entry every registry's own entry starts from (as containerd's `_default`
/// directory; no registry host has an underscore).
pub(super) const DEFAULT_ENTRY: &str = "_default";

/// One `[registries.…]` table: any of the [`UpstreamPolicy`] fields.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RegistryEntry {
    connect_timeout: Option<Text>,
    request_timeout: Option<Text>,
    idle_timeout: Option<Text>,
    attempts: Option<Text>,
}

impl RegistryEntry {
    /// `base` with this entry's values; a bad value is an error in `errors` and leaves
    /// `base`'s.
    fn over(&self, base: UpstreamPolicy, at: &str, errors: &mut Vec<String>) -> UpstreamPolicy {
        let mut p = base;
        let mut duration = |key: &str, v: &Option<Text>, field: &mut Duration| {
            let Some(Text(v)) = v else { return };
            match parse_duration(v) {
                Ok(d) if !d.is_zero() => *field = d,
                Ok(_) => errors.push(format!("{at} {key}: must be above zero")),
                Err(e) => errors.push(format!("{at} {key}: {e}")),
            }
        };
        duration(
            "connect_timeout",
            &self.connect_timeout,
            &mut p.connect_timeout,
        );
        duration(
            "request_timeout",
            &self.request_timeout,
            &mut p.request_timeout,
        );
        duration("idle_timeout", &self.idle_timeout, &mut p.idle_timeout);
        if let Some(Text(v)) = &self.attempts {
            match v.parse::<u32>() {
                Ok(n) if (1..=MAX_ATTEMPTS).contains(&n) => p.attempts = n,
                _ => errors.push(format!(
                    "{at} attempts: {v:?} must be a whole number from 1 to {MAX_ATTEMPTS}"
                )),
            }
        }
        p
    }
}

/// Most tries per endpoint a config file may ask for.
const MAX_ATTEMPTS: u32 = 10;

impl File {
    /// Reads and parses `path`. The error names the file, and toml's message gives the
    /// line and column.
    pub(super) fn load(path: &Path) -> Result<File, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("config file {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("config file {}: {e}", path.display()))
    }

    /// The upstream policies: `[registries._default]` over the built-in defaults, and
    /// each `[registries."HOST"]` over that. Problems go to `errors`, naming `path` and
    /// the table.
    pub(super) fn policies(
        &self,
        path: Option<&Path>,
        errors: &mut Vec<String>,
    ) -> (UpstreamPolicy, BTreeMap<String, UpstreamPolicy>) {
        let file = path.map(|p| p.display().to_string()).unwrap_or_default();
        let at = |name: &str| format!("config file {file}: [registries.{name:?}]");
        let default = match self.registries.get(DEFAULT_ENTRY) {
            Some(e) => e.over(UpstreamPolicy::default(), &at(DEFAULT_ENTRY), errors),
            None => UpstreamPolicy::default(),
        };
        let mut own = BTreeMap::new();
        for (name, entry) in &self.registries {
            if name == DEFAULT_ENTRY {
                continue;
            }
            if !names::is_registry_host(name) {
                errors.push(format!(
                    "{}: not a registry host (like ghcr.io or 10.0.0.9:5000, as containerd's ns names it) nor {DEFAULT_ENTRY}",
                    at(name)
                ));
                continue;
            }
            own.insert(name.clone(), entry.over(default, &at(name), errors));
        }
        (default, own)
    }
}

/// A value as its text: a TOML string, integer or float (`upload_slots = 8` and
/// `upload_slots = "8"` are the same), checked later like the flag's text.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Text(pub(super) String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Text, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Text;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a number")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text, E> {
                Ok(Text(v.to_owned()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

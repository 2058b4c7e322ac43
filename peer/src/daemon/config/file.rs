//! The config file of `shoal-peer run --config FILE`: the same keys as the flags
//! (snake_case), every one optional, unknown keys rejected. Values stay text here, as
//! flags do, and are checked once in [`Settings::resolve`](super::Settings::resolve).
//!
//! Not here: defaults and validation (`config.rs`).

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

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
    pub(super) zone: Option<Text>,
    pub(super) log_format: Option<Text>,
    pub(super) mirror_listen: Option<Text>,
    pub(super) containerd_hosts_dir: Option<PathBuf>,
    pub(super) default_upstream: Option<Text>,
    pub(super) cache_high_watermark: Option<Text>,
    pub(super) cache_low_watermark: Option<Text>,
}

impl File {
    /// Reads and parses `path`. The error names the file, and toml's message gives the
    /// line and column.
    pub(super) fn load(path: &Path) -> Result<File, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("config file {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("config file {}: {e}", path.display()))
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

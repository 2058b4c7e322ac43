//! `SetupError`: everything that can stop `shoal-peer containerd …`, worded for the
//! operator who reads it on a node.
//!
//! Every variant names the file it is about; TOML problems carry `file:line:column`.
//! This file does not decide anything: the variants are built where the problem is found
//! (`config.rs`, `hosts_toml.rs`, `apply.rs`).

use std::io;
use std::path::PathBuf;

/// Why node setup refused to go on. Nothing has been written when any of these is returned
/// by [`plan`](super::plan); [`apply`](super::apply::apply) can fail half-way only on I/O
/// errors, and then [`restore`](super::apply::restore) still undoes what was written.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A file or directory could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file, as the host sees it.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// A file or directory could not be written, renamed or removed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file, as the host sees it.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// A TOML file does not parse.
    #[error(
        "{path}:{line}:{column}: malformed TOML: {message}; fix the file (nothing was written)"
    )]
    MalformedToml {
        /// The file.
        path: PathBuf,
        /// 1-based line of the first problem.
        line: usize,
        /// 1-based column (in characters) of the first problem.
        column: usize,
        /// The parser's explanation.
        message: String,
    },
    /// A TOML file parses but holds something Shoal cannot merge safely.
    #[error("{path}:{line}:{column}: {message} (nothing was written)")]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong and what to do.
        message: String,
    },
    /// `--containerd-config` names a file that does not exist.
    #[error("containerd config {path} does not exist; pass the file containerd is started with")]
    ConfigMissing {
        /// The path given.
        path: PathBuf,
    },
    /// Inline `registry.mirrors` / `registry.configs.*.tls` next to `config_path`: containerd
    /// refuses to start with both.
    #[error(
        "{path} sets registry mirrors or TLS configs inline and also config_path; containerd \
         refuses to start with both. Offending lines:\n{quoted}\n{hint}"
    )]
    InlineRegistryConflict {
        /// The file holding the lines.
        path: PathBuf,
        /// The lines, each as `  LINE | text`.
        quoted: String,
        /// How to move them to hosts.toml.
        hint: String,
    },
    /// The containerd config does not set `config_path`, so containerd ignores hosts.toml.
    #[error(
        "{path} does not set the registry config_path, so containerd does not read hosts.toml \
         and a mirror cannot be configured. Add these lines to {path} ({flavor}):\n\n{lines}\n\n\
         then restart containerd once and run configure again. Shoal never edits config.toml.{hint}"
    )]
    NoConfigPath {
        /// The containerd config.
        path: PathBuf,
        /// "containerd 1.x, config version 2" and the like.
        flavor: String,
        /// The exact lines to add.
        lines: String,
        /// Platform specific advice (k3s, Talos), may be empty.
        hint: String,
    },
    /// Nothing tells where hosts.toml files live.
    #[error(
        "no containerd config found (looked for {tried}) and no known hosts directory exists; \
         pass --containerd-config FILE or --hosts-dir DIR"
    )]
    NoHostsDir {
        /// The paths that were looked at, comma separated.
        tried: String,
    },
    /// `--mirror-url` is not a plain `http(s)://host:port` URL.
    #[error("invalid --mirror-url {url:?}: {reason}")]
    InvalidMirrorUrl {
        /// The value given.
        url: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// `--registry` is not a registry host name.
    #[error("invalid --registry {name:?}: {reason}")]
    InvalidRegistry {
        /// The value given.
        name: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// The record of what configure created is unreadable.
    #[error("{path}: {message}")]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Several of the above, all found before anything was written.
    #[error("{} problems found, nothing was written:\n{}", .0.len(), join(.0))]
    Several(Vec<SetupError>),
}

fn join(errors: &[SetupError]) -> String {
    errors
        .iter()
        .map(|e| format!("- {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl From<crate::registry::registries_conf::ConfError> for SetupError {
    fn from(e: crate::registry::registries_conf::ConfError) -> Self {
        if e.malformed {
            SetupError::MalformedToml {
                path: e.path,
                line: e.line,
                column: e.column,
                message: e.message,
            }
        } else {
            SetupError::Unsupported {
                path: e.path,
                line: e.line,
                column: e.column,
                message: e.message,
            }
        }
    }
}

impl SetupError {
    /// One error for a list found together: the error itself when there is one.
    pub(crate) fn from_many(mut errors: Vec<SetupError>) -> Option<SetupError> {
        match errors.len() {
            0 => None,
            1 => errors.pop(),
            _ => Some(SetupError::Several(errors)),
        }
    }

    /// A parse error of `text` (the content of `path`) located at its line and column.
    pub(crate) fn malformed(path: PathBuf, text: &str, err: &toml_edit::TomlError) -> Self {
        let (line, column) = line_col(text, err.span().map_or(0, |s| s.start));
        let message = err.message().trim().replace('\n', " ");
        SetupError::MalformedToml {
            path,
            line,
            column,
            message,
        }
    }

    /// An `Unsupported` error pointing at byte `offset` of `text`.
    pub(crate) fn unsupported(
        path: PathBuf,
        text: &str,
        offset: Option<usize>,
        message: impl Into<String>,
    ) -> Self {
        let (line, column) = line_col(text, offset.unwrap_or(0));
        SetupError::Unsupported {
            path,
            line,
            column,
            message: message.into(),
        }
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one() {
        let text = "a = 1\nbé = [\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 6), (2, 1));
        assert_eq!(line_col(text, 9), (2, 3)); // after "bé" (é is two bytes)
        assert_eq!(line_col(text, 999), (3, 1));
    }

    #[test]
    fn malformed_names_file_line_and_column() {
        let text = "server = \"x\"\n[host.\"a\"\ncapabilities = 1\n";
        let err = text.parse::<toml_edit::DocumentMut>().unwrap_err();
        let e = SetupError::malformed(PathBuf::from("/h/hosts.toml"), text, &err);
        let shown = e.to_string();
        assert!(shown.starts_with("/h/hosts.toml:2:"), "{shown}");
    }
}

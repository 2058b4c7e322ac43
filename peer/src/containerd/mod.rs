//! Node setup for containerd: `shoal-peer containerd configure | check | restore`.
//!
//! Makes containerd try the Shoal mirror first for each registry by merging a
//! `[host."<mirror>"]` entry into `<hosts-dir>/<registry>/hosts.toml`, keeping everything
//! that was there, and undoes it exactly.
//!
//! Layout:
//! - [`plan`] (this file) is the pure core: from a read-only [`Tree`] and [`Options`] it
//!   computes every [`FileChange`] before anything is written, or refuses with a
//!   [`SetupError`].
//! - `config.rs` finds the hosts directory from containerd's config (versions 1–3, k3s,
//!   Talos); `imports.rs` reads the config and its imports; `refuse.rs` words the refusal
//!   of configs containerd would reject; [`layout`] holds the distributions' well-known
//!   paths and the registry table of each config version (used by both).
//! - `hosts_toml.rs` is the merge of one `hosts.toml`; `order.rs` places its tables.
//! - `apply.rs` is the I/O shell: atomic writes, backups, the manifest, restore.
//! - `diff.rs` renders `check`'s unified diff with `[header]` values masked.
//! - `cli.rs` is the clap command.
//!
//! Not here: editing `config.toml` (never done: the operator is told what to add),
//! restarting containerd (not needed: it re-reads `hosts.toml` on every pull), and
//! reading `hosts.toml` for the upstream client (that is the mirror's business).

pub mod apply;
pub mod cli;
pub mod config;
pub mod diff;
mod error;
pub mod hosts_toml;
mod imports;
pub mod layout;
mod order;
mod refuse;
mod tree;

use std::path::{Path, PathBuf};

pub use config::{HostsDirs, Strictness};
pub use error::SetupError;
pub use hosts_toml::MirrorSpec;
pub use tree::{FsTree, MemTree, Tree};

/// Registries mirrored when none is named (`_default` is added unless
/// `--no-default-host`).
pub const DEFAULT_REGISTRIES: [&str; 7] = [
    "docker.io",
    "ghcr.io",
    "quay.io",
    "registry.k8s.io",
    "gcr.io",
    "public.ecr.aws",
    "mcr.microsoft.com",
];

/// The directory name containerd uses for registries without a directory of their own.
pub const DEFAULT_HOST: &str = "_default";

/// The mirror's default URL: the peer daemon on the node's loopback.
pub const DEFAULT_MIRROR_URL: &str = "http://127.0.0.1:7650";

/// What to configure; built by the CLI from flags, by tests directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// `--containerd-config`: the containerd config file (host path). `None`: detect
    /// (`/etc/containerd/config.toml`, then k3s', then Talos').
    pub containerd_config: Option<PathBuf>,
    /// `--hosts-dir`: use this directory, whatever the config says.
    pub hosts_dir: Option<PathBuf>,
    /// The mirror, `http(s)://host[:port][/path]`.
    pub mirror_url: String,
    /// Registry host names (directory names under the hosts dir), `_default` included.
    pub registries: Vec<String>,
    /// Whether tags are resolved through the mirror (`capabilities` gets `"resolve"`).
    pub resolve_tags: bool,
    /// `dial_timeout` written on the mirror entry, e.g. `"1s"`; `None` writes none.
    pub dial_timeout: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        let mut registries: Vec<String> =
            DEFAULT_REGISTRIES.iter().map(|r| r.to_string()).collect();
        registries.push(DEFAULT_HOST.into());
        Options {
            containerd_config: None,
            hosts_dir: None,
            mirror_url: DEFAULT_MIRROR_URL.into(),
            registries,
            resolve_tags: true,
            dial_timeout: Some("1s".into()),
        }
    }
}

/// One file configure would write: `before` is `None` when it does not exist yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileChange {
    /// Host path of the file.
    pub path: PathBuf,
    /// Its current content.
    pub before: Option<String>,
    /// The content configure writes.
    pub after: String,
}

/// Everything configure would do, computed before the first write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Where the hosts.toml files are and why.
    pub hosts: HostsDirs,
    /// The files to write; empty when the node is already configured.
    pub changes: Vec<FileChange>,
}

/// Computes the changes that configure makes on `tree`, or why it must not.
///
/// Every file involved is read and validated first: a malformed or conflicting file
/// anywhere means an error and no change at all. Problems in several `hosts.toml` files are
/// reported together.
pub fn plan(tree: &dyn Tree, opts: &Options) -> Result<Plan, SetupError> {
    let mirror_url = validate_mirror_url(&opts.mirror_url)?;
    let registries = validate_registries(&opts.registries)?;
    let hosts = config::find_hosts_dirs(
        tree,
        opts.containerd_config.as_deref(),
        opts.hosts_dir.as_deref(),
        Strictness::Strict,
    )?;
    let spec = MirrorSpec {
        mirror_url,
        capabilities: if opts.resolve_tags {
            vec!["pull".into(), "resolve".into()]
        } else {
            vec!["pull".into()]
        },
        dial_timeout: opts.dial_timeout.clone(),
    };
    let mut changes = Vec::new();
    let mut errors = Vec::new();
    for registry in &registries {
        match plan_registry(tree, &hosts, registry, &spec) {
            Ok(Some(change)) => changes.push(change),
            Ok(None) => {}
            Err(e) => errors.push(e),
        }
    }
    if let Some(e) = SetupError::from_many(errors) {
        return Err(e);
    }
    Ok(Plan { hosts, changes })
}

fn plan_registry(
    tree: &dyn Tree,
    hosts: &HostsDirs,
    registry: &str,
    spec: &MirrorSpec,
) -> Result<Option<FileChange>, SetupError> {
    // containerd uses a registry's directory from the first root that has one.
    let root = hosts
        .roots
        .iter()
        .find(|r| tree.is_dir(&r.join(registry)))
        .unwrap_or(&hosts.primary);
    let dir = root.join(registry);
    let path = hosts_toml_path(root, registry);
    let before = tree.read(&path)?;
    let cert_files = match before.as_deref() {
        None | Some("") => tree
            .list(&dir)?
            .into_iter()
            .filter(|n| n.ends_with(".crt") || n.ends_with(".cert") || n.ends_with(".key"))
            .collect(),
        Some(_) => Vec::new(),
    };
    let after = hosts_toml::merge(&path, registry, before.as_deref(), &cert_files, spec)?;
    if before.as_deref() == Some(after.as_str()) {
        return Ok(None);
    }
    Ok(Some(FileChange {
        path,
        before,
        after,
    }))
}

pub(crate) fn validate_mirror_url(url: &str) -> Result<String, SetupError> {
    let bad = |reason| SetupError::InvalidMirrorUrl {
        url: url.to_string(),
        reason,
    };
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| bad("it must start with http:// or https://"))?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(bad("it has no host"));
    }
    if url
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '"' | '\\' | '?' | '#'))
    {
        return Err(bad("it contains spaces, quotes, a query or a fragment"));
    }
    Ok(url.trim_end_matches('/').to_string())
}

pub(crate) fn validate_registries(names: &[String]) -> Result<Vec<String>, SetupError> {
    let mut out: Vec<String> = Vec::new();
    for name in names {
        let bad = |reason| SetupError::InvalidRegistry {
            name: name.clone(),
            reason,
        };
        if name.is_empty() {
            return Err(bad("it is empty"));
        }
        if name != DEFAULT_HOST
            && (name.starts_with(['.', '-', '_'])
                || name.contains("..")
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '_')))
        {
            return Err(bad(
                "it must be a registry host such as docker.io or registry.example.com:5000, or _default",
            ));
        }
        if !out.contains(name) {
            out.push(name.clone());
        }
    }
    Ok(out)
}

/// The hosts.toml path configure manages for `registry` under `dir`.
pub fn hosts_toml_path(dir: &Path, registry: &str) -> PathBuf {
    dir.join(registry).join("hosts.toml")
}

#[cfg(test)]
mod tests;

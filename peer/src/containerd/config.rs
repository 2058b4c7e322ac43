//! Finding containerd's hosts directory: which `config.toml` is in use (plain containerd,
//! k3s, Talos), its config version, and the registry `config_path` (a `:`-separated list
//! included), with the well-known layouts as the fallback. Imports are read by
//! `imports.rs`; the refusals (inline mirrors, no `config_path`) are worded in `refuse.rs`;
//! the distributions' well-known paths and the registry table of each config version are
//! in [`layout`](super::layout).
//!
//! The outcome is [`HostsDirs`]: the directories whose `<registry>/hosts.toml` containerd
//! reads. This file never writes and never edits `config.toml`; when `config_path` is
//! missing it says which lines to add.

use std::path::{Path, PathBuf};

use toml_edit::Item;

use super::imports::load;
use super::layout::{
    DEFAULT_CONFIG, DEFAULT_HOSTS_DIR, Flavor, K3S_CONFIG, K3S_HOSTS_DIR, TALOS_CONFIG,
    TALOS_HOSTS_DIR, lookup, registry_table_path,
};
use super::refuse::{check_inline_registry, no_config_path};
use super::{SetupError, Tree};

/// Where hosts.toml files live, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostsDirs {
    /// Every directory containerd searches, in its order (a `:`-separated `config_path`
    /// gives several). A registry's directory is used in the first root that has it.
    pub roots: Vec<PathBuf>,
    /// Where new registry directories and the configure manifest go: the first existing
    /// root, or the first root when none exists yet.
    pub primary: PathBuf,
    /// Human explanation of the choice, for the log.
    pub source: String,
}

impl HostsDirs {
    fn single(dir: PathBuf, source: String) -> Self {
        HostsDirs {
            roots: vec![dir.clone()],
            primary: dir,
            source,
        }
    }
}

/// How strict discovery is: `configure`/`check` refuse broken configs, `restore` only
/// needs to find the directory again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strictness {
    /// Refuse inline mirrors next to `config_path` and a missing `config_path`.
    Strict,
    /// Find the directory however possible.
    Lenient,
}

/// Finds the hosts directories: `hosts_dir` > `config_path` in the containerd config (and
/// its imports) > well-known layouts. `config` is `--containerd-config` when given.
pub fn find_hosts_dirs(
    tree: &dyn Tree,
    config: Option<&Path>,
    hosts_dir: Option<&Path>,
    strictness: Strictness,
) -> Result<HostsDirs, SetupError> {
    if let (Some(dir), Strictness::Lenient) = (hosts_dir, strictness) {
        return Ok(HostsDirs::single(dir.to_path_buf(), "--hosts-dir".into()));
    }
    let (config, flavor) = match config {
        Some(path) if tree.exists(path) => (Some(path.to_path_buf()), flavor_of(path)),
        Some(path) => {
            return Err(SetupError::ConfigMissing {
                path: path.to_path_buf(),
            });
        }
        None => detect_config(tree),
    };
    let Some(config) = config else {
        if let Some(dir) = hosts_dir {
            return Ok(HostsDirs::single(dir.to_path_buf(), "--hosts-dir".into()));
        }
        return well_known(tree);
    };
    let files = load(tree, &config)?;
    let version = files[0]
        .doc
        .as_table()
        .get("version")
        .and_then(Item::as_integer)
        .unwrap_or(1);
    let registry_path = registry_table_path(version);
    if strictness == Strictness::Strict {
        for file in &files {
            check_inline_registry(file, &registry_path, flavor)?;
        }
    }
    if let Some(dir) = hosts_dir {
        return Ok(HostsDirs::single(dir.to_path_buf(), "--hosts-dir".into()));
    }
    // Imports are merged over the main file in order: the last one that sets it wins.
    let mut config_path = None;
    for file in &files {
        if let Some(item) = lookup(file.doc.as_table(), &registry_path, "config_path") {
            let Some(value) = item.as_str() else {
                let at = item.span().map(|s| s.start);
                return Err(SetupError::unsupported(
                    file.path.clone(),
                    file.doc.raw(),
                    at,
                    "config_path must be a string",
                ));
            };
            config_path = Some((value.to_string(), file.path.clone()));
        }
    }
    match config_path {
        Some((value, from)) if !value.trim().is_empty() => {
            Ok(from_config_path(tree, &value, &from))
        }
        _ if strictness == Strictness::Lenient => well_known(tree),
        _ => Err(no_config_path(&files[0], version, &registry_path, flavor)),
    }
}

fn flavor_of(path: &Path) -> Flavor {
    if path == Path::new(K3S_CONFIG) {
        Flavor::K3s
    } else if path.starts_with("/etc/cri") {
        Flavor::Talos
    } else {
        Flavor::Containerd
    }
}

fn detect_config(tree: &dyn Tree) -> (Option<PathBuf>, Flavor) {
    for (path, flavor) in [
        (DEFAULT_CONFIG, Flavor::Containerd),
        (K3S_CONFIG, Flavor::K3s),
        (TALOS_CONFIG, Flavor::Talos),
    ] {
        if tree.exists(Path::new(path)) {
            tracing::info!(containerd.config = path, flavor = ?flavor, "containerd config found");
            return (Some(PathBuf::from(path)), flavor);
        }
    }
    (None, Flavor::Containerd)
}

fn well_known(tree: &dyn Tree) -> Result<HostsDirs, SetupError> {
    for dir in [K3S_HOSTS_DIR, TALOS_HOSTS_DIR, DEFAULT_HOSTS_DIR] {
        if tree.is_dir(Path::new(dir)) {
            tracing::warn!(
                hosts.dir = dir,
                "no containerd config found; using the well-known hosts directory"
            );
            return Ok(HostsDirs::single(
                dir.into(),
                format!("well-known directory {dir} (no containerd config found)"),
            ));
        }
    }
    Err(SetupError::NoHostsDir {
        tried: [
            DEFAULT_CONFIG,
            K3S_CONFIG,
            TALOS_CONFIG,
            K3S_HOSTS_DIR,
            TALOS_HOSTS_DIR,
        ]
        .into_iter()
        .chain([DEFAULT_HOSTS_DIR])
        .collect::<Vec<_>>()
        .join(", "),
    })
}

fn from_config_path(tree: &dyn Tree, value: &str, from: &Path) -> HostsDirs {
    let roots: Vec<PathBuf> = value
        .split(':')
        .filter(|s| !s.trim().is_empty())
        .map(|s| PathBuf::from(s.trim()))
        .collect();
    let primary = roots
        .iter()
        .find(|r| tree.is_dir(r))
        .unwrap_or(&roots[0])
        .clone();
    if roots.len() > 1 {
        tracing::info!(
            config_path = value,
            hosts.dir = %primary.display(),
            "config_path lists several directories; using the first that exists for new registries"
        );
    }
    HostsDirs {
        source: format!("config_path = {value:?} in {}", from.display()),
        roots,
        primary,
    }
}

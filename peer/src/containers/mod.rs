//! Node setup for CRI-O and Podman: `shoal-peer containers configure | check | restore`.
//!
//! CRI-O and Podman (containers/image) read their mirrors from `containers-registries.conf`
//! (`/etc/containers/registries.conf`, then `/etc/containers/registries.conf.d/*.conf` in
//! lexical order). `configure` writes one drop-in, [`DROP_IN_NAME`], with a `[[registry]]`
//! per mirrored registry: a later drop-in entry with the same `prefix` replaces the earlier
//! one whole, so ours copies the entry in force (`location`, `insecure`, its mirrors;
//! `mirror-by-digest-only` as `pull-from-mirror = "digest-only"` on each of them) and puts
//! the Shoal mirror first.
//!
//! The mirror entry's location carries the registry as a namespace
//! (`127.0.0.1:7650/docker.io`), so CRI-O asks the mirror for `/v2/docker.io/<repo>/…`
//! and the peer knows the registry without containerd's `ns` parameter
//! ([`names::mirror_namespace`]). The peer's mirror is plain HTTP, so the entry says
//! `insecure = true`.
//!
//! Layout: [`plan`] (this file) is the pure core: it reads every file through a
//! [`Tree`], refuses conflicts, and computes the drop-in before anything is written;
//! `render.rs` writes the drop-in's text; `cli.rs` is the clap command. Writing, backups,
//! the manifest and restore are the containerd command's
//! ([`containerd::apply`](crate::containerd::apply)): the same guarantees,
//! the same code.
//!
//! Not here: `unqualified-search-registries`, short names and `[aliases]` (left as they
//! are: they decide which name is pulled, not from where), the user's
//! `$HOME/.config/containers` files, restarting anything (CRI-O and Podman read the files
//! on every pull).

pub mod cli;
mod render;

use std::path::{Path, PathBuf};

use crate::containerd::{
    DEFAULT_MIRROR_URL, DEFAULT_REGISTRIES, FileChange, SetupError, Tree, apply,
    validate_mirror_url, validate_registries,
};
use crate::registry::names::{self, Authority};
use crate::registry::registries_conf::{self, ConfEntry, ConfMirror, PullFromMirror};

pub use render::render;

/// The drop-in `configure` writes; it sorts after the usual drop-in names so that its
/// entries are the ones in force.
pub const DROP_IN_NAME: &str = "zz-shoal.conf";
/// containers/image's main file.
pub const DEFAULT_REGISTRIES_CONF: &str = "/etc/containers/registries.conf";
/// containers/image's drop-in directory.
pub const DEFAULT_DROP_IN_DIR: &str = "/etc/containers/registries.conf.d";
/// Where containers/image looks for a registry's certificates (`<dir>/<host:port>/`).
pub const DEFAULT_CERTS_DIR: &str = "/etc/containers/certs.d";

/// What to configure; built by the CLI from flags, by tests directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The main `registries.conf` (host path); a missing file counts as empty.
    pub registries_conf: PathBuf,
    /// The drop-in directory (host path); the drop-in and the manifest go here.
    pub drop_in_dir: PathBuf,
    /// The mirror, `http(s)://host[:port][/path]`.
    pub mirror_url: String,
    /// Registry hosts to mirror (`prefix` of each entry written).
    pub registries: Vec<String>,
    /// Whether tags are resolved through the mirror; `false` writes
    /// `pull-from-mirror = "digest-only"` on the mirror entry.
    pub resolve_tags: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            registries_conf: DEFAULT_REGISTRIES_CONF.into(),
            drop_in_dir: DEFAULT_DROP_IN_DIR.into(),
            mirror_url: DEFAULT_MIRROR_URL.into(),
            registries: DEFAULT_REGISTRIES.iter().map(|r| r.to_string()).collect(),
            resolve_tags: true,
        }
    }
}

/// The `[[registry]]` written for one registry: the entry in force before the drop-in,
/// with the Shoal mirror first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryEntry {
    /// The registry host (`prefix`).
    pub prefix: String,
    /// `location` copied from the entry in force; the registry itself when it had none.
    pub location: String,
    /// `insecure` copied.
    pub insecure: bool,
    /// Shoal's mirror, then the mirrors of the entry in force.
    pub mirrors: Vec<ConfMirror>,
    /// `FILE:LINE` of the entry copied, for the drop-in's comment; `None` when the
    /// registry had no entry.
    pub copied_from: Option<String>,
}

/// Everything configure would do, computed before the first write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The drop-in directory (where the manifest lives).
    pub drop_in_dir: PathBuf,
    /// The entries of the drop-in.
    pub entries: Vec<RegistryEntry>,
    /// The drop-in to write; empty when it already has this content.
    pub changes: Vec<FileChange>,
}

/// The drop-in's path in `dir`.
pub fn drop_in_path(dir: &Path) -> PathBuf {
    dir.join(DROP_IN_NAME)
}

/// Computes the drop-in configure writes on `tree`, or why it must not.
///
/// Every file involved is read and validated first; problems are reported together and
/// nothing is written when there is any. Refused: a registry that is `blocked`, and a
/// drop-in loaded after ours that sets the same prefix (it would replace our entry).
pub fn plan(tree: &dyn Tree, opts: &Options) -> Result<Plan, SetupError> {
    let mirror_url = validate_mirror_url(&opts.mirror_url)?;
    let registries = validate_registries(&opts.registries)?;
    for r in &registries {
        if names::mirror_namespace(r).is_none() {
            return Err(SetupError::InvalidRegistry {
                name: r.clone(),
                reason: "it must be a lower-case registry host such as docker.io or \
                         registry.example.com:5000 (not _default, not an IPv6 literal)",
            });
        }
    }
    if mirror_url.contains("://[") {
        // containers/image's reference grammar has no IPv6 literals: such a location
        // would make every pull fail with "invalid reference format".
        return Err(SetupError::InvalidMirrorUrl {
            url: opts.mirror_url.clone(),
            reason: "CRI-O and Podman cannot name a mirror by an IPv6 literal;                      use 127.0.0.1 or a host name (the mirror listens on 127.0.0.1:7650                      by default)",
        });
    }
    let (mirror_insecure, mirror_base) = match mirror_url.strip_prefix("http://") {
        Some(rest) => (true, rest.to_owned()),
        None => (false, mirror_url.trim_start_matches("https://").to_owned()),
    };
    let own = Authority::parse(&mirror_url);

    let mut errors = Vec::new();
    let mut before = Vec::new(); // files loaded before the drop-in, in order
    let mut after = Vec::new(); // drop-ins loaded after it
    match read_conf(tree, &opts.registries_conf) {
        Ok(entries) => before.push(entries),
        Err(e) => errors.push(e),
    }
    for name in tree.list(&opts.drop_in_dir)? {
        let path = opts.drop_in_dir.join(&name);
        if !name.ends_with(".conf") || name == DROP_IN_NAME || tree.is_dir(&path) {
            continue;
        }
        match read_conf(tree, &path) {
            Ok(entries) if name.as_str() < DROP_IN_NAME => before.push(entries),
            Ok(entries) => after.push(entries),
            Err(e) => errors.push(e),
        }
    }
    let in_force = registries_conf::effective(before);
    let later = registries_conf::effective(after);

    let mut entries = Vec::new();
    for registry in &registries {
        if let Some(e) = later.iter().find(|e| e.prefix == *registry) {
            errors.push(conflict(
                e,
                format!(
                    "sets [[registry]] prefix {registry:?} and is loaded after {DROP_IN_NAME}, \
                     so it would replace the Shoal mirror entry; merge it into a drop-in that \
                     sorts before {DROP_IN_NAME}, or leave {registry} out (--registry)"
                ),
            ));
            continue;
        }
        let base = registries_conf::entry_for(&in_force, registry);
        if let Some(b) = base.filter(|b| b.blocked) {
            errors.push(conflict(
                b,
                format!(
                    "registry {registry:?} is blocked here (blocked = true); Shoal does not \
                     unblock it: leave it out (--registry) or unblock it first"
                ),
            ));
            continue;
        }
        let ns = names::mirror_namespace(registry).expect("validated above");
        let mut mirrors = vec![ConfMirror {
            location: format!("{mirror_base}/{ns}"),
            insecure: mirror_insecure,
            pull_from_mirror: (!opts.resolve_tags).then_some(PullFromMirror::DigestOnly),
        }];
        let exact = base.filter(|b| b.prefix == *registry);
        if let Some(b) = base {
            // `mirror-by-digest-only` would hold for the Shoal mirror too, and
            // containers/image refuses it next to `pull-from-mirror`: it becomes
            // `pull-from-mirror = "digest-only"` on each copied mirror, the same rule.
            mirrors.extend(
                b.mirrors
                    .iter()
                    .filter(|m| own.is_none() || location_authority(&m.location) != own)
                    .map(|m| ConfMirror {
                        pull_from_mirror: if b.mirror_by_digest_only {
                            Some(PullFromMirror::DigestOnly)
                        } else {
                            m.pull_from_mirror
                        },
                        ..m.clone()
                    }),
            );
        }
        entries.push(RegistryEntry {
            prefix: registry.clone(),
            // containers/image requires a location for a prefix that is not a wildcard.
            location: exact
                .map(|b| b.location.clone())
                .filter(|l| !l.is_empty())
                .unwrap_or_else(|| registry.clone()),
            insecure: base.is_some_and(|b| b.insecure),
            mirrors,
            copied_from: base.map(|b| format!("{}:{}", b.file.display(), b.line)),
        });
    }
    if let Some(e) = SetupError::from_many(errors) {
        return Err(e);
    }
    let path = drop_in_path(&opts.drop_in_dir);
    let before = tree.read(&path)?;
    let after = render(&entries);
    let changes = if before.as_deref() == Some(after.as_str()) {
        Vec::new()
    } else {
        vec![FileChange {
            path,
            before,
            after,
        }]
    };
    Ok(Plan {
        drop_in_dir: opts.drop_in_dir.clone(),
        entries,
        changes,
    })
}

/// Writes `plan` (the drop-in, its backup if one existed, the manifest).
pub fn apply(fs: &crate::containerd::FsTree, plan: &Plan) -> Result<apply::Report, SetupError> {
    apply::apply_changes(fs, &plan.drop_in_dir, &plan.changes)
}

fn read_conf(tree: &dyn Tree, path: &Path) -> Result<Vec<ConfEntry>, SetupError> {
    match tree.read(path)? {
        None => Ok(Vec::new()),
        Some(text) => Ok(registries_conf::parse(&text, path)?),
    }
}

fn conflict(e: &ConfEntry, message: String) -> SetupError {
    SetupError::Unsupported {
        path: e.file.clone(),
        line: e.line,
        column: 1,
        message,
    }
}

/// The host and port of a `location` (`host[:port][/path]`), for recognising the Shoal
/// mirror among copied mirrors.
fn location_authority(location: &str) -> Option<Authority> {
    Authority::parse(registries_conf::split_location(location).0)
}

#[cfg(test)]
mod tests;

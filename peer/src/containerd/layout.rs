//! containerd's layouts: where each distribution keeps its config file and hosts
//! directory ([`Flavor`]), and where the registry table sits in each config version.
//! Pure data and lookups; shared by `config.rs` (finding the hosts directory) and
//! `refuse.rs` (wording the refusals), so neither depends on the other for them.

use toml_edit::{Item, TableLike};

/// containerd's default config file.
pub const DEFAULT_CONFIG: &str = "/etc/containerd/config.toml";
/// The config k3s generates for its embedded containerd (customised via `config.toml.tmpl`).
pub const K3S_CONFIG: &str = "/var/lib/rancher/k3s/agent/etc/containerd/config.toml";
/// Talos' CRI config.
pub const TALOS_CONFIG: &str = "/etc/cri/containerd.toml";
/// The usual hosts directory.
pub const DEFAULT_HOSTS_DIR: &str = "/etc/containerd/certs.d";
/// k3s' hosts directory.
pub const K3S_HOSTS_DIR: &str = "/var/lib/rancher/k3s/agent/etc/containerd/certs.d";
/// Talos' hosts directory.
pub const TALOS_HOSTS_DIR: &str = "/etc/cri/conf.d/hosts";

/// Which distribution's containerd layout is in use; only changes advice and defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// containerd installed on its own (kubeadm, EKS, …).
    Containerd,
    /// k3s / RKE2's embedded containerd.
    K3s,
    /// Talos Linux.
    Talos,
}

impl Flavor {
    /// The hosts directory this distribution uses by default.
    pub(crate) fn hosts_dir(self) -> &'static str {
        match self {
            Flavor::Containerd => DEFAULT_HOSTS_DIR,
            Flavor::K3s => K3S_HOSTS_DIR,
            Flavor::Talos => TALOS_HOSTS_DIR,
        }
    }

    /// Advice appended to a refusal: where this distribution wants the change made.
    pub(crate) fn hint(self) -> &'static str {
        match self {
            Flavor::Containerd => "",
            Flavor::K3s => {
                "\nOn k3s/RKE2 config.toml is generated at every start: put the change in \
                 config.toml.tmpl next to it (or let k3s write hosts.toml from \
                 /etc/rancher/k3s/registries.yaml), not in config.toml itself."
            }
            Flavor::Talos => {
                "\nOn Talos the CRI config is generated from the machine config: set registry \
                 mirrors with `machine.registries` (see docs/platforms/talos.md)."
            }
        }
    }
}

/// The path of the registry table (`…registry`, which holds `config_path`, `mirrors` and
/// `configs`) in a config of this `version`.
pub(crate) fn registry_table_path(version: i64) -> Vec<&'static str> {
    match version {
        ..=1 => vec!["plugins", "cri", "registry"],
        2 => vec!["plugins", "io.containerd.grpc.v1.cri", "registry"],
        _ => vec!["plugins", "io.containerd.cri.v1.images", "registry"],
    }
}

/// `key` in the table at `path` under `root`, if every table on the way exists.
pub(crate) fn lookup<'a>(root: &'a dyn TableLike, path: &[&str], key: &str) -> Option<&'a Item> {
    let mut table = root;
    for part in path {
        table = table.get(part)?.as_table_like()?;
    }
    table.get(key)
}

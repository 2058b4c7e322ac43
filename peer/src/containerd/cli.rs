//! `shoal-peer containerd configure | check | restore`: flags (each with a `SHOAL_*`
//! environment variable), exit codes, and what is printed. All decisions are in
//! [`plan`] and [`apply`].
//!
//! Exit codes: 0 success (for `check`: nothing to change), 1 `check` found changes to make,
//! 2 an error (printed on stderr; nothing was written unless it was an I/O error while
//! writing, which `restore` can undo).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgAction, Args, Subcommand};

use super::{
    DEFAULT_HOST, DEFAULT_MIRROR_URL, DEFAULT_REGISTRIES, FsTree, Options, SetupError, Strictness,
    apply, config, diff, plan,
};

/// `shoal-peer containerd …`: point containerd at the Shoal mirror, check, or undo.
#[derive(Debug, Args)]
pub struct ContainerdCommand {
    /// What to do.
    #[command(subcommand)]
    pub action: Action,
}

/// The three node setup actions.
#[derive(Debug, Subcommand)]
pub enum Action {
    /// Merge the mirror into every registry's hosts.toml (idempotent; backs up originals).
    Configure(SetupArgs),
    /// Print, without writing, the diff configure would apply; exit 0 when none, 1 when
    /// something would change, 2 on error.
    Check(SetupArgs),
    /// Put back every file configure changed and remove what it created.
    Restore(SetupArgs),
}

/// Flags shared by the three actions.
#[derive(Debug, Clone, Args)]
pub struct SetupArgs {
    /// The host's `/` as seen from here (e.g. `/host` in an init container); every other
    /// path flag is a host path placed under it.
    #[arg(long, env = "SHOAL_ROOT", default_value = "/")]
    pub root: PathBuf,
    /// containerd's config file [default: detect /etc/containerd/config.toml, then
    /// k3s' and Talos' configs].
    #[arg(long, env = "SHOAL_CONTAINERD_CONFIG", value_name = "FILE")]
    pub containerd_config: Option<PathBuf>,
    /// Directory of `<registry>/hosts.toml`; overrides what the containerd config says.
    #[arg(long, env = "SHOAL_HOSTS_DIR", value_name = "DIR")]
    pub hosts_dir: Option<PathBuf>,
    /// URL of the Shoal mirror containerd should try first.
    #[arg(long, env = "SHOAL_MIRROR_URL", default_value = DEFAULT_MIRROR_URL, value_name = "URL")]
    pub mirror_url: String,
    /// Registry to mirror (repeatable; comma separated in the env var) [default: docker.io,
    /// ghcr.io, quay.io, registry.k8s.io, gcr.io, public.ecr.aws, mcr.microsoft.com].
    #[arg(
        long = "registry",
        env = "SHOAL_REGISTRIES",
        value_delimiter = ',',
        value_name = "NAME"
    )]
    pub registries: Vec<String>,
    /// Do not configure `_default` (the entry containerd uses for every other registry).
    #[arg(long, env = "SHOAL_NO_DEFAULT_HOST")]
    pub no_default_host: bool,
    /// Resolve tags through the mirror too (`capabilities = ["pull", "resolve"]`); with
    /// `=false` only pulls by digest go through it.
    #[arg(
        long,
        env = "SHOAL_RESOLVE_TAGS",
        default_value_t = true,
        action = ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_name = "BOOL"
    )]
    pub resolve_tags: bool,
    /// Same as `--resolve-tags=false`.
    #[arg(long, conflicts_with = "resolve_tags")]
    pub no_resolve_tags: bool,
    /// containerd's dial timeout for the mirror (how long a dead mirror delays a pull);
    /// `none` writes no `dial_timeout`.
    #[arg(
        long,
        env = "SHOAL_DIAL_TIMEOUT",
        default_value = "1s",
        value_name = "DURATION"
    )]
    pub dial_timeout: String,
}

impl SetupArgs {
    /// The planner's options from the flags.
    pub fn options(&self) -> Options {
        let mut registries = if self.registries.is_empty() {
            DEFAULT_REGISTRIES.iter().map(|r| r.to_string()).collect()
        } else {
            self.registries.clone()
        };
        if self.no_default_host {
            registries.retain(|r| r != DEFAULT_HOST);
        } else if !registries.iter().any(|r| r == DEFAULT_HOST) {
            registries.push(DEFAULT_HOST.into());
        }
        Options {
            containerd_config: self.containerd_config.clone(),
            hosts_dir: self.hosts_dir.clone(),
            mirror_url: self.mirror_url.clone(),
            registries,
            resolve_tags: self.resolve_tags && !self.no_resolve_tags,
            dial_timeout: match self.dial_timeout.as_str() {
                "" | "none" => None,
                t => Some(t.to_string()),
            },
        }
    }
}

impl ContainerdCommand {
    /// Runs the action; errors are printed on stderr and turned into exit code 2.
    pub fn run(self) -> ExitCode {
        let result = match &self.action {
            Action::Configure(args) => configure(args).map(|()| ExitCode::SUCCESS),
            Action::Check(args) => check(args),
            Action::Restore(args) => restore(args).map(|()| ExitCode::SUCCESS),
        };
        result.unwrap_or_else(|e| {
            eprintln!("error: {e}");
            ExitCode::from(2)
        })
    }
}

fn configure(args: &SetupArgs) -> Result<(), SetupError> {
    let fs = FsTree::new(&args.root);
    let plan = plan(&fs, &args.options())?;
    tracing::info!(hosts.dir = %plan.hosts.primary.display(), source = %plan.hosts.source, "hosts directory chosen");
    if plan.changes.is_empty() {
        tracing::info!("containerd already points at the mirror; nothing to change");
        return Ok(());
    }
    let report = apply::apply(&fs, &plan)?;
    tracing::info!(
        files = report.written.len(),
        "configured; containerd picks hosts.toml up on its next pull"
    );
    Ok(())
}

fn check(args: &SetupArgs) -> Result<ExitCode, SetupError> {
    let fs = FsTree::new(&args.root);
    let plan = plan(&fs, &args.options())?;
    tracing::info!(hosts.dir = %plan.hosts.primary.display(), source = %plan.hosts.source, "hosts directory chosen");
    for change in &plan.changes {
        print!("{}", diff::unified(change));
    }
    Ok(if plan.changes.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn restore(args: &SetupArgs) -> Result<(), SetupError> {
    let fs = FsTree::new(&args.root);
    let hosts = config::find_hosts_dirs(
        &fs,
        args.containerd_config.as_deref(),
        args.hosts_dir.as_deref(),
        Strictness::Lenient,
    )?;
    // The manifest is in the directory that was primary when configure ran; with a
    // `:`-separated config_path that may no longer be the first existing one.
    let (mut restored, mut removed) = (0, 0);
    for root in &hosts.roots {
        let report = apply::restore(&fs, root)?;
        restored += report.written.len();
        removed += report.removed.len();
    }
    tracing::info!(restored, removed, "restore finished");
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Top {
        #[command(subcommand)]
        action: Action,
    }

    fn options(args: &[&str]) -> Options {
        let top = Top::try_parse_from([&["shoal-peer", "configure"][..], args].concat()).unwrap();
        match top.action {
            Action::Configure(a) | Action::Check(a) | Action::Restore(a) => a.options(),
        }
    }

    #[test]
    fn defaults_mirror_the_usual_registries_and_default() {
        let o = options(&[]);
        assert_eq!(o, Options::default());
        assert_eq!(o.registries.last().map(String::as_str), Some("_default"));
    }

    #[test]
    fn resolve_tags_can_be_turned_off_two_ways() {
        assert!(options(&["--resolve-tags"]).resolve_tags);
        assert!(!options(&["--resolve-tags=false"]).resolve_tags);
        assert!(!options(&["--no-resolve-tags"]).resolve_tags);
    }

    #[test]
    fn registries_default_host_and_dial_timeout() {
        let o = options(&["--registry", "a.io", "--registry", "b.io:5000"]);
        assert_eq!(o.registries, vec!["a.io", "b.io:5000", "_default"]);
        let o = options(&[
            "--registry",
            "a.io",
            "--no-default-host",
            "--dial-timeout",
            "none",
        ]);
        assert_eq!(o.registries, vec!["a.io"]);
        assert_eq!(o.dial_timeout, None);
    }
}

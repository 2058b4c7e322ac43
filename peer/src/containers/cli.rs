//! `shoal-peer containers configure | check | restore`: flags (each with a `SHOAL_*`
//! environment variable), exit codes and output, as for `shoal-peer containerd`: 0
//! success (for `check`: nothing to change), 1 `check` found changes to make, 2 an error
//! (printed on stderr; nothing was written unless it was an I/O error while writing,
//! which `restore` undoes). All decisions are in [`plan`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgAction, Args, Subcommand};

use super::{DEFAULT_DROP_IN_DIR, DEFAULT_REGISTRIES_CONF, Options, apply, plan};
use crate::containerd::{
    DEFAULT_MIRROR_URL, DEFAULT_REGISTRIES, FsTree, SetupError, apply as files, diff,
};

/// `shoal-peer containers …`: point CRI-O and Podman at the Shoal mirror, check, or undo.
#[derive(Debug, Args)]
pub struct ContainersCommand {
    /// What to do.
    #[command(subcommand)]
    pub action: Action,
}

/// The three node setup actions.
#[derive(Debug, Subcommand)]
pub enum Action {
    /// Write the registries.conf.d drop-in that puts the mirror first (idempotent).
    Configure(SetupArgs),
    /// Print, without writing, the diff configure would apply; exit 0 when none, 1 when
    /// something would change, 2 on error.
    Check(SetupArgs),
    /// Remove the drop-in (and put back anything configure replaced), byte for byte.
    Restore(SetupArgs),
}

/// Flags shared by the three actions.
#[derive(Debug, Clone, Args)]
pub struct SetupArgs {
    /// The host's `/` as seen from here (e.g. `/host` in an init container); every other
    /// path flag is a host path placed under it.
    #[arg(long, env = "SHOAL_ROOT", default_value = "/")]
    pub root: PathBuf,
    /// The main containers-registries.conf (a missing file counts as empty).
    #[arg(long, env = "SHOAL_REGISTRIES_CONF", default_value = DEFAULT_REGISTRIES_CONF, value_name = "FILE")]
    pub registries_conf: PathBuf,
    /// The registries.conf.d drop-in directory; the drop-in and configure's record of
    /// what it changed go here.
    #[arg(long, env = "SHOAL_REGISTRIES_CONF_DIR", default_value = DEFAULT_DROP_IN_DIR, value_name = "DIR")]
    pub registries_conf_dir: PathBuf,
    /// URL of the Shoal mirror CRI-O and Podman should try first.
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
    /// Resolve tags through the mirror too; with `=false` the mirror entry gets
    /// `pull-from-mirror = "digest-only"`.
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
}

impl SetupArgs {
    /// The planner's options from the flags.
    pub fn options(&self) -> Options {
        Options {
            registries_conf: self.registries_conf.clone(),
            drop_in_dir: self.registries_conf_dir.clone(),
            mirror_url: self.mirror_url.clone(),
            registries: if self.registries.is_empty() {
                DEFAULT_REGISTRIES.iter().map(|r| r.to_string()).collect()
            } else {
                self.registries.clone()
            },
            resolve_tags: self.resolve_tags && !self.no_resolve_tags,
        }
    }
}

impl ContainersCommand {
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
    if plan.changes.is_empty() {
        tracing::info!("CRI-O and Podman already point at the mirror; nothing to change");
        return Ok(());
    }
    let report = apply(&fs, &plan)?;
    tracing::info!(
        files = report.written.len(),
        registries = plan.entries.len(),
        "configured; CRI-O and Podman read it on their next pull"
    );
    Ok(())
}

fn check(args: &SetupArgs) -> Result<ExitCode, SetupError> {
    let fs = FsTree::new(&args.root);
    let plan = plan(&fs, &args.options())?;
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
    let report = files::restore(&fs, &args.registries_conf_dir)?;
    tracing::info!(
        restored = report.written.len(),
        removed = report.removed.len(),
        "restore finished"
    );
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
    fn defaults_are_the_system_files_and_the_usual_registries() {
        assert_eq!(options(&[]), Options::default());
        let o = options(&[
            "--registries-conf",
            "/r.conf",
            "--registries-conf-dir",
            "/r.d",
            "--registry",
            "a.io,b.io:5000",
            "--no-resolve-tags",
        ]);
        assert_eq!(o.registries, vec!["a.io", "b.io:5000"]);
        assert_eq!(o.drop_in_dir, PathBuf::from("/r.d"));
        assert!(!o.resolve_tags);
    }
}

//! The I/O shell of node setup: writes a [`Plan`] to disk and undoes it.
//!
//! - Every write is atomic: a temp file in the same directory, fsync, rename, fsync of the
//!   directory; the mode and owner of the file it replaces are kept.
//! - Before a file is first modified, its original is copied once to
//!   `<file>.shoal-backup`; a later run never overwrites that copy.
//! - `<hosts-dir>/.shoal-configure.json` (the manifest) records the backups and every file
//!   and directory configure created, and is written *before* the files it describes, so
//!   an interrupted run can still be restored.
//!
//! Deciding what to write is not here: see [`plan`](super::plan).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{FileChange, FsTree, Plan, SetupError, Tree};

/// File name of the manifest inside the primary hosts directory.
pub const MANIFEST_NAME: &str = ".shoal-configure.json";
/// Suffix of the one backup kept of each file configure modified.
pub const BACKUP_SUFFIX: &str = ".shoal-backup";

/// What configure did and restore undoes. Paths are host paths.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Format version, 1.
    pub version: u32,
    /// Files that did not exist before configure.
    pub created_files: BTreeSet<PathBuf>,
    /// Directories that did not exist before configure, parents first.
    pub created_dirs: Vec<PathBuf>,
    /// Modified file → its backup of the original.
    pub backups: BTreeMap<PathBuf, PathBuf>,
}

/// What [`apply`] or [`restore`] touched, for the log and the tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Files written (configure) or put back (restore).
    pub written: Vec<PathBuf>,
    /// Files and directories removed (restore).
    pub removed: Vec<PathBuf>,
}

fn write_err(path: &Path) -> impl FnOnce(io::Error) -> SetupError + '_ {
    move |source| SetupError::Write {
        path: path.to_path_buf(),
        source,
    }
}

fn manifest_path(primary: &Path) -> PathBuf {
    primary.join(MANIFEST_NAME)
}

/// Reads the manifest in `primary`, `None` when there is none.
pub fn read_manifest(fs: &FsTree, primary: &Path) -> Result<Option<Manifest>, SetupError> {
    let path = manifest_path(primary);
    let Some(text) = fs.read(&path)? else {
        return Ok(None);
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| SetupError::Manifest {
            path,
            message: format!(
                "unreadable record of what configure changed ({e}); restore cannot run from it: \
                 fix it, or put the *.shoal-backup files back by hand"
            ),
        })
}

/// Writes `plan` to disk: directories, manifest, backups, then the files.
pub fn apply(fs: &FsTree, plan: &Plan) -> Result<Report, SetupError> {
    apply_changes(fs, &plan.hosts.primary, &plan.changes)
}

/// Writes `changes` to disk with the manifest in `primary`: directories, manifest,
/// backups, then the files. Shared by every node setup command (`containerd`,
/// `containers`): each decides what to write, this writes it and [`restore`] undoes it.
pub fn apply_changes(
    fs: &FsTree,
    primary: &Path,
    changes: &[FileChange],
) -> Result<Report, SetupError> {
    let mut report = Report::default();
    if changes.is_empty() {
        return Ok(report);
    }
    let mut manifest = read_manifest(fs, primary)?.unwrap_or(Manifest {
        version: 1,
        ..Manifest::default()
    });

    // Directories to create, parents first.
    let mut new_dirs: Vec<PathBuf> = Vec::new();
    let parents = std::iter::once(primary).chain(changes.iter().filter_map(|c| c.path.parent()));
    for dir in parents {
        let mut missing: Vec<PathBuf> = dir
            .ancestors()
            .take_while(|a| !fs.exists(a))
            .map(Path::to_path_buf)
            .collect();
        missing.reverse();
        for d in missing {
            if !new_dirs.contains(&d) {
                new_dirs.push(d);
            }
        }
    }

    let mut new_backups = Vec::new();
    for change in changes {
        if change.before.is_none() {
            manifest.created_files.insert(change.path.clone());
        } else if !manifest.created_files.contains(&change.path)
            && !manifest.backups.contains_key(&change.path)
        {
            let backup = backup_path(&change.path);
            if !fs.exists(&backup) {
                new_backups.push((change.path.clone(), backup.clone()));
            }
            manifest.backups.insert(change.path.clone(), backup);
        }
    }

    for dir in &new_dirs {
        fs::create_dir(fs.real(dir)).map_err(write_err(dir))?;
        manifest.created_dirs.push(dir.clone());
    }
    let json = serde_json::to_string_pretty(&manifest).expect("manifest serialises") + "\n";
    let mpath = manifest_path(primary);
    write_atomic(&fs.real(&mpath), json.as_bytes(), None).map_err(write_err(&mpath))?;

    for (original, backup) in &new_backups {
        let real = through_links(fs, original);
        let bytes = fs::read(&real).map_err(|source| SetupError::Read {
            path: original.clone(),
            source,
        })?;
        write_atomic(&fs.real(backup), &bytes, fs::metadata(&real).ok())
            .map_err(write_err(backup))?;
    }
    for change in changes {
        let real = through_links(fs, &change.path);
        let meta = fs::metadata(&real).ok();
        write_atomic(&real, change.after.as_bytes(), meta).map_err(write_err(&change.path))?;
        tracing::info!(file = %change.path.display(), created = change.before.is_none(), "file written");
        report.written.push(change.path.clone());
    }
    Ok(report)
}

/// `<file>.shoal-backup`.
pub fn backup_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(BACKUP_SUFFIX);
    path.with_file_name(name)
}

/// Puts back every file configure changed in `primary`'s manifest, byte for byte, and
/// removes what it created. Does nothing when there is no manifest.
pub fn restore(fs: &FsTree, primary: &Path) -> Result<Report, SetupError> {
    let mut report = Report::default();
    let Some(manifest) = read_manifest(fs, primary)? else {
        tracing::info!(hosts.dir = %primary.display(), "no configure manifest; nothing to restore");
        return Ok(report);
    };
    // Check every backup first: a missing one must not leave the node half restored.
    for (original, backup) in &manifest.backups {
        if !fs.exists(backup) {
            return Err(SetupError::Manifest {
                path: manifest_path(primary),
                message: format!(
                    "the backup {} of {} is missing, so the original cannot be put back; \
                     nothing was restored",
                    backup.display(),
                    original.display()
                ),
            });
        }
    }
    for (original, backup) in &manifest.backups {
        let real_backup = fs.real(backup);
        let bytes = fs::read(&real_backup).map_err(|source| SetupError::Read {
            path: backup.clone(),
            source,
        })?;
        write_atomic(
            &through_links(fs, original),
            &bytes,
            fs::metadata(&real_backup).ok(),
        )
        .map_err(write_err(original))?;
        fs::remove_file(&real_backup).map_err(write_err(backup))?;
        tracing::info!(file = %original.display(), "original restored");
        report.written.push(original.clone());
    }
    for file in &manifest.created_files {
        match fs::remove_file(fs.real(file)) {
            Ok(()) => report.removed.push(file.clone()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(write_err(file)(e)),
        }
    }
    let mpath = manifest_path(primary);
    fs::remove_file(fs.real(&mpath)).map_err(write_err(&mpath))?;
    for dir in manifest.created_dirs.iter().rev() {
        match fs::remove_dir(fs.real(dir)) {
            Ok(()) => report.removed.push(dir.clone()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(_) => {
                tracing::warn!(dir = %dir.display(), "directory created by configure is not empty; left in place");
            }
        }
    }
    Ok(report)
}

/// Where the bytes of host path `path` live: a `hosts.toml` that is a symlink (config
/// management does that) is written through, so the link itself stays.
fn through_links(fs: &FsTree, path: &Path) -> PathBuf {
    let mut real = fs.real(path);
    for _ in 0..8 {
        let Ok(link) = fs::read_link(&real) else {
            break;
        };
        real = if link.is_absolute() {
            fs.real(&link)
        } else {
            real.parent().unwrap_or(Path::new("/")).join(link)
        };
    }
    real
}

/// Replaces `path` with `bytes` atomically, giving the new file `like`'s mode and owner.
fn write_atomic(path: &Path, bytes: &[u8], like: Option<fs::Metadata>) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.shoal-tmp-{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let result = (|| {
        let mut file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        file.write_all(bytes)?;
        if let Some(meta) = &like {
            file.set_permissions(fs::Permissions::from_mode(meta.mode() & 0o7777))?;
            // Only root can give a file away; elsewhere the file stays ours.
            let _ = std::os::unix::fs::fchown(&file, Some(meta.uid()), Some(meta.gid()));
        }
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

//! `Tree`: the read-only view of the node's file system that the planner works on, with
//! the real one (`FsTree`, rooted at `--root`) and an in-memory twin (`MemTree`).
//!
//! Paths given to a `Tree` are absolute paths as the host sees them
//! (`/etc/containerd/config.toml`); `FsTree` puts them under its root, so an init
//! container that mounts the host at `/host` passes `--root /host`. Writing is not here:
//! see `apply.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Component, Path, PathBuf};

use super::SetupError;

/// Read access to a file tree. Implemented by [`FsTree`] and [`MemTree`].
pub trait Tree {
    /// The content of a file, `None` when it does not exist. Not UTF-8 is an error.
    fn read(&self, path: &Path) -> Result<Option<String>, SetupError>;
    /// Whether `path` is an existing directory.
    fn is_dir(&self, path: &Path) -> bool;
    /// Whether `path` exists (file, directory or anything else).
    fn exists(&self, path: &Path) -> bool;
    /// Names of the entries of directory `dir`, sorted; empty when it does not exist.
    fn list(&self, dir: &Path) -> Result<Vec<String>, SetupError>;
}

/// The real file system, with host paths placed under `root`.
#[derive(Debug, Clone)]
pub struct FsTree {
    root: PathBuf,
}

impl FsTree {
    /// A tree whose `/` is `root` on this machine.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        FsTree { root: root.into() }
    }

    /// Where host path `path` is on this machine.
    pub fn real(&self, path: &Path) -> PathBuf {
        // `..` never climbs above the root.
        let mut out = self.root.clone();
        let mut depth = 0usize;
        for c in path.components() {
            match c {
                Component::Normal(n) => {
                    out.push(n);
                    depth += 1;
                }
                Component::ParentDir if depth > 0 => {
                    out.pop();
                    depth -= 1;
                }
                Component::ParentDir => {}
                Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            }
        }
        out
    }
}

impl Tree for FsTree {
    fn read(&self, path: &Path) -> Result<Option<String>, SetupError> {
        match std::fs::read(self.real(path)) {
            Ok(bytes) => String::from_utf8(bytes)
                .map(Some)
                .map_err(|_| SetupError::Read {
                    path: path.to_path_buf(),
                    source: io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"),
                }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(SetupError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    fn is_dir(&self, path: &Path) -> bool {
        self.real(path).is_dir()
    }

    fn exists(&self, path: &Path) -> bool {
        self.real(path).symlink_metadata().is_ok()
    }

    fn list(&self, dir: &Path) -> Result<Vec<String>, SetupError> {
        let entries = match std::fs::read_dir(self.real(dir)) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(SetupError::Read {
                    path: dir.to_path_buf(),
                    source,
                });
            }
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| SetupError::Read {
                path: dir.to_path_buf(),
                source,
            })?;
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }
}

/// An in-memory tree for unit tests: files with their contents and extra empty
/// directories. Parents of files exist implicitly.
#[derive(Debug, Clone, Default)]
pub struct MemTree {
    files: BTreeMap<PathBuf, String>,
    dirs: BTreeSet<PathBuf>,
}

impl MemTree {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a file.
    pub fn file(mut self, path: impl Into<PathBuf>, content: impl Into<String>) -> Self {
        self.files.insert(path.into(), content.into());
        self
    }

    /// Adds an empty directory.
    pub fn dir(mut self, path: impl Into<PathBuf>) -> Self {
        self.dirs.insert(path.into());
        self
    }
}

impl Tree for MemTree {
    fn read(&self, path: &Path) -> Result<Option<String>, SetupError> {
        Ok(self.files.get(path).cloned())
    }

    fn is_dir(&self, path: &Path) -> bool {
        self.dirs.iter().any(|d| d.starts_with(path))
            || self
                .files
                .keys()
                .any(|f| f.starts_with(path) && f.as_path() != path)
    }

    fn exists(&self, path: &Path) -> bool {
        self.files.contains_key(path) || self.is_dir(path)
    }

    fn list(&self, dir: &Path) -> Result<Vec<String>, SetupError> {
        let all = self.files.keys().chain(self.dirs.iter());
        let names: BTreeSet<String> = all
            .filter_map(|p| p.strip_prefix(dir).ok())
            .filter_map(|rest| rest.components().next())
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        Ok(names.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fs_tree_places_host_paths_under_root() {
        let t = FsTree::new("/host");
        assert_eq!(
            t.real(Path::new("/etc/containerd/certs.d")),
            PathBuf::from("/host/etc/containerd/certs.d")
        );
        assert_eq!(t.real(Path::new("/../etc")), PathBuf::from("/host/etc"));
    }

    #[test]
    fn mem_tree_lists_children_once() {
        let t = MemTree::new()
            .file("/d/a/hosts.toml", "")
            .file("/d/b.crt", "")
            .dir("/d/c");
        assert_eq!(t.list(Path::new("/d")).unwrap(), vec!["a", "b.crt", "c"]);
        assert!(t.is_dir(Path::new("/d/a")));
        assert!(!t.is_dir(Path::new("/d/b.crt")));
        assert!(!t.is_dir(Path::new("/e")));
    }
}

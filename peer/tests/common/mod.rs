//! Shared by the peer's tests: for node setup, fixture trees copied to a temp dir,
//! snapshots of a tree (every file's bytes and every directory), and running the built
//! `shoal-peer`; for the engine, an upstream reached through the real registry client.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use shoal_peer::engine::Upstream;
use shoal_peer::registry::{Registries, RegistriesConfig};

/// The blobs of `repo` at `url` (`http://127.0.0.1:PORT`, e.g. a `CountingUpstream`) as
/// the engine fetches them: the registry client with `url` as its default upstream and
/// no `hosts.toml`.
pub(crate) fn blob_upstream(url: &str, repo: &str) -> Arc<dyn Upstream> {
    let mut config = RegistriesConfig::new("/nonexistent/shoal-test-hosts".into());
    config.default_upstream = Some(url.to_owned());
    let client = Registries::new(config)
        .resolve_blocking(None)
        .expect("a default upstream resolves");
    Arc::new(client.blob_upstream(repo.to_owned(), None))
}

/// Where the fixture trees are.
pub(crate) const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/containerd");

/// One entry of a tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Entry {
    /// A directory.
    Dir,
    /// A file and its bytes (shown as text when it is text).
    File(String),
}

/// Every path under `root` (relative, `/`-separated) with what is there.
pub(crate) fn snapshot(root: &Path) -> BTreeMap<String, Entry> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Entry>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        let rel = path
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if path.is_dir() {
            out.insert(rel, Entry::Dir);
            walk(root, &path, out);
        } else {
            let bytes = std::fs::read(&path).unwrap();
            let text = String::from_utf8(bytes).expect("fixture files are text");
            out.insert(rel, Entry::File(text));
        }
    }
}

/// Copies the tree `from` into `to` (created).
pub(crate) fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for (rel, entry) in snapshot(from) {
        match entry {
            Entry::Dir => std::fs::create_dir_all(to.join(rel)).unwrap(),
            Entry::File(text) => std::fs::write(to.join(rel), text).unwrap(),
        }
    }
}

/// A fixture copied to a temp dir that plays the host's `/`.
pub(crate) struct Case {
    /// Keeps the temp dir alive.
    pub(crate) tmp: tempfile::TempDir,
    /// The host's `/`.
    pub(crate) root: PathBuf,
    /// The fixture's name.
    pub(crate) name: String,
}

impl Case {
    /// Copies `fixtures/containerd/<name>/before`.
    pub(crate) fn new(name: &str) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        copy_tree(&Path::new(FIXTURES).join(name).join("before"), &root);
        Case {
            tmp,
            root,
            name: name.to_string(),
        }
    }

    /// The fixture's `before` tree.
    pub(crate) fn before(&self) -> BTreeMap<String, Entry> {
        snapshot(&Path::new(FIXTURES).join(&self.name).join("before"))
    }

    /// The tree as it is now.
    pub(crate) fn now(&self) -> BTreeMap<String, Entry> {
        snapshot(&self.root)
    }

    /// Runs `shoal-peer containerd ACTION --root ROOT ARGS…`.
    pub(crate) fn run(&self, action: &str, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_shoal-peer"))
            .args(["containerd", action, "--root"])
            .arg(&self.root)
            .args(args)
            .env("SHOAL_LOG", "warn")
            .env_remove("SHOAL_HOSTS_DIR")
            .env_remove("SHOAL_CONTAINERD_CONFIG")
            .env_remove("SHOAL_REGISTRIES")
            .output()
            .unwrap()
    }

    /// The expected tree after configure: `fixtures/containerd/<name>/after`. With
    /// `SHOAL_BLESS=1` it is (re)written from the current tree first, to be reviewed.
    pub(crate) fn expected_after(&self) -> BTreeMap<String, Entry> {
        let dir = Path::new(FIXTURES).join(&self.name).join("after");
        if std::env::var("SHOAL_BLESS").as_deref() == Ok("1") {
            let _ = std::fs::remove_dir_all(&dir);
            copy_tree(&self.root, &dir);
        }
        snapshot(&dir)
    }
}

/// stdout and stderr of `out` as text.
pub(crate) fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Asserts two trees are equal, showing the first difference readably.
pub(crate) fn assert_same_tree(
    actual: &BTreeMap<String, Entry>,
    expected: &BTreeMap<String, Entry>,
) {
    for (path, entry) in expected {
        match actual.get(path) {
            None => panic!("missing {path}"),
            Some(a) if a != entry => {
                panic!("{path} differs:\n--- actual\n{a:?}\n--- expected\n{entry:?}")
            }
            Some(_) => {}
        }
    }
    for path in actual.keys() {
        assert!(expected.contains_key(path), "unexpected {path}");
    }
}

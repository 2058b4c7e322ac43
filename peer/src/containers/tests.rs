//! Unit tests of the containers planner on in-memory trees (merge, refusals, idempotence)
//! and of configure + restore on a real directory (byte-exact).

use std::path::Path;

use super::*;
use crate::containerd::{FsTree, MemTree};

const CONF: &str = "/etc/containers/registries.conf";
const DIR: &str = "/etc/containers/registries.conf.d";
const DROP_IN: &str = "/etc/containers/registries.conf.d/zz-shoal.conf";

fn opts(registries: &[&str]) -> Options {
    Options {
        registries: registries.iter().map(|r| r.to_string()).collect(),
        ..Options::default()
    }
}

fn drop_in(tree: &MemTree, registries: &[&str]) -> String {
    let plan = plan(tree, &opts(registries)).unwrap();
    assert_eq!(plan.changes.len(), 1, "{:?}", plan.changes);
    assert_eq!(plan.changes[0].path, Path::new(DROP_IN));
    plan.changes[0].after.clone()
}

/// The drop-in parsed back, as containers/image would load it after the other files.
fn in_force(tree: &MemTree, text: &str) -> Vec<ConfEntry> {
    let main = tree
        .read(Path::new(CONF))
        .unwrap()
        .map(|t| registries_conf::parse(&t, Path::new(CONF)).unwrap())
        .unwrap_or_default();
    let ours = registries_conf::parse(text, Path::new(DROP_IN)).unwrap();
    registries_conf::effective([main, ours])
}

#[test]
fn a_registry_without_an_entry_gets_the_mirror_and_its_implicit_location() {
    let tree = MemTree::new().file(CONF, "unqualified-search-registries = [\"docker.io\"]\n");
    let text = drop_in(&tree, &["docker.io", "127.0.0.1:5000"]);
    let e = in_force(&tree, &text);
    assert_eq!(e.len(), 2);
    assert_eq!(e[0].prefix, "docker.io");
    assert_eq!(e[0].location_or_prefix(), "docker.io");
    assert_eq!(
        e[0].mirrors,
        vec![ConfMirror {
            location: "127.0.0.1:7650/docker.io".into(),
            insecure: true,
            pull_from_mirror: None,
        }]
    );
    assert_eq!(e[1].mirrors[0].location, "127.0.0.1:7650/127.0.0.1__5000");
    // Nothing but [[registry]] tables: search and short-name settings stay the main file's.
    assert!(!text.contains("unqualified"), "{text}");
}

#[test]
fn the_entry_in_force_is_copied_whole_behind_the_mirror() {
    let tree = MemTree::new()
        .file(
            CONF,
            "[[registry]]\nprefix = \"quay.io\"\nlocation = \"quay.internal:8443/quay\"\ninsecure = true\n\
             [[registry.mirror]]\nlocation = \"m1.example/quay\"\npull-from-mirror = \"digest-only\"\n",
        )
        // An earlier drop-in replaces the main file's entry for quay.io whole.
        .file(
            "/etc/containers/registries.conf.d/50-site.conf",
            "[[registry]]\nprefix = \"quay.io\"\nlocation = \"quay.site\"\nmirror-by-digest-only = true\n\
             [[registry.mirror]]\nlocation = \"m2.example\"\ninsecure = true\n",
        )
        .file(
            "/etc/containers/registries.conf.d/shortnames.conf",
            "[aliases]\n\"nginx\" = \"docker.io/library/nginx\"\n",
        );
    let text = drop_in(&tree, &["quay.io"]);
    assert!(
        text.contains("# copied from /etc/containers/registries.conf.d/50-site.conf:1\n"),
        "{text}"
    );
    let e = registries_conf::parse(&text, Path::new(DROP_IN)).unwrap();
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].location, "quay.site");
    // mirror-by-digest-only became digest-only on the copied mirror, not on Shoal's.
    assert!(!e[0].insecure && !e[0].mirror_by_digest_only);
    assert_eq!(e[0].mirrors[0].pull_from_mirror, None);
    assert_eq!(
        e[0].mirrors[1].pull_from_mirror,
        Some(PullFromMirror::DigestOnly)
    );
    let locations: Vec<&str> = e[0].mirrors.iter().map(|m| m.location.as_str()).collect();
    assert_eq!(locations, ["127.0.0.1:7650/quay.io", "m2.example"]);
    assert!(e[0].mirrors[1].insecure);
}

#[test]
fn wildcard_entries_and_version_1_lists_are_followed() {
    let tree = MemTree::new().file(
        CONF,
        "[registries.insecure]\nregistries = [\"r.local:5000\"]\n",
    );
    let e = in_force(&tree, &drop_in(&tree, &["r.local:5000"]));
    assert!(e[0].insecure && e[0].location_or_prefix() == "r.local:5000");

    let tree = MemTree::new().file(
        CONF,
        "[[registry]]\nprefix = \"*.corp.example\"\ninsecure = true\n[[registry.mirror]]\nlocation = \"cache.corp.example\"\n",
    );
    let text = drop_in(&tree, &["r.corp.example"]);
    let e = registries_conf::parse(&text, Path::new(DROP_IN)).unwrap();
    assert_eq!(e[0].prefix, "r.corp.example");
    assert_eq!(
        e[0].location, "r.corp.example",
        "a wildcard entry has no location to copy"
    );
    assert!(e[0].insecure);
    assert_eq!(e[0].mirrors[1].location, "cache.corp.example");
}

#[test]
fn configure_is_idempotent_and_never_copies_its_own_mirror() {
    let tree = MemTree::new().file(
        CONF,
        "[[registry]]\nprefix = \"docker.io\"\nlocation = \"docker.io\"\n[[registry.mirror]]\nlocation = \"localhost:7650/docker.io\"\n",
    );
    let text = drop_in(&tree, &["docker.io"]);
    assert_eq!(text.matches("[[registry.mirror]]").count(), 1, "{text}");
    let tree = tree.file(DROP_IN, text);
    let again = plan(&tree, &opts(&["docker.io"])).unwrap();
    assert!(again.changes.is_empty(), "{:?}", again.changes);
}

#[test]
fn digest_only_and_https_mirrors() {
    let tree = MemTree::new();
    let o = Options {
        resolve_tags: false,
        mirror_url: "https://shoal.local:7650/".into(),
        ..opts(&["ghcr.io"])
    };
    let text = plan(&tree, &o).unwrap().changes[0].after.clone();
    let e = registries_conf::parse(&text, Path::new(DROP_IN)).unwrap();
    assert_eq!(
        e[0].mirrors[0],
        ConfMirror {
            location: "shoal.local:7650/ghcr.io".into(),
            insecure: false,
            pull_from_mirror: Some(PullFromMirror::DigestOnly),
        }
    );
}

#[test]
fn conflicts_are_refused_together_with_file_and_line() {
    let tree = MemTree::new()
        .file(
            CONF,
            "# site policy\n[[registry]]\nlocation = \"quay.io\"\nblocked = true\n",
        )
        .file(
            "/etc/containers/registries.conf.d/zzz-late.conf",
            "\n[[registry]]\nprefix = \"docker.io\"\nlocation = \"other\"\n",
        );
    let err = plan(&tree, &opts(&["docker.io", "quay.io", "ghcr.io"])).unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("2 problems found, nothing was written"),
        "{text}"
    );
    assert!(
        text.contains("/etc/containers/registries.conf.d/zzz-late.conf:2:1: sets [[registry]] prefix \"docker.io\""),
        "{text}"
    );
    assert!(
        text.contains("/etc/containers/registries.conf:2:1: registry \"quay.io\" is blocked"),
        "{text}"
    );
}

#[test]
fn malformed_files_and_bad_flags_name_the_problem() {
    let tree = MemTree::new().file(
        "/etc/containers/registries.conf.d/01-a.conf",
        "[[registry]\n",
    );
    let err = plan(&tree, &opts(&["docker.io"])).unwrap_err().to_string();
    assert!(
        err.starts_with("/etc/containers/registries.conf.d/01-a.conf:1:")
            && err.contains("malformed TOML"),
        "{err}"
    );
    // Files that are not *.conf are not loaded by containers/image, nor read here.
    let tree = MemTree::new().file("/etc/containers/registries.conf.d/notes.txt", "[[x");
    assert!(plan(&tree, &opts(&["docker.io"])).is_ok());
    let o = Options {
        mirror_url: "http://[::1]:7650".into(),
        ..opts(&["docker.io"])
    };
    let err = plan(&MemTree::new(), &o).unwrap_err().to_string();
    assert!(err.contains("IPv6 literal"), "{err}");
    for bad in ["_default", "[::1]:5000", "Docker.io"] {
        let err = plan(&MemTree::new(), &opts(&[bad])).unwrap_err();
        assert!(
            matches!(err, SetupError::InvalidRegistry { .. }),
            "{bad}: {err}"
        );
    }
}

#[test]
fn configure_then_restore_is_byte_exact_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let conf = root.join("etc/containers/registries.conf");
    std::fs::create_dir_all(conf.parent().unwrap()).unwrap();
    std::fs::write(&conf, "[[registry]]\nlocation = \"docker.io\"\n").unwrap();
    let fs = FsTree::new(root);
    let o = opts(&["docker.io"]);

    // No drop-in directory yet: configure creates it, restore removes it.
    let p = plan(&fs, &o).unwrap();
    apply(&fs, &p).unwrap();
    assert!(
        root.join("etc/containers/registries.conf.d/zz-shoal.conf")
            .is_file()
    );
    assert!(plan(&fs, &o).unwrap().changes.is_empty());
    crate::containerd::apply::restore(&fs, Path::new(DIR)).unwrap();
    assert!(!root.join("etc/containers/registries.conf.d").exists());
    assert_eq!(
        std::fs::read_to_string(&conf).unwrap(),
        "[[registry]]\nlocation = \"docker.io\"\n"
    );

    // A drop-in of the same name that was there before is backed up and put back.
    let d = root.join("etc/containers/registries.conf.d");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("zz-shoal.conf"), "# hand-made\r\n").unwrap();
    let p = plan(&fs, &o).unwrap();
    apply(&fs, &p).unwrap();
    assert_ne!(
        std::fs::read(d.join("zz-shoal.conf")).unwrap(),
        b"# hand-made\r\n"
    );
    crate::containerd::apply::restore(&fs, Path::new(DIR)).unwrap();
    assert_eq!(
        std::fs::read(d.join("zz-shoal.conf")).unwrap(),
        b"# hand-made\r\n"
    );
    let mut left: Vec<String> = std::fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["zz-shoal.conf"]);
}

//! `shoal-peer containers configure | check | restore`, the built binary on a temp tree
//! standing in for a CRI-O node's `/etc/containers` (`--root`): the round trip with its
//! exit codes and diff, and refusals that leave every byte as it was.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{assert_same_tree, snapshot, text};

const MAIN: &str = "unqualified-search-registries = [\"docker.io\", \"quay.io\"]\n\n\
[[registry]]\nprefix = \"quay.io\"\nlocation = \"quay.io\"\n\n[[registry.mirror]]\nlocation = \"cache.corp.example/quay\"\n";

fn run(root: &Path, action: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shoal-peer"))
        .args(["containers", action, "--root"])
        .arg(root)
        .args(args)
        .env("SHOAL_LOG", "warn")
        .env_remove("SHOAL_REGISTRIES")
        .env_remove("SHOAL_REGISTRIES_CONF")
        .env_remove("SHOAL_REGISTRIES_CONF_DIR")
        .output()
        .unwrap()
}

fn node(drop_ins: &[(&str, &str)]) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let etc = tmp.path().join("etc/containers");
    std::fs::create_dir_all(etc.join("registries.conf.d")).unwrap();
    std::fs::write(etc.join("registries.conf"), MAIN).unwrap();
    for (name, text) in drop_ins {
        std::fs::write(etc.join("registries.conf.d").join(name), text).unwrap();
    }
    tmp
}

#[test]
fn round_trip_with_check_and_byte_exact_restore() {
    let tmp = node(&[(
        "shortnames.conf",
        "[aliases]\n  \"busybox\" = \"docker.io/library/busybox\"\n",
    )]);
    let root = tmp.path();
    let before = snapshot(root);
    let args = ["--registry", "docker.io,quay.io"];

    let out = run(root, "check", &args);
    let (diff, err) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        diff.starts_with("--- /dev/null\n+++ b/etc/containers/registries.conf.d/zz-shoal.conf\n"),
        "{diff}"
    );
    for line in [
        "+location = \"127.0.0.1:7650/docker.io\"\n",
        "+location = \"127.0.0.1:7650/quay.io\"\n",
        "+location = \"cache.corp.example/quay\"\n",
    ] {
        assert!(diff.contains(line), "{line} in\n{diff}");
    }
    assert_same_tree(&snapshot(root), &before);

    let out = run(root, "configure", &args);
    assert!(out.status.success(), "{}", text(&out).1);
    let configured = snapshot(root);
    let out = run(root, "configure", &args);
    assert!(out.status.success(), "{}", text(&out).1);
    assert_same_tree(&snapshot(root), &configured);
    let out = run(root, "check", &args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out).1);
    assert!(out.stdout.is_empty());

    let out = run(root, "restore", &args);
    assert!(out.status.success(), "{}", text(&out).1);
    assert_same_tree(&snapshot(root), &before);
    let out = run(root, "restore", &args);
    assert!(out.status.success(), "restore again: {}", text(&out).1);
    assert_same_tree(&snapshot(root), &before);
}

#[test]
fn conflicts_are_refused_with_file_and_line_and_nothing_is_written() {
    let tmp = node(&[
        (
            "50-block.conf",
            "# security team\n[[registry]]\nlocation = \"ghcr.io\"\nblocked = true\n",
        ),
        (
            "zzz-local.conf",
            "[[registry]]\nprefix = \"docker.io\"\nlocation = \"hub.corp.example\"\n",
        ),
        ("zzzz-broken.conf", "[[registry]\n"),
    ]);
    let root = tmp.path();
    let before = snapshot(root);
    for action in ["check", "configure"] {
        let out = run(root, action, &["--registry", "docker.io,ghcr.io,quay.io"]);
        let (_, err) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{action}: {err}");
        assert!(
            err.contains("3 problems found, nothing was written"),
            "{err}"
        );
        assert!(
            err.contains("/etc/containers/registries.conf.d/50-block.conf:2:1: registry \"ghcr.io\" is blocked"),
            "{err}"
        );
        assert!(
            err.contains("/etc/containers/registries.conf.d/zzz-local.conf:1:1: sets [[registry]] prefix \"docker.io\""),
            "{err}"
        );
        assert!(
            err.contains("/etc/containers/registries.conf.d/zzzz-broken.conf:1:")
                && err.contains("malformed TOML"),
            "{err}"
        );
        assert_same_tree(&snapshot(root), &before);
    }
}

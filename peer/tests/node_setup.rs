//! `shoal-peer containerd configure | check | restore` on fixture trees of real layouts
//! (kubeadm + containerd 1.7, containerd 2.x, k3s, Talos, EKS, client certificates,
//! skip_verify, imports) and on the configs it must refuse.
//!
//! Each accepted fixture goes through: check (exit 1, nothing written) → configure (the
//! tree equals `after/` exactly) → configure again (byte-identical) → check (exit 0, no
//! output) → restore (the tree equals `before/` exactly) → restore again (no-op).
//! Each refused fixture: exit 2, the message, and no change at all.
//!
//! `SHOAL_BLESS=1 cargo test -p shoal-peer --test node_setup` rewrites the `after/` trees
//! from what configure produces now; review them in the diff before committing.

mod common;

use common::{Case, assert_same_tree, text};

fn round_trip(name: &str, args: &[&str]) -> Case {
    let case = Case::new(name);
    let before = case.before();

    let out = case.run("check", args);
    let (diff, err) = text(&out);
    assert_eq!(out.status.code(), Some(1), "check before configure: {err}");
    assert!(diff.contains("127.0.0.1:7650"), "{diff}");
    assert_same_tree(&case.now(), &before);

    let out = case.run("configure", args);
    assert!(out.status.success(), "configure: {}", text(&out).1);
    let configured = case.now();
    assert_same_tree(&configured, &case.expected_after());

    let out = case.run("configure", args);
    assert!(out.status.success(), "second configure: {}", text(&out).1);
    assert_same_tree(&case.now(), &configured);

    let out = case.run("check", args);
    let (diff, err) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "check after configure: {err}\n{diff}"
    );
    assert_eq!(diff, "");

    let out = case.run("restore", args);
    assert!(out.status.success(), "restore: {}", text(&out).1);
    assert_same_tree(&case.now(), &before);

    let out = case.run("restore", args);
    assert!(out.status.success(), "second restore: {}", text(&out).1);
    assert_same_tree(&case.now(), &before);
    case
}

fn refused(name: &str, args: &[&str], expected: &[&str]) -> String {
    let case = Case::new(name);
    let before = case.before();
    for action in ["configure", "check"] {
        let out = case.run(action, args);
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{action}: {stdout}{stderr}");
        for needle in expected {
            assert!(
                stderr.contains(needle),
                "{action}: {needle:?} not in:\n{stderr}"
            );
        }
        assert_same_tree(&case.now(), &before);
    }
    text(&case.run("configure", args)).1
}

#[test]
fn kubeadm_containerd_1_7_all_default_registries() {
    round_trip("kubeadm-1.7", &[]);
}

#[test]
fn containerd_2_creates_the_hosts_dir_and_restore_removes_it() {
    round_trip(
        "containerd-2.x",
        &["--registry", "docker.io", "--registry", "ghcr.io"],
    );
}

#[test]
fn k3s_is_detected_from_its_generated_config() {
    round_trip("k3s", &["--registry", "docker.io", "--no-default-host"]);
}

#[test]
fn talos_hosts_dir_comes_from_an_import() {
    round_trip("talos", &["--registry", "ghcr.io"]);
}

#[test]
fn eks_config_path_list_uses_the_dir_each_registry_already_has() {
    round_trip(
        "eks",
        &[
            "--registry",
            "docker.io",
            "--registry",
            "quay.io",
            "--no-default-host",
        ],
    );
}

#[test]
fn client_certificates_stay_and_the_mirror_goes_first() {
    let case = round_trip(
        "client-cert",
        &["--registry", "artifactory.example.com", "--no-default-host"],
    );
    // The diff never shows header values, not even as context.
    let fresh = Case::new(&case.name);
    let dir = fresh
        .root
        .join("etc/containerd/certs.d/secrets.example.com");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("hosts.toml"),
        "server = \"https://secrets.example.com\"\n\
         [host.\"https://secrets.example.com\"]\n\
         \x20 [host.\"https://secrets.example.com\".header]\n\
         \x20   authorization = \"Bearer tok-abc\"\n",
    )
    .unwrap();
    let out = fresh.run("check", &["--registry", "secrets.example.com"]);
    let (diff, err) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!diff.contains("tok-abc"), "{diff}");
    assert!(diff.contains("\n     authorization = \"***\"\n"), "{diff}");
}

#[test]
fn skip_verify_registry_keeps_skip_verify() {
    round_trip(
        "skip-verify",
        &["--registry", "harbor.lab.example:8443", "--no-resolve-tags"],
    );
}

#[test]
fn mirror_already_listed_is_updated_in_place_and_moved_first() {
    round_trip(
        "mirror-listed",
        &["--registry", "ghcr.io", "--no-default-host"],
    );
}

#[test]
fn imports_with_globs_are_followed() {
    round_trip("imports", &["--registry", "docker.io", "--no-default-host"]);
}

#[test]
fn inline_mirrors_next_to_config_path_are_refused_with_the_lines() {
    let err = refused(
        "mirrors-conflict",
        &[],
        &[
            "/etc/containerd/config.toml sets registry mirrors or TLS configs inline",
            "    20 |       [plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors]",
            "    21 |         [plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"docker.io\"]",
            "    22 |           endpoint = [\"https://mirror.example.com\", \"https://registry-1.docker.io\"]",
            "    24 |         [plugins.\"io.containerd.grpc.v1.cri\".registry.configs.\"registry.example.com\".tls]",
            "    25 |           ca_file = \"/etc/ssl/registry-ca.pem\"",
            "hosts.toml",
            "restart containerd once",
        ],
    );
    // Registry credentials in configs.*.auth are accepted by containerd: not quoted.
    assert!(!err.contains("username"), "{err}");
}

#[test]
fn malformed_hosts_toml_files_are_all_reported_with_line_and_column() {
    refused(
        "malformed-hosts",
        &[],
        &[
            "2 problems found, nothing was written",
            "/etc/containerd/certs.d/docker.io/hosts.toml:3:34: malformed TOML: unclosed table",
            "/etc/containerd/certs.d/ghcr.io/hosts.toml:3:36: malformed TOML: unclosed array",
            "malformed TOML",
        ],
    );
}

#[test]
fn malformed_imported_config_is_reported_with_line_and_column() {
    refused(
        "malformed-config",
        &[],
        &["/etc/containerd/conf.d/mirror.toml:3:17: malformed TOML"],
    );
}

#[test]
fn missing_config_path_says_what_to_add_for_version_2() {
    refused(
        "no-config-path-v2",
        &[],
        &[
            "/etc/containerd/config.toml does not set the registry config_path",
            "config version 2: containerd 1.6/1.7",
            "  [plugins.\"io.containerd.grpc.v1.cri\".registry]\n    config_path = \"/etc/containerd/certs.d\"",
            "already has an empty config_path on line 19",
            "restart containerd once",
            "Shoal never edits config.toml",
        ],
    );
}

#[test]
fn missing_config_path_says_what_to_add_for_version_3() {
    refused(
        "no-config-path-v3",
        &[],
        &[
            "config version 3: containerd 2.x",
            "  [plugins.\"io.containerd.cri.v1.images\".registry]\n    config_path = \"/etc/containerd/certs.d\"",
        ],
    );
}

#[test]
fn bad_flags_are_refused_before_reading_anything() {
    let case = Case::new("kubeadm-1.7");
    let out = case.run("configure", &["--mirror-url", "127.0.0.1:7650"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("must start with http:// or https://"));
    let out = case.run("configure", &["--registry", "../etc"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("invalid --registry \"../etc\""));
    assert_same_tree(&case.now(), &case.before());
}

#[test]
fn hosts_dir_flag_overrides_the_config() {
    let case = Case::new("containerd-2.x");
    let out = case.run(
        "configure",
        &[
            "--hosts-dir",
            "/srv/hosts",
            "--registry",
            "ghcr.io",
            "--no-default-host",
        ],
    );
    assert!(out.status.success(), "{}", text(&out).1);
    assert!(case.root.join("srv/hosts/ghcr.io/hosts.toml").is_file());
    assert!(!case.root.join("etc/containerd/certs.d").exists());
    let out = case.run("restore", &["--hosts-dir", "/srv/hosts"]);
    assert!(out.status.success(), "{}", text(&out).1);
    assert_same_tree(&case.now(), &case.before());
}

#[test]
fn file_modes_are_kept_through_configure_and_restore() {
    use std::os::unix::fs::PermissionsExt;
    let case = Case::new("client-cert");
    let file = case
        .root
        .join("etc/containerd/certs.d/artifactory.example.com/hosts.toml");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let args = ["--registry", "artifactory.example.com", "--no-default-host"];

    let out = case.run("configure", &args);
    assert!(out.status.success(), "{}", text(&out).1);
    assert_eq!(mode(&file), 0o600);
    assert_eq!(mode(&file.with_file_name("hosts.toml.shoal-backup")), 0o600);

    let out = case.run("restore", &args);
    assert!(out.status.success(), "{}", text(&out).1);
    assert_eq!(mode(&file), 0o600);
    assert_same_tree(&case.now(), &case.before());
}

#[test]
fn a_symlinked_hosts_toml_is_written_through_and_stays_a_link() {
    let case = Case::new("skip-verify");
    let dir = case
        .root
        .join("etc/containerd/certs.d/harbor.lab.example:8443");
    std::fs::rename(dir.join("hosts.toml"), dir.join("managed.toml")).unwrap();
    std::os::unix::fs::symlink("managed.toml", dir.join("hosts.toml")).unwrap();
    let before = case.now();
    let original = std::fs::read_to_string(dir.join("managed.toml")).unwrap();
    let is_link = |p: &std::path::Path| p.symlink_metadata().unwrap().file_type().is_symlink();
    let args = ["--registry", "harbor.lab.example:8443", "--no-default-host"];

    let out = case.run("configure", &args);
    assert!(out.status.success(), "{}", text(&out).1);
    assert!(is_link(&dir.join("hosts.toml")));
    let configured = std::fs::read_to_string(dir.join("managed.toml")).unwrap();
    assert!(
        configured.contains("[host.\"http://127.0.0.1:7650\"]"),
        "{configured}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("hosts.toml.shoal-backup")).unwrap(),
        original
    );

    let out = case.run("restore", &args);
    assert!(out.status.success(), "{}", text(&out).1);
    assert!(is_link(&dir.join("hosts.toml")));
    assert_same_tree(&case.now(), &before);
}

//! Unit tests of the pure planner on in-memory trees: discovery, refusals, the merge.

use super::*;

const V2: &str = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/containerd/certs.d\"\n";

fn opts(registries: &[&str]) -> Options {
    Options {
        registries: registries.iter().map(|r| r.to_string()).collect(),
        ..Options::default()
    }
}

fn only_change(tree: &MemTree, registries: &[&str]) -> FileChange {
    let plan = plan(tree, &opts(registries)).unwrap();
    assert_eq!(plan.changes.len(), 1, "{:?}", plan.changes);
    plan.changes.into_iter().next().unwrap()
}

const MIRROR: &str = "[host.\"http://127.0.0.1:7650\"]\n  capabilities = [\"pull\", \"resolve\"]\n  dial_timeout = \"1s\"\n";
const HEADER: &str =
    "# Written by `shoal-peer containerd configure`; `shoal-peer containerd restore` removes it.\n";

#[test]
fn new_files_name_the_real_upstream_and_default_has_none() {
    let tree = MemTree::new().file("/etc/containerd/config.toml", V2);
    let plan = plan(&tree, &opts(&["docker.io", "quay.io", "_default"])).unwrap();
    let files: Vec<(String, String)> = plan
        .changes
        .iter()
        .map(|c| (c.path.display().to_string(), c.after.clone()))
        .collect();
    assert_eq!(
        files,
        vec![
            (
                "/etc/containerd/certs.d/docker.io/hosts.toml".into(),
                format!("{HEADER}server = \"https://registry-1.docker.io\"\n\n{MIRROR}")
            ),
            (
                "/etc/containerd/certs.d/quay.io/hosts.toml".into(),
                format!("{HEADER}server = \"https://quay.io\"\n\n{MIRROR}")
            ),
            (
                "/etc/containerd/certs.d/_default/hosts.toml".into(),
                format!("{HEADER}\n{MIRROR}")
            ),
        ]
    );
    assert!(plan.changes.iter().all(|c| c.before.is_none()));
}

#[test]
fn docker_style_cert_files_stay_in_use_when_hosts_toml_is_created() {
    for existing in [None, Some("")] {
        let mut tree = MemTree::new()
            .file("/etc/containerd/config.toml", V2)
            .file("/etc/containerd/certs.d/r.example/ca.crt", "x")
            .file("/etc/containerd/certs.d/r.example/a.cert", "x")
            .file("/etc/containerd/certs.d/r.example/a.key", "x")
            .file("/etc/containerd/certs.d/r.example/b.cert", "x");
        if let Some(text) = existing {
            tree = tree.file("/etc/containerd/certs.d/r.example/hosts.toml", text);
        }
        let change = only_change(&tree, &["r.example"]);
        assert_eq!(change.before.as_deref(), existing);
        assert_eq!(
            change.after,
            format!(
                "{HEADER}server = \"https://r.example\"\nca = [\"ca.crt\"]\nclient = [[\"a.cert\", \"a.key\"], \"b.cert\"]\n\n{MIRROR}"
            )
        );
    }
}

#[test]
fn options_shape_the_mirror_entry() {
    let tree = MemTree::new().file("/etc/containerd/config.toml", V2);
    let options = Options {
        mirror_url: "https://mirror.local:8443/".into(),
        resolve_tags: false,
        dial_timeout: None,
        ..opts(&["ghcr.io"])
    };
    let plan = plan(&tree, &options).unwrap();
    assert_eq!(
        plan.changes[0].after,
        format!(
            "{HEADER}server = \"https://ghcr.io\"\n\n[host.\"https://mirror.local:8443\"]\n  capabilities = [\"pull\"]\n"
        )
    );
}

#[test]
fn a_configured_tree_needs_no_change() {
    let tree = MemTree::new().file("/etc/containerd/config.toml", V2).file(
        "/etc/containerd/certs.d/ghcr.io/hosts.toml",
        "server = \"https://ghcr.io\"\n[host.\"https://a\"]\n",
    );
    let change = only_change(&tree, &["ghcr.io"]);
    let tree = tree.file(&change.path, change.after.clone());
    assert_eq!(plan(&tree, &opts(&["ghcr.io"])).unwrap().changes, vec![]);
}

#[test]
fn the_config_is_found_in_order_and_k3s_and_talos_are_recognised() {
    let k3s = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/k3s/certs.d\"\n";
    let tree = MemTree::new().file(layout::K3S_CONFIG, k3s);
    assert_eq!(
        plan(&tree, &opts(&["a.io"])).unwrap().hosts.primary,
        PathBuf::from("/k3s/certs.d")
    );
    // /etc/containerd/config.toml wins when both exist.
    let tree = tree.file("/etc/containerd/config.toml", V2);
    assert_eq!(
        plan(&tree, &opts(&["a.io"])).unwrap().hosts.primary,
        PathBuf::from("/etc/containerd/certs.d")
    );
    // No config at all: the first well-known directory that exists.
    let tree = MemTree::new()
        .dir(layout::TALOS_HOSTS_DIR)
        .dir(layout::DEFAULT_HOSTS_DIR);
    assert_eq!(
        plan(&tree, &opts(&["a.io"])).unwrap().hosts.primary,
        PathBuf::from(layout::TALOS_HOSTS_DIR)
    );
    let err = plan(&MemTree::new(), &opts(&["a.io"])).unwrap_err();
    assert!(matches!(err, SetupError::NoHostsDir { .. }), "{err}");
    // An explicit config that does not exist is an error, not a guess.
    let options = Options {
        containerd_config: Some("/nope/config.toml".into()),
        ..opts(&["a.io"])
    };
    let err = plan(&MemTree::new().dir("/etc/containerd/certs.d"), &options).unwrap_err();
    assert_eq!(
        err.to_string(),
        "containerd config /nope/config.toml does not exist; pass the file containerd is started with"
    );
}

#[test]
fn k3s_missing_config_path_points_at_the_template() {
    let tree = MemTree::new().file(layout::K3S_CONFIG, "version = 2\n");
    let err = plan(&tree, &opts(&["a.io"])).unwrap_err().to_string();
    assert!(err.contains("config.toml.tmpl"), "{err}");
    assert!(
        err.contains(&format!("config_path = \"{}\"", layout::K3S_HOSTS_DIR)),
        "{err}"
    );
}

#[test]
fn version_1_configs_use_the_short_plugin_name() {
    let tree = MemTree::new().file(
        "/etc/containerd/config.toml",
        "[plugins.cri.registry]\n  config_path = \"/v1/hosts\"\n",
    );
    assert_eq!(
        plan(&tree, &opts(&["a.io"])).unwrap().hosts.primary,
        PathBuf::from("/v1/hosts")
    );
}

#[test]
fn a_config_path_list_uses_the_root_that_has_the_registry() {
    let cfg = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/a:/b\"\n";
    let tree = MemTree::new()
        .file("/etc/containerd/config.toml", cfg)
        .dir("/a")
        .file("/b/quay.io/hosts.toml", "server = \"https://quay.io\"\n");
    let plan = plan(&tree, &opts(&["quay.io", "ghcr.io"])).unwrap();
    assert_eq!(
        plan.hosts.roots,
        vec![PathBuf::from("/a"), PathBuf::from("/b")]
    );
    assert_eq!(plan.hosts.primary, PathBuf::from("/a"));
    let paths: Vec<_> = plan.changes.iter().map(|c| c.path.clone()).collect();
    assert_eq!(
        paths,
        vec![
            PathBuf::from("/b/quay.io/hosts.toml"),
            PathBuf::from("/a/ghcr.io/hosts.toml")
        ]
    );
}

#[test]
fn hosts_dir_flag_wins_but_conflicts_are_still_refused() {
    let conflict = format!(
        "{V2}  [plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"docker.io\"]\n    endpoint = [\"https://m\"]\n"
    );
    let tree = MemTree::new().file("/etc/containerd/config.toml", conflict);
    let options = Options {
        hosts_dir: Some("/x".into()),
        ..opts(&["a.io"])
    };
    let err = plan(&tree, &options).unwrap_err().to_string();
    assert!(
        err.contains(
            "     4 |   [plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"docker.io\"]"
        ),
        "{err}"
    );
    assert!(
        err.contains("     5 |     endpoint = [\"https://m\"]"),
        "{err}"
    );
    // restore only needs the directory.
    let found =
        config::find_hosts_dirs(&tree, None, Some(Path::new("/x")), Strictness::Lenient).unwrap();
    assert_eq!(found.primary, PathBuf::from("/x"));
    let found = config::find_hosts_dirs(&tree, None, None, Strictness::Lenient).unwrap();
    assert_eq!(found.primary, PathBuf::from("/etc/containerd/certs.d"));
}

#[test]
fn registry_credentials_in_configs_auth_are_not_a_conflict() {
    let cfg = format!(
        "{V2}  [plugins.\"io.containerd.grpc.v1.cri\".registry.configs.\"r.io\".auth]\n    username = \"u\"\n  [plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors]\n"
    );
    let tree = MemTree::new().file("/etc/containerd/config.toml", cfg);
    assert!(plan(&tree, &opts(&["r.io"])).is_ok());
}

#[test]
fn import_cycles_end() {
    let tree = MemTree::new()
        .file("/etc/containerd/config.toml", "version = 2\nimports = [\"b.toml\"]\n")
        .file("/etc/containerd/b.toml", "imports = [\"config.toml\"]\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\nconfig_path = \"/h\"\n");
    assert_eq!(
        plan(&tree, &opts(&["a.io"])).unwrap().hosts.primary,
        PathBuf::from("/h")
    );
}

#[test]
fn unmergeable_hosts_toml_is_refused_with_its_position() {
    let cases = [
        (
            "host = { \"https://a\" = { capabilities = [\"pull\"] } }\n",
            "/etc/containerd/certs.d/a.io/hosts.toml:1:1: `host` entries",
        ),
        (
            "server = \"https://a.io\"\nhost.\"https://m\".capabilities = [\"pull\"]\n",
            "hosts.toml:2:1: `host` entries",
        ),
        ("server = 5\n", "hosts.toml:1:10: `server` must be a string"),
    ];
    for (text, expected) in cases {
        let tree = MemTree::new()
            .file("/etc/containerd/config.toml", V2)
            .file("/etc/containerd/certs.d/a.io/hosts.toml", text);
        let err = plan(&tree, &opts(&["a.io"])).unwrap_err().to_string();
        assert!(err.contains(expected), "{err}");
    }
}

#[test]
fn config_path_of_the_wrong_type_is_refused() {
    let tree = MemTree::new().file(
        "/etc/containerd/config.toml",
        "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\nconfig_path = [\"/a\"]\n",
    );
    let err = plan(&tree, &opts(&["a.io"])).unwrap_err().to_string();
    assert_eq!(
        err,
        "/etc/containerd/config.toml:3:15: config_path must be a string (nothing was written)"
    );
}

#[test]
fn bad_mirror_urls_and_registry_names_are_refused() {
    let tree = MemTree::new().file("/etc/containerd/config.toml", V2);
    for url in [
        "127.0.0.1:7650",
        "ftp://x",
        "http://",
        "http://a b",
        "http://x/?q",
    ] {
        let options = Options {
            mirror_url: url.into(),
            ..opts(&["a.io"])
        };
        assert!(
            matches!(
                plan(&tree, &options),
                Err(SetupError::InvalidMirrorUrl { .. })
            ),
            "{url}"
        );
    }
    for name in ["", "../x", "a/b", ".hidden", "a b"] {
        assert!(
            matches!(
                plan(&tree, &opts(&[name])),
                Err(SetupError::InvalidRegistry { .. })
            ),
            "{name:?}"
        );
    }
    assert!(plan(&tree, &opts(&["registry.example.com:5000", "_default"])).is_ok());
}

#[test]
fn comments_formatting_and_other_hosts_survive_the_merge() {
    let before = "\
# team registry
server = \"https://r.io\"   # upstream

[host.\"https://a.r.io\"]   # primary
  capabilities = [ \"pull\",\"resolve\" ]
  skip_verify = true

  [host.\"https://a.r.io\".header]
    x-token = [\"1\", \"2\"]

[host.\"https://b.r.io\"]
  ca = [\"/x/ca.pem\"]
";
    let tree = MemTree::new()
        .file("/etc/containerd/config.toml", V2)
        .file("/etc/containerd/certs.d/r.io/hosts.toml", before);
    let change = only_change(&tree, &["r.io"]);
    let mut expected = String::from("# team registry\nserver = \"https://r.io\"   # upstream\n\n");
    expected.push_str(MIRROR);
    expected.push_str(&before[before.find("\n[host.\"https://a.r.io\"]").unwrap()..]);
    assert_eq!(change.after, expected);
}

#[test]
fn a_host_written_only_as_its_header_table_goes_after_the_mirror() {
    // Found by the containerd_plan fuzz target: the entry's own table is implicit, so it
    // had no position and the mirror was left (or appended) after its `[header]` table.
    for existing in [
        "[host.\"https://a.example\".header]\n  X-A = \"0\"\n",
        "[host.\"https://a.example\".header]\n  X-A = \"0\"\n\n[host.\"http://127.0.0.1:7650\"]\n  capabilities = [\"pull\"]\n",
    ] {
        let tree = MemTree::new()
            .file("/etc/containerd/config.toml", V2)
            .file("/etc/containerd/certs.d/docker.io/hosts.toml", existing);
        let after = only_change(&tree, &["docker.io"]).after;
        let mirror = after.find(MIRROR).expect("the mirror entry");
        let other = after
            .find("[host.\"https://a.example\".header]")
            .expect("a.example");
        assert!(mirror < other, "{after}");
    }
    let tree = MemTree::new().file("/etc/containerd/config.toml", V2).file(
        "/etc/containerd/certs.d/docker.io/hosts.toml",
        "[host.\"https://a.example\".header]\n  X-A = \"0\"\n",
    );
    assert_eq!(
        only_change(&tree, &["docker.io"]).after,
        format!(
            "server = \"https://registry-1.docker.io\"\n\n{MIRROR}\n[host.\"https://a.example\".header]\n  X-A = \"0\"\n"
        )
    );
}

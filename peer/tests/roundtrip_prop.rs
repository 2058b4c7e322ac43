//! Property: on any tree of registries (missing directories, certificate files only, empty
//! or commented `hosts.toml`, several hosts with certs, headers and `skip_verify`, the
//! mirror already present), configure puts the mirror first and keeps every other host in
//! order, a second configure changes nothing, and restore gives back the tree byte for
//! byte.

mod common;

use std::path::Path;

use proptest::prelude::*;
use shoal_peer::containerd::{FsTree, Options, apply, plan};

const POOL: [&str; 5] = [
    "docker.io",
    "ghcr.io",
    "quay.io",
    "registry.example.com:5000",
    "_default",
];
const HOSTS: [&str; 5] = [
    "https://a.example",
    "https://b.example:5000",
    "http://127.0.0.1:7650",
    "https://c.example/v2",
    "http://127.0.0.1:7650/",
];

#[derive(Debug, Clone)]
enum Dir {
    Missing,
    Empty,
    CertsOnly,
    EmptyFile,
    Hosts(String),
}

fn host_entry() -> impl Strategy<Value = String> {
    (
        0..HOSTS.len(),
        prop::option::of(prop::sample::subsequence(
            vec!["pull", "resolve", "push"],
            0..=3,
        )),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        prop::option::of("[a-z ]{0,12}"),
        prop::sample::select(vec!["", "  ", "\t"]),
    )
        .prop_map(|(h, caps, skip, certs, header, comment, indent)| {
            let url = HOSTS[h];
            let mut s = String::new();
            if let Some(c) = comment {
                s.push_str(&format!("# {c}\n"));
            }
            s.push_str(&format!("[host.\"{url}\"]\n"));
            if let Some(caps) = caps {
                let caps: Vec<String> = caps.iter().map(|c| format!("\"{c}\"")).collect();
                s.push_str(&format!("{indent}capabilities = [{}]\n", caps.join(", ")));
            }
            if skip {
                s.push_str(&format!("{indent}skip_verify = true # lab\n"));
            }
            if certs {
                s.push_str(&format!(
                    "{indent}ca = \"ca.crt\"\n{indent}client = [[\"c.cert\", \"c.key\"]]\n"
                ));
            }
            if header {
                s.push_str(&format!(
                    "\n{indent}[host.\"{url}\".header]\n{indent}  authorization = \"Bearer t\"\n"
                ));
            }
            s
        })
}

fn hosts_toml() -> impl Strategy<Value = String> {
    (
        prop::option::of("[a-zA-Z .]{0,20}"),
        any::<bool>(),
        any::<bool>(),
        prop::collection::vec(host_entry(), 0..4),
        prop::sample::select(vec!["\n", "\n\n", ""]),
    )
        .prop_map(|(comment, server, root_ca, hosts, gap)| {
            let mut s = String::new();
            if let Some(c) = comment {
                s.push_str(&format!("# {c}\n\n"));
            }
            if server {
                s.push_str("server = \"https://upstream.example\"\n");
            }
            if root_ca {
                s.push_str("ca = [\"root.crt\"]\n");
            }
            // TOML forbids defining a table twice: keep the first entry per host.
            let mut seen = Vec::new();
            for h in hosts {
                let key = h
                    .lines()
                    .find(|l| l.starts_with("[host."))
                    .unwrap()
                    .to_string();
                if !seen.contains(&key) {
                    seen.push(key);
                    s.push_str(gap);
                    s.push_str(&h);
                }
            }
            s
        })
}

fn dir_state() -> impl Strategy<Value = Dir> {
    prop_oneof![
        Just(Dir::Missing),
        Just(Dir::Empty),
        Just(Dir::CertsOnly),
        Just(Dir::EmptyFile),
        hosts_toml().prop_map(Dir::Hosts),
        hosts_toml().prop_map(Dir::Hosts),
    ]
}

fn build(root: &Path, hosts_dir_exists: bool, dirs: &[Dir]) {
    let hosts = root.join("etc/containerd/certs.d");
    if !hosts_dir_exists {
        return;
    }
    std::fs::create_dir_all(&hosts).unwrap();
    for (name, state) in POOL.iter().zip(dirs) {
        let d = hosts.join(name);
        match state {
            Dir::Missing => {}
            Dir::Empty => std::fs::create_dir(&d).unwrap(),
            Dir::CertsOnly => {
                std::fs::create_dir(&d).unwrap();
                std::fs::write(d.join("ca.crt"), "ca").unwrap();
                std::fs::write(d.join("client.cert"), "cert").unwrap();
                std::fs::write(d.join("client.key"), "key").unwrap();
            }
            Dir::EmptyFile => {
                std::fs::create_dir(&d).unwrap();
                std::fs::write(d.join("hosts.toml"), "").unwrap();
            }
            Dir::Hosts(text) => {
                std::fs::create_dir(&d).unwrap();
                std::fs::write(d.join("hosts.toml"), text).unwrap();
            }
        }
    }
}

fn host_keys(text: &str) -> Vec<String> {
    let doc: toml_edit::DocumentMut = text.parse().unwrap();
    doc.get("host")
        .and_then(|h| h.as_table())
        .map(|h| {
            h.iter()
                .map(|(k, _)| k.trim_end_matches('/').to_string())
                .collect()
        })
        .unwrap_or_default()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn configure_then_restore_is_the_identity(
        hosts_dir_exists in any::<bool>(),
        dirs in prop::collection::vec(dir_state(), POOL.len()),
        chosen in prop::sample::subsequence(POOL.to_vec(), 1..=POOL.len()),
        resolve_tags in any::<bool>(),
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        build(root, hosts_dir_exists, &dirs);
        let before = common::snapshot(root);
        let fs = FsTree::new(root);
        let options = Options {
            hosts_dir: Some("/etc/containerd/certs.d".into()),
            registries: chosen.iter().map(|r| r.to_string()).collect(),
            resolve_tags,
            ..Options::default()
        };

        let first = plan(&fs, &options).unwrap();
        apply::apply(&fs, &first).unwrap();
        for (i, name) in POOL.iter().enumerate() {
            if !chosen.contains(name) {
                continue;
            }
            let path = root.join("etc/containerd/certs.d").join(name).join("hosts.toml");
            let after = std::fs::read_to_string(&path).unwrap();
            let keys = host_keys(&after);
            prop_assert_eq!(keys.first().map(String::as_str), Some("http://127.0.0.1:7650"));
            let old: Vec<String> = match &dirs[i] {
                Dir::Hosts(text) if hosts_dir_exists => host_keys(text),
                _ => Vec::new(),
            };
            // The first entry for the mirror is the one updated and moved; a duplicate
            // an operator wrote stays where it was.
            let mut old_others: Vec<&String> = old.iter().collect();
            if let Some(i) = old_others.iter().position(|k| k.as_str() == "http://127.0.0.1:7650") {
                old_others.remove(i);
            }
            let new_others: Vec<&String> = keys.iter().skip(1).collect();
            prop_assert_eq!(new_others, old_others);
        }

        let configured = common::snapshot(root);
        let second = plan(&fs, &options).unwrap();
        prop_assert!(second.changes.is_empty(), "second run would change {:?}", second.changes);
        apply::apply(&fs, &second).unwrap();
        prop_assert_eq!(common::snapshot(root), configured);

        apply::restore(&fs, &first.hosts.primary).unwrap();
        prop_assert_eq!(common::snapshot(root), before);
    }
}

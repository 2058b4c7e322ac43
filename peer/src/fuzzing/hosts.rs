//! `hosts.toml` twice over: as the upstream client reads it ([`crate::registry::hosts_toml`])
//! and as `shoal-peer containerd configure` plans its merge, after finding the hosts
//! directory from containerd's `config.toml` ([`containerd::plan`]).

use std::path::Path;

use crate::containerd::{self, FileChange, MemTree, Options, Tree};
use crate::registry::hosts_toml::{self, EndpointSpec, NamedFile, Role};
use crate::registry::names::Authority;
use crate::registry::{RegistryError, hosts_toml::go_duration};

const CONFIG: &str = "/etc/containerd/config.toml";
const HOSTS: &str = "/etc/containerd/certs.d/docker.io/hosts.toml";
const SERVER: &str = "https://registry-1.docker.io";
/// The config the `containerd_plan` target uses when the input carries none.
const DEFAULT_CONFIG: &str = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/containerd/certs.d\"\n";

/// Parses the input (as UTF-8) as `docker.io`'s `hosts.toml` and checks:
/// - a parsed file gives its `[host]` mirrors, then exactly one server, last;
/// - every endpoint is an `http(s)` URL with a host and no user info, query or fragment,
///   and its API root (without a trailing `/`), read back as a server, is the same URL;
/// - every file it names is absolute, and every line number (in names and errors) is a
///   line of the file;
/// - dropping this node's own mirror keeps every other endpoint.
pub fn hosts_toml(data: &[u8]) {
    let Some(text) = super::text(data) else {
        return;
    };
    let _ = go_duration(text);
    let path = Path::new(HOSTS);
    let lines = text.split('\n').count();
    let parsed = match hosts_toml::parse(text, path, SERVER) {
        Ok(parsed) => parsed,
        Err(RegistryError::Config { line, .. }) => {
            assert!(line.is_none_or(|l| (1..=lines).contains(&l)), "{line:?}");
            return;
        }
        Err(e) => panic!("parse answered {e:?}"),
    };
    let (server, mirrors) = parsed.endpoints.split_last().expect("a server at least");
    assert_eq!(server.role, Role::Server);
    assert!(mirrors.iter().all(|e| e.role == Role::Mirror));
    for e in &parsed.endpoints {
        endpoint(e, lines);
    }
    let own = [Authority::parse("127.0.0.1:7650").expect("an authority")];
    let total = parsed.endpoints.len();
    let (kept, dropped) = hosts_toml::without_own_mirrors(parsed.endpoints, &own);
    assert_eq!(kept.len() + dropped.len(), total);
    assert!(
        kept.iter()
            .all(|e| Authority::of(&e.url).is_none_or(|a| a != own[0]))
    );
}

fn endpoint(e: &EndpointSpec, lines: usize) {
    let url = &e.url;
    assert!(
        matches!(url.scheme(), "http" | "https") && url.has_host(),
        "{url}"
    );
    assert!(
        url.username().is_empty() && url.password().is_none(),
        "{url}"
    );
    assert!(url.query().is_none() && url.fragment().is_none(), "{url}");
    let root = e.api_root();
    assert!(!root.ends_with('/'), "{root}");
    if url.path().ends_with("/v2") {
        let again = hosts_toml::implicit(root, Path::new(HOSTS))
            .unwrap_or_else(|err| panic!("{root} does not read back: {err}"));
        assert_eq!(&again.url, url, "{root} reads back as another URL");
    }
    let files = e.ca.iter().chain(
        e.client
            .iter()
            .flat_map(|c| std::iter::once(&c.cert).chain(&c.key)),
    );
    for f in files {
        assert!(f.path.is_absolute(), "{f:?}");
        assert!(f.line.is_none_or(|l| (1..=lines).contains(&l)), "{f:?}");
    }
    if let Some(proxy) = &e.proxy {
        assert!(matches!(proxy.scheme(), "http" | "https"), "{proxy}");
    }
}

/// Plans `configure` for `docker.io` on a node whose files come from the input (as
/// UTF-8): before the first NUL byte the containerd config, after it `docker.io`'s
/// `hosts.toml`; without a NUL, the whole input is the `hosts.toml` and the config is a
/// version 2 config pointing at `/etc/containerd/certs.d`. Checks:
/// - a plan that writes files is idempotent: planning again on the written files
///   changes nothing;
/// - every written `hosts.toml` puts the mirror first when the upstream client reads it;
/// - when the upstream client could read the file before, it reads every endpoint of it
///   after, in the same order, behind the mirror.
pub fn containerd_plan(data: &[u8]) {
    let Some(input) = super::text(data) else {
        return;
    };
    let (config, hosts) = input.split_once('\0').unwrap_or((DEFAULT_CONFIG, input));
    let tree = MemTree::new()
        .file(CONFIG, config)
        .file(HOSTS, hosts)
        .dir("/etc/containerd/certs.d/_default");
    let opts = Options {
        registries: vec!["docker.io".into(), "_default".into()],
        ..Options::default()
    };
    let Ok(plan) = containerd::plan(&tree, &opts) else {
        return;
    };
    let mut written = tree.clone();
    for change in &plan.changes {
        assert_eq!(tree.read(&change.path).ok().flatten(), change.before);
        assert_ne!(change.before.as_deref(), Some(change.after.as_str()));
        written = written.file(&change.path, change.after.as_str());
        merged(change);
    }
    let again = containerd::plan(&written, &opts)
        .unwrap_or_else(|e| panic!("planning again after {:?} fails: {e}", plan.changes));
    assert_eq!(again.changes, Vec::<FileChange>::new(), "not idempotent");
}

/// What the upstream client reads from a merged `hosts.toml`.
fn merged(change: &FileChange) {
    let mirror = hosts_toml::implicit(containerd::DEFAULT_MIRROR_URL, &change.path)
        .expect("the mirror is a URL")
        .url;
    let read = |text: &str| hosts_toml::parse(text, &change.path, SERVER).ok();
    let after = read(&change.after);
    if let Some(after) = &after {
        assert_eq!(after.endpoints[0].url, mirror, "{}", change.after);
    }
    let Some(before) = change.before.as_deref().and_then(read) else {
        return;
    };
    let after = after.unwrap_or_else(|| {
        panic!(
            "readable before, unreadable after:\n{:?}\n{}",
            change.before, change.after
        )
    });
    // Line numbers move; what is configured does not.
    let others = |endpoints: Vec<EndpointSpec>| -> Vec<EndpointSpec> {
        endpoints
            .into_iter()
            .filter(|e| e.url != mirror)
            .map(|mut e| {
                let unlined = |f: &mut NamedFile| f.line = None;
                e.ca.iter_mut().for_each(unlined);
                for c in &mut e.client {
                    unlined(&mut c.cert);
                    c.key.iter_mut().for_each(unlined);
                }
                e
            })
            .collect()
    };
    assert_eq!(
        others(after.endpoints),
        others(before.endpoints),
        "{}",
        change.after
    );
}

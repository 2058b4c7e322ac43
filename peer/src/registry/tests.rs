//! [`Registries::resolve`] over real directories: which file is read, the cache, errors.
//! No network: sending is tested in `peer/tests/registry_upstream.rs`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::*;

fn registries(hosts: &Path, default: Option<&str>) -> Registries {
    let mut config = RegistriesConfig::new(hosts.to_owned());
    config.default_upstream = default.map(str::to_owned);
    config.own_mirrors = vec!["http://127.0.0.1:7650".into()];
    Registries::new(config)
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn endpoints(r: &Registries, ns: Option<&str>) -> Vec<String> {
    r.resolve_blocking(ns).unwrap().endpoints()
}

#[test]
fn unknown_and_invalid_names_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("known.example")).unwrap();
    let r = registries(tmp.path(), None);
    for ns in [
        "nothing.example",
        "_default",
        "..",
        "a/b",
        "",
        "known.example/x",
    ] {
        assert!(
            matches!(r.resolve_blocking(Some(ns)), Err(RegistryError::UnknownRegistry(n)) if n == ns),
            "{ns}"
        );
    }
    assert!(matches!(
        r.resolve_blocking(None),
        Err(RegistryError::NoDefault)
    ));
    assert_eq!(
        endpoints(&r, Some("known.example")),
        ["https://known.example/v2"]
    );
}

#[test]
fn the_default_upstream_needs_no_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let r = registries(tmp.path(), Some("http://127.0.0.1:5000"));
    let c = r.resolve_blocking(None).unwrap();
    assert_eq!(c.registry(), "127.0.0.1:5000");
    assert_eq!(c.endpoints(), ["http://127.0.0.1:5000/v2"]);
    // The same registry named by ns is the default too.
    assert!(Arc::ptr_eq(
        &c,
        &r.resolve_blocking(Some("127.0.0.1:5000")).unwrap()
    ));

    let r = registries(tmp.path(), Some("docker.io"));
    assert_eq!(endpoints(&r, None), ["https://registry-1.docker.io/v2"]);
    let r = registries(tmp.path(), Some("not a host"));
    assert!(matches!(
        r.resolve_blocking(None),
        Err(RegistryError::UnknownRegistry(_))
    ));
}

#[test]
fn directories_are_searched_in_containerd_order() {
    let tmp = tempfile::tempdir().unwrap();
    let hosts = tmp.path();
    write(
        &hosts.join("_default/hosts.toml"),
        "[host.\"http://127.0.0.1:7650\"]\n[host.\"https://all.example\"]\n",
    );
    let r = registries(hosts, None);
    // Own mirror skipped; the implicit server is the registry itself.
    assert_eq!(
        endpoints(&r, Some("docker.io")),
        ["https://all.example/v2", "https://registry-1.docker.io/v2"]
    );
    write(
        &hosts.join("r.example:5000/hosts.toml"),
        "server = \"https://plain-name\"\n",
    );
    assert_eq!(
        endpoints(&r, Some("r.example:5000")),
        ["https://plain-name/v2"]
    );
    write(
        &hosts.join("r.example_5000_/hosts.toml"),
        "server = \"https://underscored\"\n",
    );
    assert_eq!(
        endpoints(&r, Some("r.example:5000")),
        ["https://underscored/v2"]
    );
}

#[test]
fn several_hosts_dirs_are_searched_in_order_the_first_with_a_directory_wins() {
    let tmp = tempfile::tempdir().unwrap();
    let (first, second) = (tmp.path().join("containerd"), tmp.path().join("docker"));
    write(
        &second.join("r.example/hosts.toml"),
        "server = \"https://from-second\"\n",
    );
    write(
        &second.join("[fd00::9]_5000_/hosts.toml"),
        "server = \"https://[fd00::9]:5000\"\n",
    );
    let r = Registries::new(RegistriesConfig::with_hosts_dirs(vec![
        first.clone(),
        second.clone(),
    ]));
    // The first dir does not exist: the second is read.
    assert_eq!(endpoints(&r, Some("r.example")), ["https://from-second/v2"]);
    // An IPv6 registry's directory (`[addr]_port_`, as containerd names it).
    assert_eq!(
        endpoints(&r, Some("[fd00::9]:5000")),
        ["https://[fd00::9]:5000/v2"]
    );
    // A directory for it in the first dir wins, even without hosts.toml (Docker's
    // certificate layout), and the second is not merged in.
    std::fs::create_dir_all(first.join("r.example")).unwrap();
    assert_eq!(endpoints(&r, Some("r.example")), ["https://r.example/v2"]);
    // As in containerd, a `_default` in the first dir hides the second dir's own entry.
    std::fs::remove_dir(first.join("r.example")).unwrap();
    write(
        &first.join("_default/hosts.toml"),
        "server = \"https://catch-all\"\n",
    );
    assert_eq!(endpoints(&r, Some("r.example")), ["https://catch-all/v2"]);
    // A registry no dir names is unknown.
    std::fs::remove_dir_all(first.join("_default")).unwrap();
    assert!(matches!(
        r.resolve_blocking(Some("other.example")),
        Err(RegistryError::UnknownRegistry(_))
    ));
}

#[test]
fn cached_until_the_file_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("docker.io/hosts.toml");
    write(&file, "server = \"https://one.example\"\n");
    let r = registries(tmp.path(), None);
    let first = r.resolve_blocking(Some("docker.io")).unwrap();
    assert!(Arc::ptr_eq(
        &first,
        &r.resolve_blocking(Some("docker.io")).unwrap()
    ));
    // A clone shares the cache.
    assert!(Arc::ptr_eq(
        &first,
        &r.clone().resolve_blocking(Some("docker.io")).unwrap()
    ));
    write(&file, "server = \"https://second.example\"\n");
    let second = r.resolve_blocking(Some("docker.io")).unwrap();
    assert!(!Arc::ptr_eq(&first, &second));
    assert_eq!(second.endpoints(), ["https://second.example/v2"]);
    // Replaced by rename (what editors and configure do).
    let new = tmp.path().join("docker.io/hosts.toml.new");
    write(&new, "server = \"https://third.example\"\n");
    std::fs::rename(&new, &file).unwrap();
    assert_eq!(
        endpoints(&r, Some("docker.io")),
        ["https://third.example/v2"]
    );
    // Removed: the directory is now Docker's certificate layout, server implicit.
    std::fs::remove_file(&file).unwrap();
    assert_eq!(
        endpoints(&r, Some("docker.io")),
        ["https://registry-1.docker.io/v2"]
    );
}

#[test]
fn broken_files_are_errors_that_name_file_and_line_and_are_not_cached() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("quay.io/hosts.toml");
    write(&file, "server = \"https://quay.io\"\n[host.\"https://m\"\n");
    let r = registries(tmp.path(), None);
    match r.resolve_blocking(Some("quay.io")) {
        Err(RegistryError::Config { path, line, .. }) => {
            assert_eq!(path, file);
            assert_eq!(line, Some(2));
        }
        other => panic!("{other:?}"),
    }
    write(&file, "server = \"https://quay.io\"\n");
    assert_eq!(endpoints(&r, Some("quay.io")), ["https://quay.io/v2"]);
}

#[test]
fn a_missing_certificate_is_named_with_the_line_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("ghcr.io/hosts.toml");
    write(
        &file,
        "server = \"https://ghcr.io\"\n\n[host.\"https://m.example\"]\n  ca = \"missing-ca.crt\"\n",
    );
    let r = registries(tmp.path(), None);
    let err = r.resolve_blocking(Some("ghcr.io")).unwrap_err();
    let RegistryError::Config {
        path,
        line,
        message,
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!(path, &file);
    assert_eq!(*line, Some(4));
    let missing = tmp.path().join("ghcr.io/missing-ca.crt");
    assert!(
        message.contains(&missing.display().to_string()),
        "{message}"
    );
    assert!(
        err.to_string()
            .starts_with(&format!("{}:4: ", file.display())),
        "{err}"
    );
}

#[test]
fn certificates_are_checked_and_their_changes_seen() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = crate::tls::Pki::issue(None).unwrap();
    let dir = tmp.path().join("tls.example");
    write(&dir.join("ca.crt"), &pki.ca_cert_pem);
    write(&dir.join("client.cert"), &pki.cert_pem);
    write(&dir.join("client.key"), &pki.key_pem);
    let r = registries(tmp.path(), None);
    // Docker's layout: no hosts.toml.
    let first = r.resolve_blocking(Some("tls.example")).unwrap();
    assert_eq!(first.endpoints(), ["https://tls.example/v2"]);
    assert!(Arc::ptr_eq(
        &first,
        &r.resolve_blocking(Some("tls.example")).unwrap()
    ));

    // A certificate rewritten in place: rebuilt.
    write(&dir.join("ca.crt"), &format!("{}\n", pki.ca_cert_pem));
    let second = r.resolve_blocking(Some("tls.example")).unwrap();
    assert!(!Arc::ptr_eq(&first, &second));

    // Garbage in a CA file: named.
    write(&dir.join("ca.crt"), "not a certificate\n");
    match r.resolve_blocking(Some("tls.example")) {
        Err(RegistryError::Config { path, line, .. }) => {
            assert_eq!(path, dir.join("ca.crt"));
            assert_eq!(line, None);
        }
        other => panic!("{other:?}"),
    }
    // A key that is not a key: named, and its text is not in the error.
    write(&dir.join("ca.crt"), &pki.ca_cert_pem);
    write(
        &dir.join("client.key"),
        "-----BEGIN NONSENSE-----\nc2VjcmV0\n-----END NONSENSE-----\n",
    );
    match r.resolve_blocking(Some("tls.example")) {
        Err(RegistryError::Config { path, message, .. }) => {
            assert_eq!(path, dir.join("client.key"));
            assert!(!message.contains("c2VjcmV0"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn validate_reports_every_problem() {
    let mut c = RegistriesConfig::new("/nonexistent".into());
    assert!(c.validate().is_ok());
    c.default_upstream = Some("ftp://x".into());
    c.own_mirrors = vec!["http://".into()];
    c.policy.attempts = 0;
    c.policy.request_timeout = Duration::ZERO;
    assert_eq!(c.validate().unwrap_err().len(), 4);
    c = RegistriesConfig::new("/nonexistent".into());
    let zero_idle = UpstreamPolicy {
        idle_timeout: Duration::ZERO,
        ..UpstreamPolicy::default()
    };
    c.per_registry.insert("ghcr.io".into(), zero_idle);
    c.per_registry
        .insert("not a host".into(), UpstreamPolicy::default());
    let problems = c.validate().unwrap_err();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems[0].contains("ghcr.io: idle timeout"),
        "{problems:?}"
    );
    assert!(problems[1].contains("not a registry host"), "{problems:?}");
}

#[test]
fn a_registry_s_own_policy_replaces_the_default() {
    let mut c = RegistriesConfig::new("/nonexistent".into());
    let ghcr = UpstreamPolicy {
        idle_timeout: Duration::from_secs(42),
        ..UpstreamPolicy::default()
    };
    c.per_registry.insert("ghcr.io".into(), ghcr);
    assert_eq!(c.policy_for("ghcr.io"), &ghcr);
    assert_eq!(c.policy_for("docker.io"), &UpstreamPolicy::default());
    c.default_upstream = Some("ghcr.io".into());
    let client = Registries::new(c).resolve_blocking(None).unwrap();
    assert_eq!(client.idle_timeout(), Duration::from_secs(42));
}

#[test]
fn requests_never_print_credentials() {
    let mut auth = HeaderValue::from_static("Bearer s3cret");
    auth.set_sensitive(false);
    let req = UpstreamRequest {
        method: reqwest::Method::GET,
        repo: "library/nginx".into(),
        object: Object::Manifest("latest".into()),
        accept: vec![],
        authorization: Some(auth),
        range_from: None,
    };
    let printed = format!("{req:?}");
    assert!(!printed.contains("s3cret"), "{printed}");
    assert!(printed.contains("library/nginx"));
}

#[tokio::test(flavor = "current_thread")]
async fn resolve_from_async_code_shares_the_cache_and_errors() {
    let r = registries(Path::new("/nonexistent"), Some("127.0.0.1:5000"));
    let first = r.resolve(None).await.unwrap();
    assert!(Arc::ptr_eq(&first, &r.resolve_blocking(None).unwrap()));
    assert!(Arc::ptr_eq(
        &first,
        &r.resolve(Some("127.0.0.1:5000")).await.unwrap()
    ));
    assert!(matches!(
        r.resolve(Some("quay.io")).await,
        Err(RegistryError::UnknownRegistry(_))
    ));
}

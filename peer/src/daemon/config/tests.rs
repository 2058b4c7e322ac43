use super::*;
use clap::Parser;

#[derive(Parser)]
struct T {
    #[command(flatten)]
    run: RunArgs,
}

fn resolve(args: &[&str]) -> Result<Settings, Vec<String>> {
    let mut v = vec!["shoal-peer"];
    v.extend_from_slice(args);
    Settings::resolve(T::parse_from(v).run)
}

#[test]
fn sizes() {
    assert_eq!(parse_size("10GiB").unwrap(), 10 << 30);
    assert_eq!(parse_size("512").unwrap(), 512);
    assert!(parse_size("10 GB").is_err());
    assert!(parse_size("99999999999TiB").is_err());
}

#[test]
fn listen_ip_is_advertised_and_tls_is_required() {
    let s = resolve(&["--quic-listen", "127.0.0.2:9000", "--dev-ephemeral-tls"]).unwrap();
    assert_eq!(s.advertise, "127.0.0.2:9000".parse().unwrap());
    let errs = resolve(&["--quic-listen", "127.0.0.2:9000"]).unwrap_err();
    assert!(errs[0].contains("--peer-tls-dir is required"), "{errs:?}");
}

#[test]
fn every_error_at_once() {
    let errs = resolve(&[
        "--scheduler",
        "sched:7600",
        "--quic-listen",
        "x",
        "--cache-size",
        "lots",
        "--upload-slots",
        "0",
        "--log-format",
        "xml",
    ])
    .unwrap_err();
    assert_eq!(errs.len(), 6, "{errs:?}");
    let errs = resolve(&[
        "--dev-ephemeral-tls",
        "--quic-listen",
        "127.0.0.1:1",
        "--mirror-listen",
        "localhost",
        "--cache-high-watermark",
        "0.5",
        "--cache-low-watermark",
        "0.8",
    ])
    .unwrap_err();
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(errs[0].contains("--mirror-listen"), "{errs:?}");
    assert!(errs[1].contains("watermark"), "{errs:?}");
}

/// A config file with `text` in a temp dir (kept alive by the returned guard).
fn config_file(text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("peer.toml");
    std::fs::write(&path, text).unwrap();
    let path = path.to_str().unwrap().to_owned();
    (dir, path)
}

#[test]
fn defaults() {
    let s = resolve(&["--dev-ephemeral-tls", "--quic-listen", "127.0.0.1:7651"]).unwrap();
    assert_eq!(s.http_listen, "[::]:7652".parse().unwrap());
    assert_eq!(s.mirror_listen, "127.0.0.1:7650".parse().unwrap());
    assert_eq!(s.data_dir, PathBuf::from("/var/lib/shoal"));
    assert_eq!(s.cache.cache_size, 10 << 30);
    assert_eq!(s.upload_slots, 8);
    assert_eq!(s.upload_rate_limit, None);
    assert!(s.schedulers.is_empty());
    assert!(!s.json_logs);
    assert_eq!(s.access, crate::mirror::AccessConfig::default());
    assert!(s.access.enabled);
    assert_eq!(s.access.ttl, Duration::from_secs(60));
}

#[test]
fn access_check_from_flags_and_file() {
    let (_dir, path) = config_file("access_check = \"off\"\naccess_cache_ttl = \"5m\"\n");
    let base = ["--dev-ephemeral-tls", "--quic-listen", "127.0.0.1:7651"];
    let mut args = base.to_vec();
    args.extend(["--config", &path]);
    let s = resolve(&args).unwrap();
    assert!(!s.access.enabled);
    assert_eq!(s.access.ttl, Duration::from_secs(300));
    args.extend(["--access-check", "on", "--access-cache-ttl", "0s"]);
    let s = resolve(&args).unwrap();
    assert!(s.access.enabled);
    assert_eq!(s.access.ttl, Duration::ZERO);
    let mut bad = base.to_vec();
    bad.extend(["--access-check", "maybe", "--access-cache-ttl", "soon"]);
    let errs = resolve(&bad).unwrap_err();
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(errs[0].contains("--access-check") && errs[1].contains("--access-cache-ttl"));
}

#[test]
fn file_sets_every_key_and_flags_win() {
    let (_dir, path) = config_file(
        r#"
scheduler = ["http://a:7600", "https://b:7600"]
quic_listen = "127.0.0.3:9001"
advertise_addr = "10.0.0.7"
data_dir = "/srv/shoal"
cache_size = "2GiB"
http_listen = "127.0.0.1:9002"
dev_ephemeral_tls = true
upload_slots = 4
upload_rate_limit = "100MiB"
zone = "z1"
log_format = "json"
mirror_listen = "127.0.0.1:9003"
containerd_hosts_dir = "/etc/hosts.d:/etc/docker/certs.d"
containers_registries_conf = "/c/registries.conf"
containers_registries_conf_dir = "/c/d"
containers_certs_dir = "/c/certs.d"
default_upstream = "ghcr.io"
cache_high_watermark = 0.8
cache_low_watermark = "0.5"
"#,
    );
    let s = resolve(&["--config", &path]).unwrap();
    assert_eq!(s.schedulers, ["http://a:7600", "https://b:7600"]);
    assert_eq!(s.quic_listen, "127.0.0.3:9001".parse().unwrap());
    assert_eq!(s.advertise, "10.0.0.7:9001".parse().unwrap());
    assert_eq!(s.data_dir, PathBuf::from("/srv/shoal"));
    assert_eq!(s.cache.cache_size, 2 << 30);
    assert_eq!(s.http_listen, "127.0.0.1:9002".parse().unwrap());
    assert_eq!(s.tls, TlsSource::Ephemeral);
    assert_eq!(s.upload_slots, 4);
    assert_eq!(s.upload_rate_limit.unwrap().get(), 100 << 20);
    assert_eq!(s.zone, "z1");
    assert!(s.json_logs);
    assert_eq!(s.mirror_listen, "127.0.0.1:9003".parse().unwrap());
    assert_eq!(
        s.containerd_hosts_dirs,
        [PathBuf::from("/etc/hosts.d"), "/etc/docker/certs.d".into()]
    );
    assert_eq!(
        s.containers,
        Some(crate::registry::ContainersFiles {
            registries_conf: "/c/registries.conf".into(),
            drop_in_dir: "/c/d".into(),
            certs_dirs: vec!["/c/certs.d".into()],
        })
    );
    assert_eq!(s.default_upstream.as_deref(), Some("ghcr.io"));
    assert_eq!(s.cache.high_watermark, 0.8);
    assert_eq!(s.cache.low_watermark, 0.5);

    let s = resolve(&[
        "--config",
        &path,
        "--scheduler",
        "http://c:7600",
        "--upload-slots",
        "2",
        "--zone",
        "z2",
    ])
    .unwrap();
    assert_eq!(s.schedulers, ["http://c:7600"]);
    assert_eq!(s.upload_slots, 2);
    assert_eq!(s.zone, "z2");
    assert_eq!(s.cache.cache_size, 2 << 30, "the file still sets the rest");
}

#[test]
fn file_rejects_unknown_keys_naming_the_file_and_line() {
    let (_dir, path) = config_file("zone = \"a\"\nupload_slotz = 3\n");
    let errs = resolve(&["--config", &path, "--dev-ephemeral-tls"]).unwrap_err();
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].contains("peer.toml") && errs[0].contains("upload_slotz"),
        "{errs:?}"
    );
    assert!(errs[0].contains("line 2"), "{errs:?}");
}

#[test]
fn file_errors_come_with_every_other_error() {
    let (_dir, path) = config_file("cache_size = [1]\n");
    let errs = resolve(&["--config", &path, "--log-format", "xml"]).unwrap_err();
    assert_eq!(errs.len(), 3, "{errs:?}");
    assert!(errs[0].contains("peer.toml") && errs[0].contains("cache_size"));
    assert!(errs.iter().any(|e| e.contains("--log-format")));
    assert!(
        errs.iter()
            .any(|e| e.contains("--peer-tls-dir is required"))
    );

    // A value from the file is checked like the flag's.
    let (_dir, path) = config_file("upload_slots = 0\ncache_size = \"lots\"\n");
    let errs = resolve(&["--config", &path, "--dev-ephemeral-tls"]).unwrap_err();
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(errs.iter().any(|e| e.contains("--upload-slots")));
    assert!(errs.iter().any(|e| e.contains("--cache-size")));

    let errs = resolve(&["--config", "/nonexistent/peer.toml", "--dev-ephemeral-tls"]).unwrap_err();
    assert!(errs[0].contains("/nonexistent/peer.toml"), "{errs:?}");
}

#[test]
fn durations() {
    assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
    assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
    assert!(parse_duration("2 weeks").is_err());
    assert!(parse_duration("").is_err());
}

#[test]
fn from_args_parses_words() {
    let s = Settings::from_args([
        "shoal-peer",
        "--dev-ephemeral-tls",
        "--quic-listen",
        "127.0.0.1:1",
    ])
    .unwrap();
    assert_eq!(s.tls, TlsSource::Ephemeral);
    let errs = Settings::from_args(["shoal-peer", "--no-such-flag"]).unwrap_err();
    assert!(errs[0].contains("--no-such-flag"), "{errs:?}");
}

#[test]
fn registries_default_then_own_entries_over_it() {
    let (_dir, path) = config_file(
        r#"
[registries._default]
idle_timeout = "20s"
attempts = 2

[registries."ghcr.io"]
connect_timeout = "1s"
idle_timeout = "300ms"

[registries."10.0.0.9:5000"]
attempts = "5"
"#,
    );
    let s = resolve(&["--config", &path, "--dev-ephemeral-tls"]).unwrap();
    let default = UpstreamPolicy {
        idle_timeout: Duration::from_secs(20),
        attempts: 2,
        ..UpstreamPolicy::default()
    };
    assert_eq!(s.upstream, default);
    assert_eq!(
        s.registry_policies["ghcr.io"],
        UpstreamPolicy {
            connect_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_millis(300),
            ..default
        }
    );
    assert_eq!(s.registry_policies["10.0.0.9:5000"].attempts, 5);
    assert_eq!(
        s.registry_policies["10.0.0.9:5000"].idle_timeout,
        Duration::from_secs(20)
    );
    assert_eq!(s.registry_policies.len(), 2);

    let s = resolve(&["--dev-ephemeral-tls"]).unwrap();
    assert_eq!(s.upstream, UpstreamPolicy::default());
    assert!(s.registry_policies.is_empty());
}

#[test]
fn registries_every_bad_value_at_once() {
    let (_dir, path) = config_file(
        r#"
[registries._default]
idle_timeout = "0s"

[registries."ghcr.io"]
connect_timeout = "soon"
attempts = 0

[registries."https://quay.io"]
attempts = 1
"#,
    );
    let errs = resolve(&["--config", &path, "--dev-ephemeral-tls"]).unwrap_err();
    assert_eq!(errs.len(), 4, "{errs:?}");
    assert!(errs.iter().all(|e| e.contains("peer.toml")), "{errs:?}");
    assert!(
        errs.iter()
            .any(|e| e.contains(r#"[registries."_default"] idle_timeout"#))
    );
    assert!(
        errs.iter()
            .any(|e| e.contains(r#"[registries."ghcr.io"] connect_timeout"#))
    );
    assert!(
        errs.iter()
            .any(|e| e.contains(r#"[registries."ghcr.io"] attempts"#))
    );
    assert!(
        errs.iter()
            .any(|e| e.contains("https://quay.io") && e.contains("not a registry host"))
    );

    let (_dir, path) = config_file("[registries.\"ghcr.io\"]\ndial_timeout = \"1s\"\n");
    let errs = resolve(&["--config", &path, "--dev-ephemeral-tls"]).unwrap_err();
    assert!(
        errs[0].contains("dial_timeout") && errs[0].contains("line 2"),
        "{errs:?}"
    );
}

#[test]
fn the_mirror_stays_on_loopback_unless_allowed() {
    let base = ["--dev-ephemeral-tls", "--quic-listen", "127.0.0.1:1"];
    for ok in ["127.0.0.1:7650", "127.0.0.9:1", "[::1]:7650"] {
        let s = resolve(&[&base[..], &["--mirror-listen", ok]].concat()).unwrap();
        assert!(!s.mirror_allow_remote);
    }
    for remote in ["0.0.0.0:7650", "10.1.2.3:7650", "[::]:7650"] {
        let errs = resolve(&[&base[..], &["--mirror-listen", remote]].concat()).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].contains("--mirror-listen") && errs[0].contains("--mirror-allow-remote"),
            "{errs:?}"
        );
        let s = resolve(
            &[
                &base[..],
                &["--mirror-listen", remote, "--mirror-allow-remote"],
            ]
            .concat(),
        )
        .unwrap();
        assert!(s.mirror_allow_remote);
        assert_eq!(s.mirror_listen, remote.parse().unwrap());
    }
    let (_dir, path) =
        config_file("mirror_listen = \"0.0.0.0:7650\"\nmirror_allow_remote = true\n");
    let s = resolve(&[&base[..], &["--config", &path]].concat()).unwrap();
    assert!(s.mirror_allow_remote);
}

#[test]
fn token_review_identity_needs_its_flags() {
    let s = resolve(&["--peer-tls-dir", "/tls"]).unwrap();
    assert!(s.issuance.is_none(), "files is the default");
    let s = resolve(&[
        "--peer-tls-dir",
        "/tls",
        "--identity",
        "token-review",
        "--node-name",
        "node-a",
        "--sa-token-file",
        "/var/run/secrets/tokens/shoal",
        "--issuer-url",
        "https://shoal-scheduler.shoal.svc:7601",
        "--issuer-ca-file",
        "/ca/ca.crt",
    ])
    .unwrap();
    let i = s.issuance.unwrap();
    assert_eq!(i.node_name, "node-a");
    assert_eq!(i.issuer_url, "https://shoal-scheduler.shoal.svc:7601");
    assert_eq!(s.tls, TlsSource::Dir("/tls".into()));

    let errs = resolve(&[
        "--dev-ephemeral-tls",
        "--identity",
        "token-review",
        "--node-name",
        "node a",
        "--issuer-url",
        "http://sched:7601",
    ])
    .unwrap_err();
    for want in [
        "excludes --dev-ephemeral-tls",
        "--sa-token-file is required",
        "--issuer-ca-file is required",
        "--node-name: \"node a\"",
        "--issuer-url: \"http://sched:7601\" must be an https:// URL",
    ] {
        assert!(errs.iter().any(|e| e.contains(want)), "{want}: {errs:?}");
    }
    assert_eq!(errs.len(), 5, "{errs:?}");
    let errs = resolve(&["--peer-tls-dir", "/tls", "--identity", "csi"]).unwrap_err();
    assert!(errs[0].contains("files or token-review"), "{errs:?}");
}

#[test]
fn hosts_dirs_are_a_colon_separated_list_in_order() {
    let s = resolve(&["--dev-ephemeral-tls", "--quic-listen", "127.0.0.1:1"]).unwrap();
    assert_eq!(
        s.containerd_hosts_dirs,
        [PathBuf::from("/etc/containerd/certs.d")]
    );
    let s = resolve(&[
        "--dev-ephemeral-tls",
        "--quic-listen",
        "127.0.0.1:1",
        "--containerd-hosts-dir",
        "/etc/containerd/certs.d:/etc/docker/certs.d",
    ])
    .unwrap();
    assert_eq!(
        s.containerd_hosts_dirs,
        [
            PathBuf::from("/etc/containerd/certs.d"),
            "/etc/docker/certs.d".into()
        ]
    );
    for bad in ["/a::/b", ":/a", "/a:"] {
        let errs = resolve(&[
            "--dev-ephemeral-tls",
            "--quic-listen",
            "127.0.0.1:1",
            "--containerd-hosts-dir",
            bad,
        ])
        .unwrap_err();
        assert!(
            errs.len() == 1
                && errs[0].contains("--containerd-hosts-dir")
                && errs[0].contains("empty entry"),
            "{bad:?}: {errs:?}"
        );
    }
}

#[test]
fn listeners_default_to_every_address_of_both_families_and_ipv6_literals_work() {
    let s = resolve(&["--dev-ephemeral-tls", "--advertise-addr", "fd00::7"]).unwrap();
    assert_eq!(s.quic_listen, "[::]:7651".parse().unwrap());
    assert_eq!(s.http_listen, "[::]:7652".parse().unwrap());
    assert_eq!(s.advertise, "[fd00::7]:7651".parse().unwrap());
    assert_eq!(s.mirror_listen, "127.0.0.1:7650".parse().unwrap());
    let s = resolve(&[
        "--dev-ephemeral-tls",
        "--quic-listen",
        "[fd00::8]:9000",
        "--mirror-listen",
        "[::1]:9001",
        "--scheduler",
        "https://[fd00::1]:7600",
    ])
    .unwrap();
    assert_eq!(s.advertise, "[fd00::8]:9000".parse().unwrap());
    assert_eq!(s.mirror_listen, "[::1]:9001".parse().unwrap());
    assert_eq!(s.schedulers, ["https://[fd00::1]:7600"]);
    let errs = resolve(&["--dev-ephemeral-tls", "--advertise-addr", "[fd00::7]"]).unwrap_err();
    assert!(errs[0].contains("without brackets"), "{errs:?}");
}

#[test]
fn containers_files_are_off_by_default_and_default_beside_registries_conf() {
    let base = ["--dev-ephemeral-tls", "--quic-listen", "127.0.0.1:1"];
    assert_eq!(resolve(&base).unwrap().containers, None);
    let s = resolve(
        &[
            &base[..],
            &[
                "--containers-registries-conf",
                "/host/etc/containers/registries.conf",
            ],
        ]
        .concat(),
    )
    .unwrap();
    assert_eq!(
        s.containers,
        Some(crate::registry::ContainersFiles {
            registries_conf: "/host/etc/containers/registries.conf".into(),
            drop_in_dir: "/host/etc/containers/registries.conf.d".into(),
            certs_dirs: vec![
                "/etc/containers/certs.d".into(),
                "/etc/docker/certs.d".into()
            ],
        })
    );
    let errs = resolve(
        &[
            &base[..],
            &[
                "--containers-registries-conf",
                "/r.conf",
                "--containers-registries-conf-dir",
                "/r.d",
                "--containers-certs-dir",
                "/a::/b",
            ],
        ]
        .concat(),
    )
    .unwrap_err();
    assert!(
        errs.len() == 1 && errs[0].contains("--containers-certs-dir"),
        "{errs:?}"
    );
}

#[test]
fn the_link_rate_is_auto_by_default_and_read_from_the_flag_or_file() {
    let base = ["--dev-ephemeral-tls", "--quic-listen", "127.0.0.1:1"];
    let s = resolve(&base).unwrap();
    assert_eq!(s.link_rate, LinkRate::Auto);
    let s = resolve(&[&base[..], &["--link-rate", "25gbit"]].concat()).unwrap();
    assert_eq!(s.link_rate, LinkRate::Mbps(25_000));
    let (_dir, path) = config_file("link_rate = \"unknown\"\n");
    let s = resolve(&[&base[..], &["--config", &path]].concat()).unwrap();
    assert_eq!(s.link_rate, LinkRate::Mbps(0));
    let errs = resolve(&[&base[..], &["--link-rate", "fast"]].concat()).unwrap_err();
    assert!(
        errs.len() == 1 && errs[0].starts_with("--link-rate: \"fast\""),
        "{errs:?}"
    );
}

#[test]
fn an_upload_rate_limit_of_zero_or_nonsense_is_refused() {
    let base = ["--dev-ephemeral-tls", "--quic-listen", "127.0.0.1:1"];
    for (bad, why) in [("0", "must be above 0"), ("fast", "not a size")] {
        let errs = resolve(&[&base[..], &["--upload-rate-limit", bad]].concat()).unwrap_err();
        assert!(
            errs.len() == 1
                && errs[0].starts_with("--upload-rate-limit: ")
                && errs[0].contains(why),
            "{errs:?}"
        );
    }
    let s = resolve(&[&base[..], &["--upload-rate-limit", "200MiB"]].concat()).unwrap();
    assert_eq!(s.upload_rate_limit.unwrap().get(), 200 << 20);
}

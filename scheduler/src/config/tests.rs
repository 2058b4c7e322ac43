//! Unit tests of the scheduler's settings: flags, file and defaults.

use super::*;

fn args(extra: &[&str]) -> Args {
    let mut v = vec!["shoal-scheduler", "--insecure-plaintext"];
    v.extend_from_slice(extra);
    Args::parse_from(v)
}

#[test]
fn defaults() {
    let s = Settings::resolve(args(&[])).unwrap();
    assert_eq!(s.grpc_listen, "[::]:7600".parse().unwrap());
    assert_eq!(s.http_listen, "[::]:7680".parse().unwrap());
    assert_eq!(s.core.peer_ttl, Duration::from_secs(30));
    assert_eq!(s.log_format, LogFormat::Text);
    assert_eq!(s.core.faster_source_wait, Duration::from_millis(250));
}

#[test]
fn the_faster_source_wait_is_bounded_and_zero_turns_it_off() {
    let s = Settings::resolve(args(&["--faster-source-wait", "0s"])).unwrap();
    assert_eq!(s.core.faster_source_wait, Duration::ZERO);
    let s = Settings::resolve(args(&["--faster-source-wait", "1s"])).unwrap();
    assert_eq!(s.core.faster_source_wait, Duration::from_secs(1));
    for bad in ["11s", "soon"] {
        let errs = Settings::resolve(args(&["--faster-source-wait", bad])).unwrap_err();
        assert!(
            errs.len() == 1 && errs[0].contains("--faster-source-wait"),
            "{bad}: {errs:?}"
        );
    }
}

#[test]
fn the_hand_over_ratio_is_bounded_and_zero_turns_it_off() {
    let s = Settings::resolve(args(&[])).unwrap();
    assert_eq!(s.core.hand_over_ratio, 2.0);
    let s = Settings::resolve(args(&["--hand-over-ratio", "0"])).unwrap();
    assert_eq!(s.core.hand_over_ratio, 0.0);
    let s = Settings::resolve(args(&["--hand-over-ratio", "1.5"])).unwrap();
    assert_eq!(s.core.hand_over_ratio, 1.5);
    for bad in ["1", "1.1", "0.5", "NaN", "inf", "2000", "fast"] {
        let errs = Settings::resolve(args(&["--hand-over-ratio", bad])).unwrap_err();
        assert!(
            errs.len() == 1 && errs[0].contains("--hand-over-ratio"),
            "{bad}: {errs:?}"
        );
    }
}

#[test]
fn every_error_at_once() {
    let errs = Settings::resolve(args(&[
        "--grpc-listen",
        "nope",
        "--peer-ttl",
        "5 parsecs",
        "--log-format",
        "xml",
        "--max-parents",
        "0",
    ]))
    .unwrap_err();
    assert_eq!(errs.len(), 4, "{errs:?}");
    assert!(errs[0].contains("--grpc-listen"));
    assert!(errs.iter().any(|e| e.contains("--peer-ttl")));
    assert!(errs.iter().any(|e| e.contains("--log-format")));
    assert!(errs.iter().any(|e| e.contains("--max-parents")));
}

#[test]
fn file_rejects_unknown_keys_and_flags_win() {
    let dir = std::env::temp_dir().join(format!("shoal-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.toml");
    std::fs::write(&good, "peer_ttl = \"45s\"\nmax_parents = \"6\"\n").unwrap();
    let s = Settings::resolve(args(&[
        "--config",
        good.to_str().unwrap(),
        "--max-parents",
        "3",
    ]))
    .unwrap();
    assert_eq!(s.core.peer_ttl, Duration::from_secs(45));
    assert_eq!(s.core.max_parents, 3);
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "peer_tll = \"45s\"\n").unwrap();
    let errs = Settings::resolve(args(&["--config", bad.to_str().unwrap()])).unwrap_err();
    assert!(
        errs[0].contains("bad.toml") && errs[0].contains("peer_tll"),
        "{errs:?}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn operator_token_from_flag_or_file_and_its_errors_never_show_it() {
    let dir = std::env::temp_dir().join(format!("shoal-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token = dir.join("token");
    std::fs::write(&token, "0123456789abcdef-secret\n").unwrap();
    let s = Settings::resolve(args(&["--operator-token-file", token.to_str().unwrap()])).unwrap();
    assert!(
        s.operator_token
            .unwrap()
            .matches(b"0123456789abcdef-secret")
    );
    assert!(
        Settings::resolve(args(&[]))
            .unwrap()
            .operator_token
            .is_none()
    );

    let cfg = dir.join("cfg.toml");
    std::fs::write(
        &cfg,
        format!("operator_token_file = {:?}\n", token.to_str().unwrap()),
    )
    .unwrap();
    let s = Settings::resolve(args(&["--config", cfg.to_str().unwrap()])).unwrap();
    assert!(s.operator_token.is_some());
    assert!(
        !format!("{s:?}").contains("secret"),
        "Settings' Debug shows the token"
    );

    let short = dir.join("short");
    std::fs::write(&short, "tiny-secret").unwrap();
    let errs = Settings::resolve(args(&[
        "--operator-token-file",
        short.to_str().unwrap(),
        "--max-parents",
        "0",
    ]))
    .unwrap_err();
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(
        errs.iter()
            .any(|e| e.contains("--operator-token-file") && e.contains("fewer than 16"))
    );
    assert!(errs.iter().all(|e| !e.contains("tiny-secret")), "{errs:?}");
    let missing = dir.join("missing");
    let errs =
        Settings::resolve(args(&["--operator-token-file", missing.to_str().unwrap()])).unwrap_err();
    assert!(
        errs[0].contains("missing") && errs[0].contains("cannot read"),
        "{errs:?}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn grpc_needs_tls_or_the_development_switch() {
    let errs = Settings::resolve(Args::parse_from(["shoal-scheduler"])).unwrap_err();
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].contains("--tls-dir is required") && errs[0].contains("--insecure-plaintext"),
        "{errs:?}"
    );
    let s = Settings::resolve(Args::parse_from(["shoal-scheduler", "--tls-dir", "/pki"])).unwrap();
    assert_eq!(s.grpc_security, GrpcSecurity::MutualTls("/pki".into()));
    assert!(!s.allow_shared_identity);
    let s = Settings::resolve(args(&[])).unwrap();
    assert_eq!(s.grpc_security, GrpcSecurity::InsecurePlaintext);
    let errs = Settings::resolve(args(&["--tls-dir", "/pki"])).unwrap_err();
    assert!(errs[0].contains("exclude each other"), "{errs:?}");
}

#[test]
fn durations() {
    assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
    assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
    assert!(parse_duration("2 weeks").is_err());
    assert!(parse_duration("").is_err());
}

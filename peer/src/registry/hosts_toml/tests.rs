use std::path::{Path, PathBuf};
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::registry::Object;

const PATH: &str = "/etc/containerd/certs.d/docker.io/hosts.toml";
const IMPLICIT: &str = "https://registry-1.docker.io";

fn parse_ok(text: &str) -> HostsToml {
    parse(text, Path::new(PATH), IMPLICIT).unwrap()
}

fn config_error(text: &str) -> (PathBuf, Option<usize>, String) {
    match parse(text, Path::new(PATH), IMPLICIT) {
        Err(RegistryError::Config {
            path,
            line,
            message,
        }) => (path, line, message),
        other => panic!("expected a config error, got {other:?}"),
    }
}

fn urls(h: &HostsToml) -> Vec<&str> {
    h.endpoints.iter().map(|e| e.url.as_str()).collect()
}

fn named(path: &str, line: usize) -> NamedFile {
    NamedFile {
        path: PathBuf::from(path),
        line: Some(line),
    }
}

#[test]
fn the_full_format() {
    let h = parse_ok(
        r#"server = "https://registry-1.docker.io"
ca = "top.crt"

[host."https://mirror.example:5000"]
  capabilities = ["pull", "RESOLVE"]
  ca = ["mirror.crt", "/etc/certs/special.pem"]
  client = [["client.cert", "client.key"], ["both.pem", ""]]
  skip_verify = true
  dial_timeout = "1s"
  proxy = "http://proxy.example:3128"
  [host."https://mirror.example:5000".header]
    x-custom = "one"
    x-multi = ["a", "b"]

[host."public-mirror.example"]
  capabilities = ["pull"]
  client = "single.pem"

[host."https://odd.example/api/upstream"]
  override_path = true
  client = ["c1.pem", "c2.pem"]
"#,
    );
    assert_eq!(
        urls(&h),
        [
            "https://mirror.example:5000/v2",
            "https://public-mirror.example/v2",
            "https://odd.example/api/upstream",
            "https://registry-1.docker.io/v2",
        ]
    );
    assert!(h.ignored.is_empty(), "{:?}", h.ignored);
    let [mirror, public, odd, server] = &h.endpoints[..] else {
        panic!("four endpoints")
    };
    let dir = "/etc/containerd/certs.d/docker.io";
    assert_eq!(mirror.role, Role::Mirror);
    assert_eq!(
        mirror.capabilities,
        Capabilities {
            pull: true,
            resolve: true,
            push: false
        }
    );
    assert_eq!(
        mirror.ca,
        [
            named(&format!("{dir}/mirror.crt"), 6),
            named("/etc/certs/special.pem", 6)
        ]
    );
    assert_eq!(
        mirror.client,
        [
            ClientPair {
                cert: named(&format!("{dir}/client.cert"), 7),
                key: Some(named(&format!("{dir}/client.key"), 7)),
            },
            ClientPair {
                cert: named(&format!("{dir}/both.pem"), 7),
                key: None,
            },
        ]
    );
    assert!(mirror.skip_verify);
    assert_eq!(mirror.dial_timeout, Some(Duration::from_secs(1)));
    assert_eq!(
        mirror.proxy.as_ref().map(|u| u.as_str()),
        Some("http://proxy.example:3128/")
    );
    assert_eq!(
        mirror.headers,
        [
            ("x-custom".to_owned(), "one".to_owned()),
            ("x-multi".to_owned(), "a".to_owned()),
            ("x-multi".to_owned(), "b".to_owned()),
        ]
    );
    assert_eq!(
        public.capabilities,
        Capabilities {
            pull: true,
            resolve: false,
            push: false
        }
    );
    assert_eq!(public.client.len(), 1);
    assert!(public.ca.is_empty() && !public.skip_verify && public.headers.is_empty());
    assert_eq!(odd.client.len(), 2);
    assert_eq!(odd.capabilities, Capabilities::ALL);
    // Top-level settings belong to the server.
    assert_eq!(server.role, Role::Server);
    assert_eq!(server.ca, [named(&format!("{dir}/top.crt"), 2)]);
    assert_eq!(server.capabilities, Capabilities::ALL);
}

#[test]
fn without_server_the_implicit_one_gets_the_top_level_settings() {
    let h = parse_ok("skip_verify = true\n[header]\nx-a = \"1\"\n");
    assert_eq!(urls(&h), ["https://registry-1.docker.io/v2"]);
    assert!(h.endpoints[0].skip_verify);
    assert_eq!(h.endpoints[0].headers, [("x-a".into(), "1".into())]);
}

#[test]
fn urls_get_a_scheme_and_the_v2_root_unless_overridden() {
    let h = parse_ok(
        r#"server = "plain.example:5000"
[host."http://a.example/v2"]
[host."https://b.example/prefix/"]
[host."https://c.example"]
  override_path = true
[host."https://d.example/x/v2?q=1"]
[host."https://user:pw@e.example"]
"#,
    );
    assert_eq!(
        urls(&h),
        [
            "http://a.example/v2",
            "https://b.example/prefix/v2",
            "https://c.example/",
            "https://d.example/x/v2",
            "https://e.example/v2",
            "https://plain.example:5000/v2",
        ]
    );
    assert_eq!(h.endpoints[2].api_root(), "https://c.example");
    assert_eq!(h.endpoints[0].api_root(), "http://a.example/v2");
}

#[test]
fn hosts_keep_file_order_even_with_subtables_between() {
    let h = parse_ok(
        r#"[host."https://z.example"]
[host."https://z.example".header]
  a = "b"
[host."https://a.example"]
[host."https://m.example"]
"#,
    );
    assert_eq!(
        urls(&h),
        [
            "https://z.example/v2",
            "https://a.example/v2",
            "https://m.example/v2",
            "https://registry-1.docker.io/v2",
        ]
    );
}

#[test]
fn broken_toml_names_the_file_and_line() {
    let (path, line, message) = config_error("server = \"https://x\"\n\n[host.\"https://m\"\n");
    assert_eq!(path, Path::new(PATH));
    assert_eq!(line, Some(3));
    assert!(!message.is_empty());
    let err = parse("a = 1\nb = = 2\n", Path::new(PATH), IMPLICIT).unwrap_err();
    assert!(err.to_string().starts_with(&format!("{PATH}:2: ")), "{err}");
}

#[test]
fn wrong_types_name_the_line() {
    for (text, line, needle) in [
        ("server = 5\n", 1, "`server` must be a string"),
        (
            "\n[host.\"https://m\"]\nskip_verify = \"yes\"\n",
            3,
            "skip_verify",
        ),
        (
            "[host.\"https://m\"]\ncapabilities = [\"pull\", \"fly\"]\n",
            2,
            "\"fly\"",
        ),
        ("ca = 7\n", 1, "`ca`"),
        ("ca = [\"a.crt\",\n  7]\n", 2, "`ca`"),
        ("client = [[\"a\"]]\n", 1, "[cert, key]"),
        ("dial_timeout = \"soon\"\n", 1, "dial_timeout"),
        ("proxy = \"socks5://p:1080\"\n", 1, "proxy"),
        ("host = \"https://m\"\n", 1, "`host`"),
        ("[host]\n\"https://m\" = 1\n", 2, "must be a table"),
        ("server = \"ftp://x\"\n", 1, "not a registry URL"),
        ("[header]\n\"bad name\" = \"v\"\n", 2, "header name"),
    ] {
        let (path, got_line, message) = config_error(text);
        assert_eq!(path, Path::new(PATH), "{text}");
        assert_eq!(got_line, Some(line), "{text}: {message}");
        assert!(message.contains(needle), "{text}: {message}");
    }
}

#[test]
fn header_values_are_never_echoed() {
    let (_, line, message) = config_error("[header]\nauthorization = \"Bearer s3cret\\n\"\n");
    assert_eq!(line, Some(2));
    assert!(!message.contains("s3cret"), "{message}");
}

#[test]
fn unknown_keys_are_ignored_and_reported() {
    let h =
        parse_ok("mirror_weight = 3\n[host.\"https://m\"]\n  capabilities = []\n  retries = 2\n");
    assert_eq!(h.ignored, ["host.\"https://m\".retries", "mirror_weight"]);
    assert_eq!(h.endpoints[0].capabilities, Capabilities::ALL);
}

#[test]
fn own_mirror_entries_are_dropped_wherever_they_are() {
    let h = parse_ok(
        r#"server = "http://localhost:7650"
[host."http://127.0.0.1:7650"]
  capabilities = ["pull", "resolve"]
[host."https://mirror.example"]
[host."http://127.0.0.1:7651"]
"#,
    );
    let own = [Authority::parse("http://127.0.0.1:7650").unwrap()];
    let (kept, dropped) = without_own_mirrors(h.endpoints, &own);
    let kept: Vec<&str> = kept.iter().map(|e| e.url.as_str()).collect();
    assert_eq!(
        kept,
        ["https://mirror.example/v2", "http://127.0.0.1:7651/v2"]
    );
    assert_eq!(dropped.len(), 2);
}

#[test]
fn capabilities_decide_what_an_endpoint_may_serve() {
    let h = parse_ok(
        r#"[host."https://pull-only"]
  capabilities = ["pull"]
[host."https://resolve-only"]
  capabilities = ["resolve"]
"#,
    );
    let blob = Object::Blob(shoal_proto::Digest::from_sha256([1; 32]));
    let by_digest = Object::Manifest(format!("sha256:{}", "ab".repeat(32)));
    let by_tag = Object::Manifest("latest".into());
    let serving = |o: &Object| -> Vec<&str> {
        h.endpoints
            .iter()
            .filter(|e| e.may_serve(o))
            .map(|e| e.url.host_str().unwrap())
            .collect()
    };
    assert_eq!(serving(&blob), ["pull-only", "registry-1.docker.io"]);
    assert_eq!(serving(&by_digest), ["pull-only", "registry-1.docker.io"]);
    assert_eq!(serving(&by_tag), ["resolve-only", "registry-1.docker.io"]);
}

#[test]
fn docker_certificate_layout() {
    let dir = Path::new("/certs.d/r.example");
    let names: Vec<String> = ["z.crt", "a.crt", "me.cert", "me.key", "other.cert", "x.txt"]
        .map(String::from)
        .to_vec();
    let e = from_cert_files(dir, &names, "https://r.example").unwrap();
    assert_eq!(e.url.as_str(), "https://r.example/v2");
    let file = |n: &str| NamedFile {
        path: dir.join(n),
        line: None,
    };
    assert_eq!(e.ca, [file("a.crt"), file("z.crt")]);
    assert_eq!(
        e.client,
        [
            ClientPair {
                cert: file("me.cert"),
                key: Some(file("me.key"))
            },
            ClientPair {
                cert: file("other.cert"),
                key: None
            },
        ]
    );
}

#[test]
fn go_durations() {
    assert_eq!(go_duration("1s"), Some(Duration::from_secs(1)));
    assert_eq!(go_duration("500ms"), Some(Duration::from_millis(500)));
    assert_eq!(go_duration("1m30s"), Some(Duration::from_secs(90)));
    assert_eq!(go_duration("1.5h"), Some(Duration::from_secs(5400)));
    assert_eq!(go_duration("0"), Some(Duration::ZERO));
    assert_eq!(go_duration("10us"), Some(Duration::from_micros(10)));
    for bad in ["", "1", "s", "-1s", "1x", "1s2", "abc"] {
        assert_eq!(go_duration(bad), None, "{bad}");
    }
}

proptest! {
    /// Untrusted input: any text parses or fails with a config error naming this file.
    #[test]
    fn never_panics_on_arbitrary_text(text in "\\PC{0,200}") {
        match parse(&text, Path::new(PATH), IMPLICIT) {
            Ok(h) => prop_assert!(!h.endpoints.is_empty()),
            Err(RegistryError::Config { path, .. }) => prop_assert_eq!(path, PathBuf::from(PATH)),
            Err(other) => prop_assert!(false, "unexpected {other:?}"),
        }
    }

    /// Near-valid input: a valid file with one byte range replaced.
    #[test]
    fn never_panics_on_mutated_files(at in 0usize..200, len in 0usize..8, with in "[\\[\\]\"=.,a-z0-9\n ]{0,6}") {
        let base = "server = \"https://r.example\"\nca = [\"a.crt\"]\n[host.\"https://m.example\"]\n  capabilities = [\"pull\"]\n  client = [[\"c\", \"k\"]]\n  [host.\"https://m.example\".header]\n    x = [\"1\", \"2\"]\n";
        let at = at.min(base.len());
        let end = (at + len).min(base.len());
        let text = format!("{}{}{}", &base[..at], with, &base[end..]);
        let _ = parse(&text, Path::new(PATH), IMPLICIT);
    }
}

//! End to end against a real containerd 1.6 (`ctr`), a real registry (`docker-registry`)
//! and skopeo: after `shoal-peer containerd configure`, a pull asks the mirror first and,
//! when the mirror answers 404 or 500, falls back to the upstream registry and succeeds;
//! after `restore`, the mirror is out of the path again.
//!
//! Needs root and the Debian packages containerd, docker-registry and skopeo. Skips with
//! a printed reason when they are missing, fails when `CI=true`. Traffic stays on 127.0.0.1.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use shoal_tests::containerd::Containerd;
use shoal_tests::image::OciImage;
use shoal_tests::registry::Registry;
use shoal_tests::{Recorder, require_root, require_tools, wait_until};

fn shoal_peer(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_shoal-peer"))
        .args(args)
        .env("SHOAL_LOG", "warn")
        .output()
        .expect("run shoal-peer")
}

fn available() -> bool {
    const NAME: &str = "containerd_real";
    if !require_tools(NAME, &["containerd", "ctr", "docker-registry", "skopeo"]) {
        return false;
    }
    require_root(NAME, "containerd")
}

#[test]
fn pulls_go_to_the_mirror_first_then_upstream_and_restore_removes_it() {
    if !available() {
        return;
    }
    // Short path: containerd's socket must fit in 107 bytes.
    let tmp = tempfile::Builder::new()
        .prefix("shoal")
        .tempdir_in("/tmp")
        .unwrap();
    let registry = Registry::start(&tmp.path().join("registry")).unwrap();
    let upstream = registry.addr().to_string();
    let containerd = Containerd::start(&tmp.path().join("c")).unwrap();

    for status in [404, 500] {
        // A distinct image per round, so nothing is already in containerd's content store.
        let tag = format!("v{status}");
        let content = format!("hello from shoal, round {status}\n");
        let image = OciImage::build(
            &tmp.path().join(format!("image-{status}")),
            &tag,
            &[("hello.txt", content.as_bytes())],
        )
        .unwrap();
        image.push(&upstream, "demo/hello", &tag).unwrap();
        let reference = format!("{upstream}/demo/hello:{tag}");
        let mirror = Recorder::start(status).unwrap();
        let hosts = tmp.path().join(format!("hosts-{status}"));
        let registry_dir = hosts.join(&upstream);
        std::fs::create_dir_all(&registry_dir).unwrap();
        // The upstream is plain HTTP: an operator's hosts.toml says so, and configure keeps it.
        let original = format!("# local registry\nserver = \"http://{upstream}\"\n");
        std::fs::write(registry_dir.join("hosts.toml"), &original).unwrap();
        let mirror_url = format!("http://{}", mirror.addr());
        let hosts_arg = hosts.to_str().unwrap();
        let args = [
            "--hosts-dir",
            hosts_arg,
            "--mirror-url",
            &mirror_url,
            "--registry",
            &upstream,
            "--no-default-host",
        ];

        let out = shoal_peer(&[&["containerd", "configure"][..], &args[..]].concat());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let configured = std::fs::read_to_string(registry_dir.join("hosts.toml")).unwrap();
        assert_eq!(
            configured,
            format!(
                "# local registry\nserver = \"http://{upstream}\"\n\n\
                 [host.\"{mirror_url}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  dial_timeout = \"1s\"\n"
            )
        );

        let before_upstream = registry.requests().len();
        let out = containerd.pull(&hosts, &reference).unwrap();
        assert!(
            out.status.success(),
            "pull failed: {}\n{}\ncontainerd log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            containerd.log()
        );

        let ns = upstream.replace(':', "%3A");
        let seen = mirror.requests();
        assert_eq!(
            seen.first().map(String::as_str),
            Some(format!("HEAD /v2/demo/hello/manifests/{tag}?ns={ns} HTTP/1.1").as_str()),
            "mirror saw {seen:?}"
        );
        assert!(
            seen.iter()
                .any(|l| l.contains(&format!("/blobs/{}?ns=", image.layer_digest))),
            "the mirror was asked for the layer too: {seen:?}"
        );
        // The registry logs a request after answering it: wait for the lines to land.
        let wanted = [
            format!("HEAD /v2/demo/hello/manifests/{tag} HTTP/1.1"),
            format!(
                "GET /v2/demo/hello/manifests/{} HTTP/1.1",
                image.manifest_digest
            ),
            format!("GET /v2/demo/hello/blobs/{} HTTP/1.1", image.layer_digest),
        ];
        let served = wait_until("upstream access log", Duration::from_secs(10), || {
            let seen = &registry.requests()[before_upstream..];
            wanted.iter().all(|w| seen.contains(w))
        });
        assert!(
            served.is_ok(),
            "upstream should have served {wanted:?}, saw {:?}",
            &registry.requests()[before_upstream..]
        );

        // restore: the file is back byte for byte and pulls no longer ask the mirror.
        let out = shoal_peer(&[&["containerd", "restore"][..], &args[..]].concat());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            std::fs::read_to_string(registry_dir.join("hosts.toml")).unwrap(),
            original
        );
        assert_eq!(only_entries(&hosts), vec![upstream.clone()]);
        let asked = mirror.requests().len();
        let rm = containerd.ctr(&["image", "rm", &reference]).unwrap();
        assert!(
            rm.status.success(),
            "{}",
            String::from_utf8_lossy(&rm.stderr)
        );
        let out = containerd.pull(&hosts, &reference).unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(mirror.requests().len(), asked, "mirror asked after restore");
        let rm = containerd.ctr(&["image", "rm", &reference]).unwrap();
        assert!(
            rm.status.success(),
            "{}",
            String::from_utf8_lossy(&rm.stderr)
        );
    }
}

fn only_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

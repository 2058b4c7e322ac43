//! Bad input to the registry mirror of a real `shoal-peer run` process: each gets a
//! clear 4xx with an OCI error body (or hyper's 431 for oversized headers), nothing
//! is written outside the data dir, and good requests still work afterwards. And an
//! upstream that refuses the download's `GET` after answering the `HEAD`: the refusal
//! reaches the client as upstream gave it (404, 401 with its challenge), not as a 503.

use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use shoal_tests::swarm::{PeerOptions, PeerProcess};
use shoal_tests::upstream::{CountingUpstream, Refusal};

const REPO: &str = "input/blob";

struct Setup {
    dir: tempfile::TempDir,
    peer: PeerProcess,
    upstream: CountingUpstream,
    digest: String,
    data: Arc<Vec<u8>>,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let data: Arc<Vec<u8>> = Arc::new((0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect());
    let digest = format!(
        "sha256:{}",
        Sha256::digest(&data[..])
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let upstream = CountingUpstream::start(REPO, &digest, data.clone(), Duration::ZERO)
        .await
        .unwrap();
    let tls = dir.path().join("tls");
    PeerProcess::tls_init(&tls).unwrap();
    let peer = PeerProcess::start(
        dir.path(),
        "peer",
        &PeerOptions {
            scheduler: None,
            default_upstream: Some(upstream.url()),
            hosts_dir: None,
            tls_dir: tls,
            extra: Vec::new(),
        },
    )
    .await
    .unwrap();
    Setup {
        dir,
        peer,
        upstream,
        digest,
        data,
    }
}

/// Sends `path` raw (no client-side normalisation of `..`) with extra header lines.
async fn raw(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, head.to_owned(), body.to_owned())
}

fn assert_oci(code: u16, body: &str, want: u16, error_code: &str, case: &str) {
    assert_eq!(code, want, "{case}: {body}");
    let v: serde_json::Value = serde_json::from_str(body.trim())
        .unwrap_or_else(|e| panic!("{case}: body is not JSON ({e}): {body:?}"));
    assert_eq!(v["errors"][0]["code"], error_code, "{case}: {body}");
    assert!(
        !v["errors"][0]["message"].as_str().unwrap_or("").is_empty(),
        "{case}: no message"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_a_clear_4xx_and_nothing_is_written() {
    let s = setup().await;
    let m = s.peer.mirror_addr();
    let d = &s.digest;
    let before = snapshot(s.dir.path());

    let cases: Vec<(String, &str, u16, &str)> = vec![
        (format!("/v2/../../etc/blobs/{d}"), "", 400, "NAME_INVALID"),
        (format!("/v2/a/%2e%2e/b/blobs/{d}"), "", 400, "NAME_INVALID"),
        (format!("/v2/UPPER/blobs/{d}"), "", 400, "NAME_INVALID"),
        ("/v2/a/blobs/sha256:1234".into(), "", 400, "DIGEST_INVALID"),
        (
            "/v2/a/blobs/md5:d41d8cd98f00b204e9800998ecf8427e".into(),
            "",
            400,
            "DIGEST_INVALID",
        ),
        (
            "/v2/a/blobs/..%2f..%2fetc%2fpasswd".into(),
            "",
            400,
            "DIGEST_INVALID",
        ),
        ("/v2/a/manifests/-bad".into(), "", 400, "TAG_INVALID"),
        ("/v2/a/tags/list".into(), "", 400, "UNSUPPORTED"),
        (
            format!("/v2/{REPO}/blobs/{d}?ns=evil.example%2Fx"),
            "",
            400,
            "NAME_INVALID",
        ),
        (
            format!("/v2/{REPO}/blobs/{d}?ns=unknown.example.com"),
            "",
            400,
            "NAME_INVALID",
        ),
        (
            format!("/v2/{REPO}/blobs/{d}"),
            "Range: bytes=5-2\r\n",
            400,
            "RANGE_INVALID",
        ),
        (
            format!("/v2/{REPO}/blobs/{d}"),
            "Range: bytes=0-1,4-5\r\n",
            400,
            "RANGE_INVALID",
        ),
        (
            format!("/v2/{REPO}/blobs/{d}"),
            "Range: bytes=99999999-\r\n",
            416,
            "RANGE_INVALID",
        ),
        ("/metrics".into(), "", 400, "UNSUPPORTED"),
    ];
    for (path, headers, want, code) in &cases {
        let (got, _, body) = raw(m, "GET", path, headers).await;
        assert_oci(got, &body, *want, code, path);
    }
    // None of them fetched the blob: a bad or unsatisfiable range is refused before
    // any download starts.
    assert_eq!(
        s.upstream
            .served()
            .gets
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "a refused request fetched the blob from upstream"
    );
    // HEAD of a blob not on the node yet: the size upstream gave, and nothing fetched.
    let (got, head, _) = raw(m, "HEAD", &format!("/v2/{REPO}/blobs/{d}"), "").await;
    assert_eq!(got, 200, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-length: 3000000"),
        "HEAD of an uncached blob: {head}"
    );
    assert_eq!(
        s.upstream
            .served()
            .gets
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    // Writes are refused: the mirror is read-only.
    let (got, _, body) = raw(
        m,
        "PUT",
        &format!("/v2/{REPO}/blobs/{d}"),
        "Content-Length: 0\r\n",
    )
    .await;
    assert_oci(got, &body, 405, "UNSUPPORTED", "PUT");
    // Oversized headers: refused by the HTTP layer before any handler runs.
    let huge = format!("X-Big: {}\r\n", "a".repeat(1 << 20));
    let (got, _, _) = raw(m, "GET", &format!("/v2/{REPO}/blobs/{d}"), &huge).await;
    assert!(
        (400..500).contains(&got) || got == 0,
        "oversized headers answered {got}"
    );

    // Nothing was written outside the data dir (and the refused blob requests wrote nothing).
    let after = snapshot(s.dir.path());
    let outside: Vec<_> = after
        .difference(&before)
        .filter(|p| !p.starts_with(s.dir.path().join("peer")) && !p.ends_with(".log"))
        .collect();
    assert!(
        outside.is_empty(),
        "written outside the data dir: {outside:?}"
    );
    assert!(!std::path::Path::new("/etc/blobs").exists());

    // The mirror still serves good requests: a 206 from an offset and the whole blob.
    let (got, head, body) = raw(
        m,
        "GET",
        &format!("/v2/{REPO}/blobs/{d}"),
        "Range: bytes=2999990-\r\n",
    )
    .await;
    assert_eq!(got, 206, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-range: bytes 2999990-2999999/3000000"),
        "{head}"
    );
    assert_eq!(body.as_bytes(), &s.data[2_999_990..]);
    let whole = reqwest::get(format!("{}/v2/{REPO}/blobs/{d}", s.peer.mirror_url()))
        .await
        .unwrap();
    assert_eq!(whole.status(), 200);
    assert_eq!(
        whole.headers()["docker-content-digest"].to_str().unwrap(),
        d.as_str()
    );
    assert_eq!(whole.bytes().await.unwrap().as_ref(), &s.data[..]);
    // An unknown blob upstream is a 404 from upstream, relayed.
    let zero = format!("sha256:{}", "0".repeat(64));
    let (got, _, body) = raw(m, "GET", &format!("/v2/{REPO}/blobs/{zero}"), "").await;
    assert_oci(got, &body, 404, "BLOB_UNKNOWN", "unknown blob");
    assert!(s.upstream.bytes() >= s.data.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_refusal_found_mid_download_is_answered_as_upstream_gave_it() {
    let s = setup().await;
    let m = s.peer.mirror_addr();
    let path = format!("/v2/{REPO}/blobs/{}", s.digest);
    let served = s.upstream.served();
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::SeqCst);

    // The blob is gone upstream between the mirror's HEAD and the download's GET.
    s.upstream.refuse_gets(Some(Refusal {
        status: 404,
        www_authenticate: None,
    }));
    let (got, _, body) = raw(m, "GET", &path, "").await;
    assert_oci(got, &body, 404, "BLOB_UNKNOWN", "GET refused with 404");
    assert_eq!(load(&served.heads), 1, "the mirror's HEAD succeeded first");
    assert_eq!(load(&served.refused), 1, "the download's GET was refused");

    // The token is good for the HEAD but not the GET: 401 with upstream's challenge,
    // so containerd can fetch a token and come back.
    let challenge = r#"Bearer realm="http://127.0.0.1:9/token",service="test",scope="repository:input/blob:pull""#;
    s.upstream.refuse_gets(Some(Refusal {
        status: 401,
        www_authenticate: Some(challenge.into()),
    }));
    let (got, head, body) = raw(m, "GET", &path, "").await;
    assert_oci(got, &body, 401, "UNAUTHORIZED", "GET refused with 401");
    assert!(
        head.contains(&format!("www-authenticate: {challenge}")),
        "no challenge: {head}"
    );
    assert_eq!(load(&served.refused), 2);
    assert_eq!(s.peer.metric("shoal_mirror_failed_total").await, 0.0);
    assert_eq!(
        s.peer.metric("shoal_peer_downloads_failed_total").await,
        2.0
    );

    // Upstream serves again: nothing of the failed downloads stands in the way.
    s.upstream.refuse_gets(None);
    let whole = reqwest::get(format!("{}{path}", s.peer.mirror_url()))
        .await
        .unwrap();
    assert_eq!(whole.status(), 200);
    assert_eq!(whole.bytes().await.unwrap().as_ref(), &s.data[..]);
}

fn snapshot(dir: &std::path::Path) -> std::collections::BTreeSet<std::path::PathBuf> {
    let mut out = std::collections::BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p.clone());
            }
            out.insert(p);
        }
    }
    out
}

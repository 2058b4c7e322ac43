//! Preheat end to end (issue 18, part 1): a real `docker-registry` upstream, a real
//! `shoal-scheduler` with an operator token, four real `shoal-peer` processes that reach
//! the registry through their own `hosts.toml`.
//!
//! [`preheat_count_nodes_cancel_and_refusals`]:
//! 1. a 3-layer image preheated on `count=3` of the 4 peers: the job ends `succeeded`,
//!    each of the 3 parts `succeeded` with every blob; the scheduler lists the 3 as
//!    complete holders of every blob; the registry served each blob once in all;
//! 2. a pull of the image through a preheated peer's mirror gets the right bytes and
//!    makes no upstream blob GET (the access check's `HEAD`s are allowed);
//! 3. `nodes=[the 4th peer, ghost]`: the 4th gets every blob from the swarm (still one
//!    upstream copy in all); the unknown name is a failed part, so the job `failed`;
//! 4. a job whose upstream never answers, cancelled: `cancelled`, every part too, and
//!    the peers log the cancel;
//! 5. refused: no token (401), a wrong one (401), bad JSON, a bad image, a scope no
//!    peer matches (400), an unknown job (404), a bad job id (400); an image that does
//!    not exist fails each part with the registry's 404.
//!
//! [`a_private_image_preheats_with_a_credential_that_no_log_shows`]: an `htpasswd`
//! registry; without a credential each part fails with the 401; with one, it succeeds;
//! the mirror of a preheated node still refuses a caller without credentials (access
//! check) and serves one with them without an upstream blob GET; the password, and its
//! Basic encoding, appear in no log of the scheduler or the peers.
//!
//! Asserted: states, digests, counts of registry GETs. No duration.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use shoal_tests::image::{OciImage, random_bytes};
use shoal_tests::registry::{Registry, RegistryAuth, RegistryOptions};
use shoal_tests::swarm::{PeerOptions, PeerProcess, SchedulerProcess};
use shoal_tests::token_auth::{AuthClient, htpasswd_line};

const TOKEN: &str = "preheat-test-operator-token-0123456789";
const REPO: &str = "team/app";
/// Bound on every wait (a hang, not a timing).
const WAIT: Duration = Duration::from_secs(120);

fn tools_present(test: &str, more: &[&str]) -> bool {
    let mut tools = vec!["docker-registry", "skopeo"];
    tools.extend(more);
    shoal_tests::require_tools(test, &tools)
}

struct Cluster {
    sched: SchedulerProcess,
    peers: Vec<PeerProcess>,
    token_file: PathBuf,
}

/// A scheduler with the operator token and `n` peers with `hosts`.
async fn cluster(dir: &Path, hosts: PathBuf, n: usize) -> Cluster {
    let tls = dir.join("tls");
    PeerProcess::tls_init(&tls).unwrap();
    let token_file = dir.join("operator-token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let sched = SchedulerProcess::start_with(
        &dir.join("scheduler"),
        &tls,
        &[
            "--operator-token-file".into(),
            token_file.display().to_string(),
        ],
    )
    .await
    .unwrap();
    let opts = PeerOptions {
        scheduler: Some(sched.grpc_url()),
        default_upstream: None,
        hosts_dir: Some(hosts),
        tls_dir: tls,
        extra: vec![],
    };
    let mut peers = Vec::new();
    for i in 0..n {
        peers.push(
            PeerProcess::start(dir, &format!("node-{i}"), &opts)
                .await
                .unwrap(),
        );
    }
    wait_sessions(&sched, n).await;
    Cluster {
        sched,
        peers,
        token_file,
    }
}

/// Waits until `n` peers have joined `sched` with their session open (a job orders
/// only those).
async fn wait_sessions(sched: &SchedulerProcess, n: usize) {
    sched.wait_for_peers(n).await.unwrap();
    let start = Instant::now();
    loop {
        let peers = sched.peers().await.unwrap_or_default();
        if peers.len() == n && peers.iter().all(|p| p["session_open"] == true) {
            return;
        }
        assert!(start.elapsed() < WAIT, "sessions never opened: {peers:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `hosts.toml` for each `ns`: plain HTTP to it.
fn hosts_dir(dir: &Path, ns: &[&str]) -> PathBuf {
    let hosts = dir.join("certs.d");
    for ns in ns {
        std::fs::create_dir_all(hosts.join(ns)).unwrap();
        std::fs::write(
            hosts.join(ns).join("hosts.toml"),
            format!("server = \"http://{ns}\"\n"),
        )
        .unwrap();
    }
    hosts
}

/// A request to the operator API: status and JSON body.
async fn api(
    sched: &SchedulerProcess,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<String>,
) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = reqwest::Client::new().request(method, format!("{}{path}", sched.http_url()));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn post_job(sched: &SchedulerProcess, body: Value) -> Value {
    let (status, job) = api(
        sched,
        "POST",
        "/api/v1/preheat",
        Some(TOKEN),
        Some(body.to_string()),
    )
    .await;
    assert_eq!(status, 201, "{job}");
    job
}

/// Polls the job until it is no longer running; its last view.
async fn finished(sched: &SchedulerProcess, id: &str) -> Value {
    let start = Instant::now();
    loop {
        let (status, job) = api(sched, "GET", &format!("/api/v1/preheat/{id}"), None, None).await;
        assert_eq!(status, 200, "{job}");
        if job["state"] != "running" {
            return job;
        }
        assert!(
            start.elapsed() < WAIT,
            "job {id} never ended: {job}\n{}",
            sched.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn part_states(job: &Value) -> Vec<(String, String)> {
    job["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["peer"].as_str().unwrap().to_owned(),
                p["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Blob GETs (200/206) the registry served for `digest`.
fn gets(reg: &Registry, digest: &str) -> usize {
    reg.access_log()
        .iter()
        .filter(|a| a.is_blob_get(digest) && (a.status == 200 || a.status == 206))
        .count()
}

/// A 3-layer image: 3 MiB and 1 MiB of incompressible bytes and a small file.
fn image(dir: &Path, seed: u64) -> OciImage {
    let big = random_bytes(3 << 20, seed);
    let mid = random_bytes(1 << 20, seed + 1);
    OciImage::build_layers(
        &dir.join(format!("oci-{seed}")),
        "v1",
        &[
            &[("big.bin", &big)],
            &[("mid.bin", &mid)],
            &[("etc/hello", b"hello\n")],
        ],
    )
    .unwrap()
}

/// The ids of the peers that hold `digest` complete, as the scheduler lists them.
async fn holders(sched: &SchedulerProcess, digest: &str) -> Vec<String> {
    let mut h: Vec<String> = sched
        .task(digest)
        .await
        .map(|t| {
            t["holders"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|h| h["complete"] == true)
                .map(|h| h["peer"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default();
    h.sort();
    h
}

/// The peer ids, by asking the scheduler which peer has which mirror is not
/// possible: peers are named `node-i` by their node certificates.
fn peer_id(i: usize) -> String {
    format!("node-{i}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preheat_count_nodes_cancel_and_refusals() {
    if !tools_present("preheat", &[]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), 181);
    let storage = dir.path().join("storage");
    Registry::stage(&img, REPO, "v1", &dir.path().join("stage"), &storage).unwrap();
    let reg = Registry::start_with(
        &dir.path().join("registry"),
        &RegistryOptions {
            storage: Some(storage),
            ..RegistryOptions::default()
        },
    )
    .unwrap();
    let ns = reg.addr().to_string();
    // An upstream that accepts connections and never answers: a job that stays running.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_ns = silent.local_addr().unwrap().to_string();
    let _held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = silent.accept().await {
            conns.push(c);
        }
    });
    let hosts = hosts_dir(dir.path(), &[&ns, &silent_ns]);
    let c = cluster(dir.path(), hosts, 4).await;

    // 1. count=3.
    let job = post_job(
        &c.sched,
        json!({"image": format!("{ns}/{REPO}:v1"), "scope": {"count": 3}}),
    )
    .await;
    assert_eq!(job["summary"]["peers"], 3, "{job}");
    assert_eq!(job["image"], format!("{ns}/{REPO}:v1"));
    let job = finished(&c.sched, job["id"].as_str().unwrap()).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let total: u64 = img.blobs.iter().map(|b| b.size).sum();
    let mut chosen = Vec::new();
    for p in job["peers"].as_array().unwrap() {
        assert_eq!(p["state"], "succeeded", "{p}");
        assert_eq!(p["blobs_total"], img.blobs.len(), "{p}");
        assert_eq!(p["blobs_done"], img.blobs.len(), "{p}");
        assert_eq!(p["bytes_total"], total, "{p}");
        chosen.push(p["peer"].as_str().unwrap().to_owned());
    }
    chosen.sort();
    for b in &img.blobs {
        assert_eq!(holders(&c.sched, &b.digest).await, chosen, "{}", b.digest);
        assert_eq!(
            gets(&reg, &b.digest),
            1,
            "upstream served {} once",
            b.digest
        );
    }

    // 2. A pull through a preheated peer's mirror: no upstream blob GET.
    let preheated = (0..4).find(|i| chosen.contains(&peer_id(*i))).unwrap();
    let mirror = c.peers[preheated].mirror_url();
    let client = AuthClient::new(None);
    let m = client
        .get("GET", &format!("{mirror}/v2/{REPO}/manifests/v1?ns={ns}"))
        .await
        .unwrap();
    assert_eq!(
        (m.status, m.digest.as_str()),
        (200, img.manifest_digest.as_str())
    );
    for b in &img.blobs {
        let url = format!("{mirror}/v2/{REPO}/blobs/{}?ns={ns}", b.digest);
        let got = client.get("GET", &url).await.unwrap();
        assert_eq!((got.status, got.digest.as_str()), (200, b.digest.as_str()));
    }
    for b in &img.blobs {
        assert_eq!(
            gets(&reg, &b.digest),
            1,
            "the pull made no upstream GET of {}",
            b.digest
        );
    }

    // 3. Named nodes: the fourth peer, and a name no peer has.
    let fourth = (0..4).map(peer_id).find(|p| !chosen.contains(p)).unwrap();
    let job = post_job(
        &c.sched,
        json!({"image": format!("{ns}/{REPO}:v1"), "scope": {"nodes": [fourth, "ghost"]}}),
    )
    .await;
    let job = finished(&c.sched, job["id"].as_str().unwrap()).await;
    assert_eq!(job["state"], "failed", "{job}");
    let states = part_states(&job);
    assert!(
        states.contains(&(fourth.clone(), "succeeded".into())),
        "{job}"
    );
    assert!(states.contains(&("ghost".into(), "failed".into())), "{job}");
    for b in &img.blobs {
        assert!(holders(&c.sched, &b.digest).await.contains(&fourth));
        assert_eq!(
            gets(&reg, &b.digest),
            1,
            "the fourth got {} from the swarm",
            b.digest
        );
    }

    // 4. Cancel a job that cannot progress.
    let job = post_job(
        &c.sched,
        json!({"image": format!("{silent_ns}/{REPO}:v1"), "scope": "all"}),
    )
    .await;
    let id = job["id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, running) = api(
        &c.sched,
        "GET",
        &format!("/api/v1/preheat/{id}"),
        None,
        None,
    )
    .await;
    assert_eq!(
        (status, running["state"].as_str()),
        (200, Some("running")),
        "{running}"
    );
    let (status, cancelled) = api(
        &c.sched,
        "DELETE",
        &format!("/api/v1/preheat/{id}"),
        None,
        None,
    )
    .await;
    assert_eq!(status, 401, "cancel needs the token: {cancelled}");
    let (status, cancelled) = api(
        &c.sched,
        "DELETE",
        &format!("/api/v1/preheat/{id}"),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["state"], "cancelled");
    assert!(
        part_states(&cancelled)
            .iter()
            .all(|(_, s)| s == "cancelled"),
        "{cancelled}"
    );
    let start = Instant::now();
    while !c
        .peers
        .iter()
        .all(|p| p.log().contains("preheat cancelled"))
    {
        assert!(start.elapsed() < WAIT, "the peers never stopped the job");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // 5. Refusals.
    let body = json!({"image": format!("{ns}/{REPO}:v1")}).to_string();
    let (s, e) = api(
        &c.sched,
        "POST",
        "/api/v1/preheat",
        None,
        Some(body.clone()),
    )
    .await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (401, Some("UNAUTHORIZED"))
    );
    let (s, _) = api(
        &c.sched,
        "POST",
        "/api/v1/preheat",
        Some("not-the-operator-token-xx"),
        Some(body),
    )
    .await;
    assert_eq!(s, 401);
    for (bad, code) in [
        ("{".to_owned(), "PREHEAT_INVALID"),
        (
            json!({"image": "UPPER/Case"}).to_string(),
            "PREHEAT_INVALID",
        ),
        (
            json!({"image": "a", "scope": {"count": 0}}).to_string(),
            "PREHEAT_INVALID",
        ),
        (
            json!({"image": "a", "credential": {"token": "x\u{1}"}}).to_string(),
            "PREHEAT_INVALID",
        ),
        (
            json!({"image": format!("{ns}/{REPO}:v1"), "scope": {"zone": "nowhere"}}).to_string(),
            "SCOPE_EMPTY",
        ),
    ] {
        let (s, e) = api(
            &c.sched,
            "POST",
            "/api/v1/preheat",
            Some(TOKEN),
            Some(bad.clone()),
        )
        .await;
        assert_eq!(
            (s, e["error"]["code"].as_str()),
            (400, Some(code)),
            "{bad}: {e}"
        );
    }
    let (s, e) = api(
        &c.sched,
        "GET",
        "/api/v1/preheat/0123456789abcdef",
        None,
        None,
    )
    .await;
    assert_eq!((s, e["error"]["code"].as_str()), (404, Some("JOB_UNKNOWN")));
    let (s, e) = api(&c.sched, "GET", "/api/v1/preheat/..%2Fetc", None, None).await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (400, Some("JOB_ID_INVALID")),
        "{e}"
    );
    let job = post_job(
        &c.sched,
        json!({"image": format!("{ns}/{REPO}:no-such-tag"), "scope": {"count": 2}}),
    )
    .await;
    let job = finished(&c.sched, job["id"].as_str().unwrap()).await;
    assert_eq!(job["state"], "failed");
    for p in job["peers"].as_array().unwrap() {
        assert_eq!(p["state"], "failed");
        assert!(p["error"].as_str().unwrap().contains("404"), "{p}");
    }
    let (_, list) = api(&c.sched, "GET", "/api/v1/preheat", None, None).await;
    assert_eq!(list["jobs"].as_array().unwrap().len(), 4, "{list}");
    let metrics = reqwest::get(format!("{}/metrics", c.sched.http_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        r#"shoal_scheduler_preheat_jobs{state="succeeded"} 1"#,
        r#"shoal_scheduler_preheat_jobs{state="failed"} 2"#,
        r#"shoal_scheduler_preheat_jobs{state="cancelled"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }
    eprintln!(
        "preheat: {} blobs, {total} bytes, on 3 then 1 peers, one upstream copy of each",
        img.blobs.len()
    );

    // 6. shoalctl: preheat --wait, jobs (merged over two "replicas"), job, job --cancel.
    let ctl = |args: &[&str]| {
        let out = std::process::Command::new(shoal_tests::swarm::workspace_bin("shoalctl"))
            .arg("--scheduler")
            .arg(c.sched.http_url())
            .args(args)
            .env_remove("SHOAL_TOKEN_FILE")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let token_file = c.token_file.display().to_string();
    let image_ref = format!("{ns}/{REPO}:v1");
    let (code, out, err) = ctl(&[
        "--token-file",
        &token_file,
        "preheat",
        &image_ref,
        "--count",
        "2",
        "--wait",
    ]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(
        out.contains("state succeeded") && out.contains("(2 of 2 peers succeeded"),
        "{out}"
    );
    let rows = out
        .lines()
        .filter(|l| l.starts_with("node-") && l.contains("succeeded") && l.contains("4/4"))
        .count();
    assert_eq!(rows, 2, "{out}");
    assert!(
        err.contains("2/2 peers done"),
        "plain progress lines off a terminal: {err}"
    );
    let id = out.split_whitespace().nth(1).unwrap().to_owned();
    let (code, out, _) = ctl(&["jobs"]);
    assert_eq!(code, Some(0));
    assert!(out.starts_with("ID") && out.contains(&id), "{out}");
    assert_eq!(out.lines().count(), 6, "five jobs and a header: {out}");
    let (code, out, _) = ctl(&["jobs", "--replica", &c.sched.http_url(), "-o", "json"]);
    assert_eq!(code, Some(0));
    let merged: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        merged["jobs"].as_array().unwrap().len(),
        10,
        "each replica's jobs, merged"
    );
    assert!(merged["jobs"][0]["replica"].is_string());
    let (code, out, _) = ctl(&["job", &id]);
    assert_eq!(code, Some(0));
    assert!(out.contains("PEER") && out.contains("4/4"), "{out}");
    let (code, _, err) = ctl(&["job", &id, "--cancel"]);
    assert_eq!(code, Some(2), "cancel needs the token: {err}");
    let (code, out, _) = ctl(&["--token-file", &token_file, "job", &id, "--cancel"]);
    assert_eq!(code, Some(0), "cancelling a finished job changes nothing");
    assert!(out.contains("state succeeded"), "{out}");
    let (code, _, err) = ctl(&["job", "0123456789abcdef"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("no preheat job"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_image_preheats_with_a_credential_that_no_log_shows() {
    if !tools_present("preheat private", &["htpasswd"]) {
        return;
    }
    const USER: &str = "preheat-user";
    const PASSWORD: &str = "pReHeAt-s3cret-Pw";
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), 281);
    let storage = dir.path().join("storage");
    Registry::stage(&img, REPO, "v1", &dir.path().join("stage"), &storage).unwrap();
    let htpasswd = dir.path().join("htpasswd");
    std::fs::write(&htpasswd, htpasswd_line(USER, PASSWORD).unwrap() + "\n").unwrap();
    let reg = Registry::start_with(
        &dir.path().join("registry"),
        &RegistryOptions {
            storage: Some(storage),
            auth: Some(RegistryAuth::Htpasswd { path: htpasswd }),
            ..RegistryOptions::default()
        },
    )
    .unwrap();
    let ns = reg.addr().to_string();
    let c = cluster(dir.path(), hosts_dir(dir.path(), &[&ns]), 2).await;
    let image_ref = format!("{ns}/{REPO}:v1");

    let job = post_job(&c.sched, json!({"image": image_ref, "scope": "all"})).await;
    let job = finished(&c.sched, job["id"].as_str().unwrap()).await;
    assert_eq!(job["state"], "failed", "{job}");
    for p in job["peers"].as_array().unwrap() {
        assert!(p["error"].as_str().unwrap().contains("401"), "{p}");
    }

    let job = post_job(
        &c.sched,
        json!({"image": image_ref, "scope": "all", "credential": {"username": USER, "password": PASSWORD}}),
    )
    .await;
    assert_eq!(job["private"], true);
    assert!(!job.to_string().contains(PASSWORD));
    let job = finished(&c.sched, job["id"].as_str().unwrap()).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    for b in &img.blobs {
        assert_eq!(gets(&reg, &b.digest), 1, "{}", b.digest);
    }

    // The mirror's access check still stands in front of the preheated blobs.
    let base = format!("{}/v2/{REPO}", c.peers[0].mirror_url());
    let anonymous = AuthClient::new(None);
    let allowed = AuthClient::new(Some((USER, PASSWORD)));
    for b in &img.blobs {
        let url = format!("{base}/blobs/{}?ns={ns}", b.digest);
        let refused = anonymous.get("GET", &url).await.unwrap();
        assert_eq!(refused.status, 401, "{}", b.digest);
        assert_ne!(refused.digest, b.digest);
        let got = allowed.get("GET", &url).await.unwrap();
        assert_eq!((got.status, got.digest.as_str()), (200, b.digest.as_str()));
        assert_eq!(
            gets(&reg, &b.digest),
            1,
            "served from the store: {}",
            b.digest
        );
    }

    // The credential is in no log.
    let basic = {
        let out = std::process::Command::new("base64")
            .arg("-w0")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child
                    .stdin
                    .take()
                    .unwrap()
                    .write_all(format!("{USER}:{PASSWORD}").as_bytes())?;
                child.wait_with_output()
            })
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    assert!(basic.len() > 10);
    let mut logs = vec![("scheduler".to_owned(), c.sched.log())];
    for p in &c.peers {
        logs.push((p.name.clone(), p.log()));
    }
    for (who, log) in &logs {
        assert!(log.contains("preheat"), "{who} logged the job");
        assert!(!log.contains(PASSWORD), "{who} logged the password");
        assert!(!log.contains(&basic), "{who} logged the Basic credential");
    }
    let _ = &c.token_file;
}

/// Two scheduler replicas (static list) and three peers: a job accepted by the first
/// replica orders every peer over its sessions, and each layer's download goes to the
/// replica that owns it; still one upstream copy of each blob. `shoalctl jobs --replica`
/// shows the job once, under the replica that holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_on_one_replica_fills_peers_whose_layers_other_replicas_plan() {
    if !tools_present("preheat replicas", &[]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), 381);
    let storage = dir.path().join("storage");
    Registry::stage(&img, REPO, "v1", &dir.path().join("stage"), &storage).unwrap();
    let reg = Registry::start_with(
        &dir.path().join("registry"),
        &RegistryOptions {
            storage: Some(storage),
            ..RegistryOptions::default()
        },
    )
    .unwrap();
    let ns = reg.addr().to_string();
    let hosts = hosts_dir(dir.path(), &[&ns]);
    let tls = dir.path().join("tls");
    PeerProcess::tls_init(&tls).unwrap();
    let token_file = dir.path().join("operator-token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let mut replicas = Vec::new();
    for i in 0..2 {
        let addr: std::net::SocketAddr = format!("127.0.0.1:{}", shoal_tests::free_port().unwrap())
            .parse()
            .unwrap();
        replicas.push(
            SchedulerProcess::start_on(
                &dir.path().join(format!("replica-{i}")),
                &tls,
                addr,
                &[],
                &[
                    "--operator-token-file".into(),
                    token_file.display().to_string(),
                ],
            )
            .await
            .unwrap(),
        );
    }
    let opts = PeerOptions {
        scheduler: Some(replicas[0].grpc_url()),
        default_upstream: None,
        hosts_dir: Some(hosts),
        tls_dir: tls,
        extra: vec!["--scheduler".into(), replicas[1].grpc_url()],
    };
    let mut peers = Vec::new();
    for i in 0..3 {
        peers.push(
            PeerProcess::start(dir.path(), &format!("node-{i}"), &opts)
                .await
                .unwrap(),
        );
    }
    for r in &replicas {
        wait_sessions(r, 3).await;
    }
    let job = post_job(&replicas[0], json!({"image": format!("{ns}/{REPO}:v1")})).await;
    let id = job["id"].as_str().unwrap().to_owned();
    assert_eq!(job["summary"]["peers"], 3, "{job}");
    let job = finished(&replicas[0], &id).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let mut planned_by = [0usize; 2];
    for b in &img.blobs {
        assert_eq!(
            gets(&reg, &b.digest),
            1,
            "one upstream copy of {}",
            b.digest
        );
        for (i, r) in replicas.iter().enumerate() {
            if holders(r, &b.digest).await.len() == 3 {
                planned_by[i] += 1;
            }
        }
    }
    assert_eq!(
        planned_by.iter().sum::<usize>(),
        img.blobs.len(),
        "each blob's owner knows its 3 holders"
    );
    eprintln!(
        "preheat over 2 replicas: the job on replica 0; blobs owned by replica 0: {}, by replica 1: {}",
        planned_by[0], planned_by[1]
    );
    let (status, _) = api(
        &replicas[1],
        "GET",
        &format!("/api/v1/preheat/{id}"),
        None,
        None,
    )
    .await;
    assert_eq!(status, 404, "the job lives on the replica that accepted it");
    let out = std::process::Command::new(shoal_tests::swarm::workspace_bin("shoalctl"))
        .args([
            "--scheduler",
            &replicas[0].http_url(),
            "--replica",
            &replicas[1].http_url(),
            "jobs",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert_eq!(text.matches(&id).count(), 1, "{text}");
    assert!(text.contains("REPLICA"), "{text}");
    let out = std::process::Command::new(shoal_tests::swarm::workspace_bin("shoalctl"))
        .args([
            "--scheduler",
            &replicas[1].http_url(),
            "--replica",
            &replicas[0].http_url(),
            "job",
            &id,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "job ID finds the replica that knows it"
    );
}

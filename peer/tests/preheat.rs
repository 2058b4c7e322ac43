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
//! The private image and the replicas: `preheat_more.rs`.
//!
//! Asserted: states, digests, counts of registry GETs. No duration.

#[path = "support/preheat.rs"]
mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use shoal_tests::registry::{Registry, RegistryOptions};
use shoal_tests::token_auth::AuthClient;
use support::*;

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

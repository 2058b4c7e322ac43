//! Preheat end to end, continued (see `preheat.rs`): a private image, and two
//! scheduler replicas.
//!
//! [`a_private_image_preheats_with_a_credential_that_no_log_shows`]: an `htpasswd`
//! registry; without a credential each part fails with the 401; with one, it succeeds;
//! the mirror of a preheated node still refuses a caller without credentials (access
//! check) and serves one with them without an upstream blob GET; the password, and its
//! Basic encoding, appear in no log of the scheduler or the peers.
//!
//! [`a_job_on_one_replica_fills_peers_whose_layers_other_replicas_plan`]: two replicas,
//! three peers, a job on the first: every peer filled, each blob planned by its owner,
//! one upstream copy; `shoalctl jobs`/`job` across the replicas.

#[path = "support/preheat.rs"]
mod support;

use serde_json::json;
use shoal_tests::registry::{Registry, RegistryAuth, RegistryOptions};
use shoal_tests::swarm::{PeerOptions, PeerProcess, SchedulerProcess};
use shoal_tests::token_auth::{AuthClient, htpasswd_line};
use support::*;

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

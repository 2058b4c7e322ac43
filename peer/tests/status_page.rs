//! The scheduler's status page (`GET /`) in a real headless Chromium (Debian's
//! `chromium`), against a running `shoal-scheduler` with a live swarm: four
//! `shoal-peer run` processes in two zones and `docker-registry` holding a two-layer
//! image. Three peers pull the image; the page, once it has drawn its data, shows
//! every peer and every task the scheduler's JSON API reports, with the same numbers;
//! after the fourth peer pulls, a fresh load shows it among the holders.
//!
//! Skipped with a printed reason when Chromium (or the registry, or skopeo) is
//! missing; a failure under `CI=true`. No duration is asserted; waits only bound a hang.

use std::time::Duration;

use serde_json::Value;
use shoal_tests::status_page::{LiveSwarm, dump_dom, require_chromium};

/// The start tag of the element of `dom` carrying `anchor` (e.g. `data-task="…"`).
fn tag_with<'a>(dom: &'a str, anchor: &str) -> Option<&'a str> {
    let at = dom.find(anchor)?;
    let start = dom[..at].rfind('<')?;
    let end = at + dom[at..].find('>')?;
    Some(&dom[start..=end])
}

/// The value of attribute `name` in start tag `tag`.
fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let key = format!(" {name}=\"");
    let at = tag.find(&key)? + key.len();
    Some(&tag[at..at + tag[at..].find('"')?])
}

/// The part of `dom` that draws task `digest` (up to the next task).
fn task_part<'a>(dom: &'a str, digest: &str) -> &'a str {
    let anchor = format!("data-task=\"{digest}\"");
    let at = dom.find(&anchor).unwrap_or_else(|| panic!("no {anchor}"));
    let rest = &dom[at + anchor.len()..];
    &rest[..rest.find("data-task=").unwrap_or(rest.len())]
}

async fn overview(url: &str) -> Value {
    reqwest::get(format!("{url}api/v1/overview"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Waits until the scheduler reports every blob of the image complete on `n` peers
/// and downloaded by none; fails after 2 minutes (a hang).
async fn settled(swarm: &LiveSwarm, n: u64) {
    for _ in 0..1200 {
        let mut all = true;
        for blob in &swarm.image.blobs {
            let t = swarm.sched.task(&blob.digest).await;
            all &= t.is_some_and(|t| t["complete_holders"] == n && t["downloading"] == 0);
        }
        if all {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "the image never settled on {n} peers; scheduler log:\n{}",
        swarm.sched.log()
    );
}

/// Every peer and task of `o` is in `dom` with the numbers `o` gives.
fn assert_page_shows(dom: &str, o: &Value) {
    assert!(dom.contains(r#"data-state="live""#), "{dom}");
    let polls: u32 = attr(tag_with(dom, "data-polls=").unwrap(), "data-polls")
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        polls >= 2,
        "the page polled {polls} times: it does not update"
    );

    let peers = o["peers"].as_array().unwrap();
    for p in peers {
        let id = p["id"].as_str().unwrap();
        let tag = tag_with(dom, &format!("data-peer=\"{id}\""))
            .unwrap_or_else(|| panic!("peer {id} is not on the page:\n{dom}"));
        assert_eq!(attr(tag, "data-zone"), p["zone"].as_str(), "{tag}");
        // The rate it declared (`--link-rate`: 10gbit in zone-a, 1gbit in zone-b).
        let mbps = p["link_mbps"].as_u64().unwrap();
        assert_eq!(
            (attr(tag, "data-link"), p["zone"].as_str()),
            (
                Some(mbps.to_string().as_str()),
                Some(if mbps == 10_000 { "zone-a" } else { "zone-b" })
            ),
            "{tag}"
        );
        assert_eq!(attr(tag, "data-healthy"), Some("true"), "{tag}");
    }
    assert_eq!(dom.matches("data-peer=").count(), peers.len());

    let tasks = o["tasks"].as_array().unwrap();
    for t in tasks {
        let digest = t["digest"].as_str().unwrap();
        let tag = tag_with(dom, &format!("data-task=\"{digest}\""))
            .unwrap_or_else(|| panic!("task {digest} is not on the page:\n{dom}"));
        for (field, key) in [
            ("data-complete", "complete_holders"),
            ("data-downloading", "downloading"),
            ("data-upstream-bytes", "upstream_bytes"),
        ] {
            assert_eq!(
                attr(tag, field),
                Some(t[key].to_string().as_str()),
                "{digest} {field}: {tag}"
            );
        }
        let part = task_part(dom, digest);
        for h in t["holders"].as_array().unwrap() {
            let peer = h["peer"].as_str().unwrap();
            let row = tag_with(part, &format!("data-holder=\"{peer}\""))
                .unwrap_or_else(|| panic!("{digest}: holder {peer} missing:\n{part}"));
            assert_eq!(
                attr(row, "data-pieces"),
                Some(h["pieces"].to_string().as_str())
            );
        }
        assert_eq!(
            part.matches("data-holder=").count(),
            t["holders"].as_array().unwrap().len()
        );
    }
    assert_eq!(dom.matches("data-task=").count(), tasks.len());
    // No preheat job: the section says so.
    assert!(dom.contains(r#"data-jobs="0""#), "{dom}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_the_peers_and_tasks_the_scheduler_reports() {
    if !require_chromium("status page in chromium") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let swarm = LiveSwarm::start(dir.path(), 4, &[12, 3], &[])
        .await
        .unwrap();
    let url = swarm.page_url();
    let profile = dir.path().join("chromium");

    swarm.pull(&[0, 1, 2]).await.unwrap();
    settled(&swarm, 3).await;
    let o = overview(&url).await;
    // What the page is checked against: 4 peers, the image's 3 blobs on 3 of them.
    assert_eq!(o["peers"].as_array().unwrap().len(), 4);
    assert_eq!(
        o["tasks"].as_array().unwrap().len(),
        swarm.image.blobs.len()
    );
    for t in o["tasks"].as_array().unwrap() {
        assert_eq!(t["holders"].as_array().unwrap().len(), 3, "{t}");
        // At least one copy came from upstream, and no more than one per peer.
        let (up, size) = (
            t["upstream_bytes"].as_u64().unwrap(),
            t["size"].as_u64().unwrap(),
        );
        assert!(up >= size && up <= 3 * size, "{t}");
    }
    let dom = dump_dom(&url, &profile).unwrap();
    assert_page_shows(&dom, &o);

    // The fourth peer pulls: a fresh load shows it among every task's holders.
    swarm.pull(&[3]).await.unwrap();
    settled(&swarm, 4).await;
    let o = overview(&url).await;
    let dom = dump_dom(&url, &profile).unwrap();
    assert_page_shows(&dom, &o);
    for blob in &swarm.image.blobs {
        let tag = tag_with(&dom, &format!("data-task=\"{}\"", blob.digest)).unwrap();
        assert_eq!(attr(tag, "data-complete"), Some("4"), "{tag}");
    }

    // A preheat job of the image on zone-a (2 peers): the page lists it.
    let job = swarm.preheat("zone-a").await.unwrap();
    let id = job["id"].as_str().unwrap().to_owned();
    let mut state = String::new();
    for _ in 0..600 {
        let j: Value = reqwest::get(format!("{url}api/v1/preheat/{id}"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        state = j["state"].as_str().unwrap_or_default().to_owned();
        if state != "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(state, "succeeded");
    let dom = dump_dom(&url, &profile).unwrap();
    assert!(dom.contains(r#"data-jobs="1""#), "{dom}");
    let row = &dom[dom
        .find(&format!("data-job=\"{id}\""))
        .expect("the job's row")..];
    let row = &row[..row.find("</tr>").unwrap()];
    assert!(row.contains("succeeded") && row.contains("2 / 2"), "{row}");
    assert!(row.contains(" MiB / "), "bytes done of all: {row}");
}

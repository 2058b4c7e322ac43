//! The operator API's answers as `shoalctl` reads them, and their tables.
//!
//! These are the CLI's own copies of the API's shapes (`core::views`), read
//! leniently: unknown fields are ignored and missing ones default, so a
//! `shoalctl` of one version can talk to a scheduler of the next.

use serde::Deserialize;

use super::table::{
    Align, Table, human_duration, human_size, list_or_dash, sanitize, short_digest, yes_no,
};

/// `GET /api/v1/peers`.
#[derive(Debug, Deserialize)]
pub(crate) struct PeerList {
    peers: Vec<Peer>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Peer {
    id: String,
    hostname: String,
    addr: String,
    zone: String,
    link_mbps: u32,
    session_open: bool,
    joined_secs: u64,
    lease_secs: u64,
    active_uploads: u32,
    active_downloads: u32,
    children: u32,
    tasks: u64,
    bad_reports: u64,
    quarantine_reasons: Vec<String>,
}

/// `GET /api/v1/tasks`.
#[derive(Debug, Deserialize)]
pub(crate) struct TaskList {
    tasks: Vec<TaskSummary>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct TaskSummary {
    digest: String,
    size: Option<u64>,
    pieces: Option<u32>,
    complete_holders: u64,
    downloading: u64,
    back_to_source: Vec<String>,
    elections: u32,
    age_secs: u64,
}

/// `GET /api/v1/tasks/{digest}`.
#[derive(Debug, Deserialize)]
pub(crate) struct TaskDetail {
    #[serde(flatten)]
    summary: TaskSummary,
    #[serde(default)]
    known_hashes: u32,
    #[serde(default)]
    holders: Vec<Holder>,
    #[serde(default)]
    bad_peers: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Holder {
    peer: String,
    pieces: u32,
    complete: bool,
    downloading: bool,
    back_to_source: bool,
    parents: Vec<String>,
}

fn peer_count(n: u64) -> String {
    if n == 1 {
        "1 peer".to_owned()
    } else {
        format!("{n} peers")
    }
}

fn size_or_unknown(size: Option<u64>) -> String {
    size.map_or_else(|| "?".to_owned(), human_size)
}

fn count_or_unknown(n: Option<u32>) -> String {
    n.map_or_else(|| "?".to_owned(), |n| n.to_string())
}

/// The peers table.
pub(crate) fn peers(list: &PeerList) -> String {
    if list.peers.is_empty() {
        return "No peers have joined.\n".to_owned();
    }
    let mut t = Table::new(&[
        ("ID", Align::Left),
        ("HOSTNAME", Align::Left),
        ("ADDRESS", Align::Left),
        ("ZONE", Align::Left),
        ("LINK", Align::Right),
        ("SESSION", Align::Left),
        ("TASKS", Align::Right),
        ("UPLOADS", Align::Right),
        ("DOWNLOADS", Align::Right),
        ("CHILDREN", Align::Right),
        ("BAD", Align::Right),
        ("AGE", Align::Right),
        ("LEASE", Align::Right),
        ("QUARANTINE", Align::Left),
    ]);
    for p in &list.peers {
        t.row(vec![
            p.id.clone(),
            p.hostname.clone(),
            p.addr.clone(),
            if p.zone.is_empty() {
                "-".to_owned()
            } else {
                p.zone.clone()
            },
            link_rate(p.link_mbps),
            if p.session_open { "open" } else { "closed" }.to_owned(),
            p.tasks.to_string(),
            p.active_uploads.to_string(),
            p.active_downloads.to_string(),
            p.children.to_string(),
            p.bad_reports.to_string(),
            human_duration(p.joined_secs),
            human_duration(p.lease_secs),
            list_or_dash(&p.quarantine_reasons),
        ]);
    }
    t.render()
}

/// A declared link rate: `25 Gbit/s`, `100 Mbit/s`, `-` when unknown.
fn link_rate(mbps: u32) -> String {
    match mbps {
        0 => "-".to_owned(),
        m if m % 1000 == 0 => format!("{} Gbit/s", m / 1000),
        m => format!("{m} Mbit/s"),
    }
}

/// The tasks table (digests shortened).
pub(crate) fn tasks(list: &TaskList) -> String {
    if list.tasks.is_empty() {
        return "No tasks.\n".to_owned();
    }
    let mut t = Table::new(&[
        ("DIGEST", Align::Left),
        ("SIZE", Align::Right),
        ("PIECES", Align::Right),
        ("COMPLETE", Align::Right),
        ("DOWNLOADING", Align::Right),
        ("BACK-TO-SOURCE", Align::Left),
        ("ELECTIONS", Align::Right),
        ("AGE", Align::Right),
    ]);
    for s in &list.tasks {
        t.row(vec![
            short_digest(&s.digest),
            size_or_unknown(s.size),
            count_or_unknown(s.pieces),
            s.complete_holders.to_string(),
            s.downloading.to_string(),
            list_or_dash(&s.back_to_source),
            s.elections.to_string(),
            human_duration(s.age_secs),
        ]);
    }
    t.render()
}

/// One task: a summary block (full digest), then one row per holder.
pub(crate) fn task(detail: &TaskDetail) -> String {
    let s = &detail.summary;
    let size = match s.size {
        Some(bytes) => format!("{} ({bytes} bytes)", human_size(bytes)),
        None => "? (no peer has started it yet)".to_owned(),
    };
    let fields = [
        ("Digest:", s.digest.clone()),
        ("Size:", size),
        (
            "Pieces:",
            format!(
                "{} (piece hashes known: {})",
                count_or_unknown(s.pieces),
                detail.known_hashes
            ),
        ),
        ("Complete on:", peer_count(s.complete_holders)),
        ("Downloading:", peer_count(s.downloading)),
        ("Back-to-source:", list_or_dash(&s.back_to_source)),
        ("Elections:", s.elections.to_string()),
        ("Bad for it:", list_or_dash(&detail.bad_peers)),
        ("Age:", human_duration(s.age_secs)),
    ];
    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 2;
    let mut out = String::new();
    for (k, v) in fields {
        out.push_str(&format!("{k:<width$}{}\n", sanitize(&v)));
    }
    out.push('\n');
    if detail.holders.is_empty() {
        out.push_str("No peer takes part.\n");
        return out;
    }
    let mut holders = Table::new(&[
        ("PEER", Align::Left),
        ("PIECES", Align::Right),
        ("COMPLETE", Align::Left),
        ("DOWNLOADING", Align::Left),
        ("BACK-TO-SOURCE", Align::Left),
        ("PARENTS", Align::Left),
    ]);
    let total = count_or_unknown(s.pieces);
    for h in &detail.holders {
        holders.row(vec![
            h.peer.clone(),
            format!("{}/{total}", h.pieces),
            yes_no(h.complete),
            yes_no(h.downloading),
            yes_no(h.back_to_source),
            list_or_dash(&h.parents),
        ]);
    }
    out.push_str(&holders.render());
    out
}

/// `POST`/`DELETE /api/v1/peers/{id}/quarantine`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct QuarantineState {
    peer: String,
    quarantined: bool,
    quarantine_reasons: Vec<String>,
}

/// What a quarantine change left behind, in one line.
pub(crate) fn quarantine(q: &QuarantineState) -> String {
    let peer = sanitize(&q.peer);
    if q.quarantined {
        format!(
            "peer {peer} is quarantined ({}): offered as a parent for no task\n",
            sanitize(&q.quarantine_reasons.join(", "))
        )
    } else {
        format!("peer {peer} is not quarantined: offered as a parent again\n")
    }
}

/// `POST /api/v1/tasks/{digest}/drop`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct DropAnswer {
    digest: String,
    commanded: Vec<String>,
    not_connected: Vec<String>,
}

/// Who was told to drop a task.
pub(crate) fn dropped(d: &DropAnswer) -> String {
    let mut out = format!(
        "drop of {} sent to {}: {}\n",
        sanitize(&d.digest),
        peer_count(d.commanded.len() as u64),
        sanitize(&list_or_dash(&d.commanded))
    );
    if !d.not_connected.is_empty() {
        out.push_str(&format!(
            "not connected (they keep it): {}\n",
            sanitize(&list_or_dash(&d.not_connected))
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_detail_reads_the_flattened_summary_and_prints_every_holder() {
        let json = serde_json::json!({
            "digest": format!("sha256:{}", "ab".repeat(32)),
            "size": 8400497, "pieces": 3, "complete_holders": 1, "downloading": 1,
            "back_to_source": ["p1"], "elections": 1, "age_secs": 65, "known_hashes": 3,
            "bad_peers": ["p9"],
            "holders": [
                {"peer": "p0", "pieces": 3, "complete": true, "downloading": false, "back_to_source": false, "parents": []},
                {"peer": "p2", "pieces": 1, "complete": false, "downloading": true, "back_to_source": false, "parents": ["p0", "p1"]}
            ],
            "a_field_from_the_future": 1
        });
        let detail: TaskDetail = serde_json::from_value(json).unwrap();
        let text = task(&detail);
        assert!(
            text.starts_with(&format!("Digest:          sha256:{}\n", "ab".repeat(32))),
            "{text}"
        );
        assert!(
            text.contains("Size:            8.0 MiB (8400497 bytes)\n"),
            "{text}"
        );
        assert!(text.contains("\nBad for it:      p9\n"), "{text}");
        assert!(text.contains("\nPEER   PIECES   COMPLETE"), "{text}");
        assert!(
            text.contains("\np2        1/3   no         yes           no               p0,p1\n"),
            "{text}"
        );
    }

    #[test]
    fn link_rates_read_in_gbit_or_mbit_and_unknown_is_a_dash() {
        let list: PeerList = serde_json::from_value(serde_json::json!({
            "peers": [
                {"id": "fast", "link_mbps": 25000},
                {"id": "slow", "link_mbps": 100},
                {"id": "unsaid"},
            ]
        }))
        .unwrap();
        let out = peers(&list);
        let row = |id: &str| out.lines().find(|l| l.starts_with(id)).unwrap().to_owned();
        assert!(out.lines().next().unwrap().contains("LINK"), "{out}");
        assert!(row("fast").contains("25 Gbit/s"), "{out}");
        assert!(row("slow").contains("100 Mbit/s"), "{out}");
        assert!(!row("unsaid").contains("bit/s"), "{out}");
    }

    #[test]
    fn empty_lists_say_so() {
        assert_eq!(
            peers(&PeerList { peers: vec![] }),
            "No peers have joined.\n"
        );
        assert_eq!(tasks(&TaskList { tasks: vec![] }), "No tasks.\n");
    }
}

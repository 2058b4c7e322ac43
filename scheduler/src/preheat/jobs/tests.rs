//! Unit tests of [`super::Jobs`].
use super::*;
use crate::preheat::{Credential, ImageRef};

fn spec(scope: Scope) -> JobSpec {
    JobSpec {
        image: ImageRef {
            registry: "r.example".into(),
            repository: "team/app".into(),
            reference: "v1".into(),
        },
        platforms: vec![],
        scope,
        credential: Some(Credential::Token("t0ken".into())),
    }
}

fn peers(n: usize) -> Vec<Candidate> {
    (0..n)
        .map(|i| Candidate {
            id: format!("p{i}"),
            hostname: format!("host-{i}"),
            zone: if i % 2 == 0 { "a" } else { "b" }.into(),
        })
        .collect()
}

fn done(state: PeerJobState) -> Report {
    Report {
        state,
        blobs_done: 3,
        blobs_total: 3,
        bytes_done: 30,
        bytes_total: 30,
        error: (state == PeerJobState::Failed).then(|| "boom".into()),
    }
}

fn ordered(orders: &[Order]) -> Vec<String> {
    orders
        .iter()
        .map(|o| match o {
            Order::Preheat { peer, .. } | Order::Cancel { peer, .. } => peer.clone(),
        })
        .collect()
}

#[test]
fn scopes_choose_their_peers() {
    let t = Instant::now();
    let mut jobs = Jobs::new(JobsConfig::default(), 1);
    let c = peers(10);
    let (_, o) = jobs.create(t, spec(Scope::All), &c).unwrap();
    assert_eq!(o.len(), 10);
    let (_, o) = jobs.create(t, spec(Scope::Zone("a".into())), &c).unwrap();
    assert_eq!(ordered(&o), ["p0", "p2", "p4", "p6", "p8"]);
    let (_, o) = jobs.create(t, spec(Scope::Count(3)), &c).unwrap();
    assert_eq!(o.len(), 3);
    let (_, o) = jobs.create(t, spec(Scope::Count(30)), &c).unwrap();
    assert_eq!(o.len(), 10);
    let (_, o) = jobs.create(t, spec(Scope::Percent(25)), &c).unwrap();
    assert_eq!(o.len(), 3, "25 % of 10 rounds up");
    let (v, o) = jobs
        .create(
            t,
            spec(Scope::Nodes(vec![
                "p1".into(),
                "host-3".into(),
                "ghost".into(),
            ])),
            &c,
        )
        .unwrap();
    assert_eq!(ordered(&o), ["p1", "p3"]);
    assert_eq!(v.summary.failed, 1, "the unknown name is a failed part");
    assert_eq!(
        jobs.create(t, spec(Scope::Zone("c".into())), &c)
            .unwrap_err(),
        JobError::ScopeEmpty("zone=c".into())
    );
    assert!(matches!(
        jobs.create(t, spec(Scope::Nodes(vec!["ghost".into()])), &c),
        Err(JobError::ScopeEmpty(_))
    ));
}

#[test]
fn orders_carry_the_credential_and_the_job_forgets_it() {
    let t = Instant::now();
    let mut jobs = Jobs::new(JobsConfig::default(), 1);
    let (v, o) = jobs.create(t, spec(Scope::Count(1)), &peers(2)).unwrap();
    assert!(v.private);
    let Order::Preheat { order, .. } = &o[0] else {
        panic!()
    };
    assert_eq!(order.credential, Some(Credential::Token("t0ken".into())));
    assert!(jobs.jobs.values().all(|j| j.spec.credential.is_none()));
    assert!(!format!("{o:?}").contains("t0ken"));
    assert!(
        !serde_json::to_string(&jobs.list(t))
            .unwrap()
            .contains("t0ken")
    );
}

#[test]
fn a_job_ends_when_every_part_has_ended() {
    let t = Instant::now();
    let mut jobs = Jobs::new(JobsConfig::default(), 1);
    let (v, _) = jobs.create(t, spec(Scope::All), &peers(2)).unwrap();
    assert!(jobs.report(t, "p0", &v.id, done(PeerJobState::Running)));
    assert!(jobs.report(t, "p0", &v.id, done(PeerJobState::Succeeded)));
    assert!(
        !jobs.report(t, "p0", &v.id, done(PeerJobState::Running)),
        "final stays final"
    );
    assert!(
        !jobs.report(t, "p9", &v.id, done(PeerJobState::Running)),
        "not in the job"
    );
    assert!(!jobs.report(t, "p0", "nope", done(PeerJobState::Running)));
    assert_eq!(jobs.view(t, &v.id).unwrap().state, JobState::Running);
    assert!(jobs.report(t, "p1", &v.id, done(PeerJobState::Succeeded)));
    let v2 = jobs.view(t, &v.id).unwrap();
    assert_eq!(v2.state, JobState::Succeeded);
    assert_eq!(v2.summary.bytes_done, 60);
    let (v, _) = jobs.create(t, spec(Scope::All), &peers(2)).unwrap();
    jobs.report(t, "p0", &v.id, done(PeerJobState::Failed));
    jobs.report(t, "p1", &v.id, done(PeerJobState::Succeeded));
    let v = jobs.view(t, &v.id).unwrap();
    assert_eq!(v.state, JobState::Failed);
    assert_eq!(v.peers[0].error.as_deref(), Some("boom"));
}

#[test]
fn cancel_orders_unfinished_peers_to_stop() {
    let t = Instant::now();
    let mut jobs = Jobs::new(JobsConfig::default(), 1);
    let (v, _) = jobs.create(t, spec(Scope::All), &peers(3)).unwrap();
    jobs.report(t, "p0", &v.id, done(PeerJobState::Succeeded));
    let (c, o) = jobs.cancel(t, &v.id).unwrap();
    assert_eq!(c.state, JobState::Cancelled);
    assert_eq!(ordered(&o), ["p1", "p2"]);
    assert_eq!(c.summary.succeeded, 1);
    let (_, o) = jobs.cancel(t, &v.id).unwrap();
    assert!(o.is_empty(), "cancelling twice orders nothing");
    assert_eq!(
        jobs.cancel(t, "ffff").unwrap_err(),
        JobError::Unknown("ffff".into())
    );
}

#[test]
fn departures_timeouts_limits_and_forgetting() {
    let t = Instant::now();
    let config = JobsConfig {
        max_running: 2,
        max_kept: 1,
        retention: Duration::from_secs(60),
        max_peers_per_job: 3,
        timeout: Duration::from_secs(600),
    };
    let mut jobs = Jobs::new(config, 1);
    assert_eq!(
        jobs.create(t, spec(Scope::All), &peers(4)).unwrap_err(),
        JobError::TooManyPeers(4, 3)
    );
    let (a, _) = jobs.create(t, spec(Scope::All), &peers(2)).unwrap();
    let (b, _) = jobs.create(t, spec(Scope::All), &peers(2)).unwrap();
    assert_eq!(
        jobs.create(t, spec(Scope::All), &peers(2)).unwrap_err(),
        JobError::TooManyJobs(2)
    );
    // p1 leaves: its part of both jobs fails.
    let present: HashSet<String> = ["p0".to_string()].into();
    jobs.tick(t, Some(&present));
    jobs.report(t, "p0", &a.id, done(PeerJobState::Succeeded));
    let va = jobs.view(t, &a.id).unwrap();
    assert_eq!(va.state, JobState::Failed);
    assert_eq!(
        va.peers[1].error.as_deref(),
        Some("the peer left the swarm")
    );
    // b times out.
    jobs.tick(t + Duration::from_secs(601), None);
    assert_eq!(jobs.view(t, &b.id).unwrap().state, JobState::Failed);
    // Only one finished job is kept, then none after the retention.
    assert_eq!(jobs.list(t).len(), 1);
    jobs.tick(t + Duration::from_secs(700), None);
    assert!(jobs.list(t).is_empty());
    assert_eq!(jobs.counts().iter().map(|c| c.1).sum::<usize>(), 0);
}

//! The scheduler replica set: which replicas the peer keeps a session with.
//!
//! Each `--scheduler` entry is one of:
//! - `http://HOST:PORT` or `https://HOST:PORT`: one replica, named `HOST:PORT`
//!   (the static list; one entry is the single scheduler of old);
//! - `dns+http://NAME:PORT` or `dns+https://NAME:PORT`: every address `NAME`
//!   resolves to (A and AAAA records, e.g. a Kubernetes headless Service) is a
//!   replica, named `IP:PORT`, dialled by IP; over TLS the scheduler's certificate
//!   must still be valid for `NAME`. `NAME` is resolved again every
//!   [`LinkConfig::resolve_interval`](super::LinkConfig::resolve_interval); a
//!   failed resolution keeps the last answer (a DNS outage moves nothing).
//!
//! The set is published on a watch ([`watch_replicas`]); the link opens a session
//! with each member and drops the session of a replica that leaves.
//!
//! Not here: which replica owns a task (`super::shard`), the sessions themselves.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

/// One scheduler replica as the peer dials it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Replica {
    /// Its name in rendezvous hashing and logs: `HOST:PORT` from the URL, or
    /// `IP:PORT` for a replica found in DNS (`[v6]:PORT`).
    pub key: String,
    /// The gRPC URL dialled (`https://IP:PORT` for a replica found in DNS).
    pub url: String,
    /// The name its TLS certificate must be valid for when it differs from the
    /// URL's host (the DNS name a replica was found under).
    pub tls_name: Option<String>,
}

/// A `--scheduler` entry, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A fixed replica.
    Static(Replica),
    /// The addresses a DNS name resolves to, on `port`.
    Dns {
        /// `http` or `https`.
        scheme: &'static str,
        /// The name resolved (and, over TLS, verified).
        name: String,
        /// The gRPC port.
        port: u16,
    },
}

/// Why a `--scheduler` entry cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("scheduler {url:?}: {why}")]
pub struct SourceError {
    url: String,
    why: String,
}

impl Source {
    /// Parses `http(s)://HOST:PORT` or `dns+http(s)://NAME:PORT` (a path is
    /// refused; the port is required for `dns+`, and defaults to 80/443 for the
    /// static forms).
    pub fn parse(url: &str) -> Result<Source, SourceError> {
        let err = |why: &str| SourceError {
            url: url.to_string(),
            why: why.to_string(),
        };
        let (dns, scheme, rest) = if let Some(r) = url.strip_prefix("dns+https://") {
            (true, "https", r)
        } else if let Some(r) = url.strip_prefix("dns+http://") {
            (true, "http", r)
        } else if let Some(r) = url.strip_prefix("https://") {
            (false, "https", r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, "http", r)
        } else {
            return Err(err(
                "must start with http://, https://, dns+http:// or dns+https://",
            ));
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.is_empty() || authority.contains(['/', '@', '?', '#']) {
            return Err(err("must be SCHEME://HOST:PORT, without a path"));
        }
        let (host, port) = split_host_port(authority).ok_or_else(|| err("bad host:port"))?;
        if !dns {
            let port = port.unwrap_or(if scheme == "https" { 443 } else { 80 });
            let key = join_host_port(&host, port);
            return Ok(Source::Static(Replica {
                url: format!("{scheme}://{key}"),
                key,
                tls_name: None,
            }));
        }
        let port = port.ok_or_else(|| err("a dns+ URL needs the gRPC port (NAME:PORT)"))?;
        if host.parse::<IpAddr>().is_ok() {
            return Err(err("a dns+ URL names a DNS name, not an IP address"));
        }
        Ok(Source::Dns {
            scheme,
            name: host.to_ascii_lowercase(),
            port,
        })
    }

    /// The replicas this source gives when `name` resolves to `ips`.
    fn replicas(&self, ips: &[IpAddr]) -> Vec<Replica> {
        match self {
            Source::Static(r) => vec![r.clone()],
            Source::Dns { scheme, name, port } => ips
                .iter()
                .map(|ip| {
                    let key = SocketAddr::new(*ip, *port).to_string();
                    Replica {
                        url: format!("{scheme}://{key}"),
                        key,
                        tls_name: (*scheme == "https").then(|| name.clone()),
                    }
                })
                .collect(),
        }
    }
}

/// `host[:port]` or `[v6][:port]` → host (without brackets) and port.
fn split_host_port(s: &str) -> Option<(String, Option<u16>)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, tail) = rest.split_once(']')?;
        host.parse::<std::net::Ipv6Addr>().ok()?;
        let port = match tail {
            "" => None,
            t => Some(t.strip_prefix(':')?.parse().ok()?),
        };
        return Some((host.to_string(), port));
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (h, Some(p.parse().ok()?)),
        None => (s, None),
    };
    (!host.is_empty() && !host.contains(':')).then(|| (host.to_string(), port))
}

fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Turns names into addresses.
#[async_trait::async_trait]
pub trait Resolve: Send + Sync + 'static {
    /// Every address (IPv4 and IPv6) `name` has now.
    async fn resolve(&self, name: &str) -> std::io::Result<Vec<IpAddr>>;
}

/// The system resolver (`getaddrinfo`: `/etc/hosts`, then DNS as
/// `/etc/nsswitch.conf` says), both address families.
#[derive(Debug, Default)]
pub struct SystemResolver;

#[async_trait::async_trait]
impl Resolve for SystemResolver {
    async fn resolve(&self, name: &str) -> std::io::Result<Vec<IpAddr>> {
        Ok(tokio::net::lookup_host((name, 0))
            .await?
            .map(|a| a.ip())
            .collect())
    }
}

/// **Test and development only**: answers from a file in `/etc/hosts` form
/// (`IP NAME…` per line, `#` comments), read again at every resolution, so a test
/// drives the replica set by rewriting it. A name the file lacks is an error
/// (like NXDOMAIN: the last answer stays).
#[derive(Debug, Clone)]
pub struct HostsFileResolver(pub PathBuf);

#[async_trait::async_trait]
impl Resolve for HostsFileResolver {
    async fn resolve(&self, name: &str) -> std::io::Result<Vec<IpAddr>> {
        let text = tokio::fs::read_to_string(&self.0).await?;
        let ips = hosts_lookup(&text, name);
        if ips.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{name} is not in {}", self.0.display()),
            ));
        }
        Ok(ips)
    }
}

/// The addresses `name` has in a hosts file's text, in file order.
pub fn hosts_lookup(text: &str, name: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|l| {
            let l = l.split('#').next().unwrap_or_default();
            let mut words = l.split_whitespace();
            let ip: IpAddr = words.next()?.parse().ok()?;
            words.any(|w| w.eq_ignore_ascii_case(name)).then_some(ip)
        })
        .collect()
}

/// Resolves every source (sorted, duplicates removed); `None` when a DNS source
/// fails (the caller keeps its last set).
async fn resolve_all(sources: &[Source], resolver: &dyn Resolve) -> Option<Vec<Replica>> {
    let mut set = BTreeSet::new();
    for s in sources {
        let ips = match s {
            Source::Static(_) => Vec::new(),
            Source::Dns { name, .. } => match resolver.resolve(name).await {
                Ok(ips) => ips,
                Err(e) => {
                    warn!(dns.name = %name, error = %e, "scheduler replicas not resolved; keeping the last set");
                    return None;
                }
            },
        };
        set.extend(s.replicas(&ips));
    }
    Some(set.into_iter().collect())
}

/// Publishes the replica set of `sources` on a watch, resolving DNS sources now and
/// every `interval` until the receivers are gone. Starts empty until the first
/// resolution answers.
pub fn watch_replicas(
    sources: Vec<Source>,
    resolver: Arc<dyn Resolve>,
    interval: Duration,
) -> watch::Receiver<Vec<Replica>> {
    let (tx, rx) = watch::channel(Vec::new());
    let dynamic = sources.iter().any(|s| matches!(s, Source::Dns { .. }));
    tokio::spawn(async move {
        loop {
            if let Some(set) = resolve_all(&sources, &*resolver).await
                && *tx.borrow() != set
            {
                info!(
                    replicas = ?set.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(),
                    "scheduler replica set"
                );
                if tx.send(set).is_err() {
                    return;
                }
            }
            if !dynamic {
                // Nothing to re-resolve: keep the sender (and the set) alive.
                tx.closed().await;
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = tx.closed() => return,
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_static_and_dns_entries() {
        let s = Source::parse("https://shoal-scheduler.shoal.svc:7600").unwrap();
        assert_eq!(
            s,
            Source::Static(Replica {
                key: "shoal-scheduler.shoal.svc:7600".into(),
                url: "https://shoal-scheduler.shoal.svc:7600".into(),
                tls_name: None,
            })
        );
        let Source::Static(r) = Source::parse("http://[::1]:7600/").unwrap() else {
            panic!()
        };
        assert_eq!(
            (r.key.as_str(), r.url.as_str()),
            ("[::1]:7600", "http://[::1]:7600")
        );
        let Source::Static(r) = Source::parse("https://sched").unwrap() else {
            panic!()
        };
        assert_eq!(r.key, "sched:443");
        assert_eq!(
            Source::parse("dns+https://Shoal-Scheduler-Headless.shoal.svc:7600").unwrap(),
            Source::Dns {
                scheme: "https",
                name: "shoal-scheduler-headless.shoal.svc".into(),
                port: 7600
            }
        );
        for bad in [
            "shoal:7600",
            "ftp://x:1",
            "dns+https://name",
            "dns+http://10.0.0.1:7600",
            "https://x:7600/path",
            "https://user@x:7600",
            "https://x:notaport",
            "https://",
        ] {
            assert!(Source::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn dns_replicas_are_dialled_by_ip_and_verified_by_name() {
        let s = Source::parse("dns+https://sched.test:7600").unwrap();
        let ips = ["10.0.0.1".parse().unwrap(), "fd00::2".parse().unwrap()];
        let r = s.replicas(&ips);
        assert_eq!(r[0].key, "10.0.0.1:7600");
        assert_eq!(r[0].url, "https://10.0.0.1:7600");
        assert_eq!(r[1].url, "https://[fd00::2]:7600");
        assert_eq!(r[1].tls_name.as_deref(), Some("sched.test"));
        let plain = Source::parse("dns+http://sched.test:7600").unwrap();
        assert_eq!(plain.replicas(&ips[..1])[0].tls_name, None);
    }

    #[test]
    fn hosts_file_lookup() {
        let text = "# replicas\n127.0.0.2 sched.test other\n127.0.0.3\tSCHED.test # two\n\
                    bogus sched.test\n::1 localhost\n";
        assert_eq!(
            hosts_lookup(text, "sched.test"),
            [
                "127.0.0.2".parse::<IpAddr>().unwrap(),
                "127.0.0.3".parse().unwrap()
            ]
        );
        assert!(hosts_lookup(text, "absent").is_empty());
    }

    #[tokio::test]
    async fn a_failed_resolution_keeps_the_last_set() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hosts");
        std::fs::write(&file, "127.0.0.2 s.test\n").unwrap();
        let sources = vec![
            Source::parse("dns+http://s.test:7600").unwrap(),
            Source::parse("http://fixed:7600").unwrap(),
        ];
        let mut rx = watch_replicas(
            sources,
            Arc::new(HostsFileResolver(file.clone())),
            Duration::from_millis(10),
        );
        let keys = |v: &Vec<Replica>| v.iter().map(|r| r.key.clone()).collect::<Vec<_>>();
        let set = rx.wait_for(|s| !s.is_empty()).await.unwrap().clone();
        assert_eq!(keys(&set), ["127.0.0.2:7600", "fixed:7600"]);
        std::fs::write(&file, "127.0.0.3 s.test\n127.0.0.2 s.test\n").unwrap();
        let set = rx.wait_for(|s| s.len() == 3).await.unwrap().clone();
        assert_eq!(
            keys(&set),
            ["127.0.0.2:7600", "127.0.0.3:7600", "fixed:7600"]
        );
        std::fs::write(&file, "").unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(rx.borrow().len(), 3, "NXDOMAIN keeps the last set");
    }
}

//! Registry names as containerd uses them: the `ns` grammar, the directories searched for
//! a registry's `hosts.toml`, the server used when none is configured, and whether an
//! endpoint is this peer's own mirror.
//!
//! Pure: strings in, strings out; no file access.

use reqwest::Url;

/// The directory name containerd falls back to when a registry has no directory.
pub const DEFAULT_DIR: &str = "_default";

/// Whether `ns` is a registry host as the distribution reference grammar defines it:
/// `domain-name (":" port)?` where each dot-separated component is alphanumeric with
/// inner `-`, or a bracketed IPv6 address. This is what keeps `_default`, `..`, `/` and
/// empty strings from ever naming a directory.
pub fn is_registry_host(ns: &str) -> bool {
    if ns.is_empty() || ns.len() > 255 {
        return false;
    }
    let (host, port) = match ns.strip_prefix('[') {
        Some(rest) => {
            let Some((ip, after)) = rest.split_once(']') else {
                return false;
            };
            if ip.is_empty() || !ip.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
                return false;
            }
            match after {
                "" => return true,
                p => match p.strip_prefix(':') {
                    Some(port) => (None, Some(port)),
                    None => return false,
                },
            }
        }
        None => match ns.rsplit_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(ns), None),
        },
    };
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    port_ok && host.is_none_or(|h| h.split('.').all(is_domain_component))
}

fn is_domain_component(c: &str) -> bool {
    let b = c.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|&x| x.is_ascii_alphanumeric() || x == b'-')
}

/// The directories (relative to the hosts dir) searched for `registry`, in containerd's
/// order: `host_port_` (when there is a port), `host:port` / `host`, then `_default`.
pub fn dir_candidates(registry: &str) -> Vec<String> {
    let mut out = Vec::with_capacity(3);
    if let Some(idx) = registry.rfind(':').filter(|&i| i > 0) {
        out.push(format!("{}_{}_", &registry[..idx], &registry[idx + 1..]));
    }
    out.push(registry.to_owned());
    out.push(DEFAULT_DIR.to_owned());
    out
}

/// The server containerd uses for `registry` when `hosts.toml` names none:
/// `https://registry-1.docker.io` for `docker.io`, `https://<registry>` otherwise.
pub fn implicit_server(registry: &str) -> String {
    match registry {
        "docker.io" => "https://registry-1.docker.io".to_owned(),
        other => format!("https://{other}"),
    }
}

/// `host[:port]` of `url` as a registry name (the port only when the URL spells it).
pub fn registry_of(url: &Url) -> Option<String> {
    let host = url.host_str()?;
    Some(match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_owned(),
    })
}

/// Whether requests to an endpoint at `url` must carry `?ns=<registry>`: containerd adds
/// it whenever the host is not the registry itself (a mirror), so that a pull-through
/// mirror knows which registry is meant.
pub fn needs_ns(url: &Url, registry: &str) -> bool {
    let Some(host) = registry_of(url) else {
        return false;
    };
    if registry == "docker.io" {
        return host != "registry-1.docker.io" && host != "docker.io";
    }
    host != registry
}

/// The first path component under which a `containers-registries.conf` mirror entry
/// sends `registry`'s requests to the Shoal mirror (`location = "127.0.0.1:7650/<it>"`,
/// so CRI-O and Podman ask for `/v2/<it>/<repo>/…`): the registry itself, with the port
/// written `__PORT` because a path component cannot hold `:` (`127.0.0.1:5000` →
/// `127.0.0.1__5000`). `None` for a name that has no such form: not a registry host,
/// upper case, or an IPv6 literal.
pub fn mirror_namespace(registry: &str) -> Option<String> {
    if !is_registry_host(registry)
        || registry.starts_with('[')
        || registry.bytes().any(|b| b.is_ascii_uppercase())
    {
        return None;
    }
    Some(match registry.rsplit_once(':') {
        Some((host, port)) => format!("{host}__{port}"),
        None => registry.to_owned(),
    })
}

/// The registry a path component written by [`mirror_namespace`] names; `None` when it
/// is not one (a repository's own first component, such as `library`, comes back as
/// itself: the caller decides whether that registry is configured).
pub fn registry_of_namespace(component: &str) -> Option<String> {
    let registry = match component.rsplit_once("__") {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            format!("{host}:{port}")
        }
        Some(_) => return None,
        None => component.to_owned(),
    };
    (mirror_namespace(&registry).as_deref() == Some(component)).then_some(registry)
}

/// Where a mirror listens, for loop detection: host (loopback names folded together)
/// and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authority {
    host: String,
    port: u16,
}

impl Authority {
    /// The authority of `url`; a string without a scheme is read as `http://…`.
    pub fn parse(url: &str) -> Option<Authority> {
        let parsed = if url.contains("://") {
            Url::parse(url).ok()?
        } else {
            Url::parse(&format!("http://{url}")).ok()?
        };
        Authority::of(&parsed)
    }

    /// The authority of a parsed URL.
    pub fn of(url: &Url) -> Option<Authority> {
        let host = url.host_str()?.trim_matches(|c| c == '[' || c == ']');
        let loopback = host.eq_ignore_ascii_case("localhost")
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        Some(Authority {
            host: if loopback {
                "loopback".to_owned()
            } else {
                host.to_ascii_lowercase()
            },
            port: url.port_or_known_default()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_host_grammar() {
        for ok in [
            "docker.io",
            "ghcr.io",
            "127.0.0.1:5000",
            "localhost",
            "my-registry.example.com:443",
            "[::1]",
            "[::1]:5000",
            "a",
        ] {
            assert!(is_registry_host(ok), "{ok}");
        }
        for bad in [
            "",
            "_default",
            "..",
            "a/b",
            "-a.io",
            "a-.io",
            "a..io",
            "host:",
            "host:abc",
            "host:123456",
            "[::1",
            "[::1]x",
            "[zz]",
            "a b",
            "docker.io/library",
        ] {
            assert!(!is_registry_host(bad), "{bad}");
        }
    }

    #[test]
    fn dirs_in_containerd_order() {
        assert_eq!(dir_candidates("docker.io"), ["docker.io", "_default"]);
        assert_eq!(
            dir_candidates("127.0.0.1:5000"),
            ["127.0.0.1_5000_", "127.0.0.1:5000", "_default"]
        );
    }

    #[test]
    fn ns_only_for_mirrors() {
        let url = |s: &str| Url::parse(s).unwrap();
        assert!(!needs_ns(
            &url("https://registry-1.docker.io/v2"),
            "docker.io"
        ));
        assert!(needs_ns(&url("https://mirror.example/v2"), "docker.io"));
        assert!(!needs_ns(
            &url("http://127.0.0.1:5000/v2"),
            "127.0.0.1:5000"
        ));
        assert!(needs_ns(&url("http://127.0.0.1:5001/v2"), "127.0.0.1:5000"));
    }

    #[test]
    fn mirror_namespaces_round_trip() {
        for (registry, ns) in [
            ("docker.io", "docker.io"),
            ("127.0.0.1:5000", "127.0.0.1__5000"),
            (
                "my-registry.example.com:443",
                "my-registry.example.com__443",
            ),
            ("localhost", "localhost"),
        ] {
            assert_eq!(mirror_namespace(registry).as_deref(), Some(ns));
            assert_eq!(registry_of_namespace(ns).as_deref(), Some(registry));
        }
        for bad in ["[::1]:5000", "Docker.io", "a/b", ""] {
            assert_eq!(mirror_namespace(bad), None, "{bad}");
        }
        for bad in ["a__b", "a__", "__1", "a_b", "a__1__2"] {
            assert_eq!(registry_of_namespace(bad), None, "{bad}");
        }
    }

    #[test]
    fn loopback_authorities_are_one() {
        let a = Authority::parse("http://127.0.0.1:7650").unwrap();
        assert_eq!(Authority::parse("http://localhost:7650"), Some(a.clone()));
        assert_eq!(Authority::parse("http://[::1]:7650/v2"), Some(a.clone()));
        assert_eq!(Authority::parse("127.0.0.1:7650"), Some(a.clone()));
        assert_ne!(Authority::parse("http://127.0.0.1:7651"), Some(a.clone()));
        assert_ne!(Authority::parse("http://10.0.0.1:7650"), Some(a));
        assert_eq!(
            Authority::parse("https://Mirror.example"),
            Authority::parse("https://mirror.example:443/v2")
        );
    }
}

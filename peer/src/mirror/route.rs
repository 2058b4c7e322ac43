//! What a mirror request asks for, from its path and query: the distribution spec's
//! grammar for repository names, tags and digests, and containerd's `ns` parameter.
//!
//! Pure: strings in, a [`Route`] or an [`OciError`] out. Anything outside the
//! grammar (`..`, `%2e`, upper case, empty components, unsupported digests) is refused
//! here, so nothing later ever sees a name that could become a path. Not here: what
//! is done with the route (`blobs.rs`, `manifests.rs`).

use shoal_proto::Digest;

use super::error::OciError;

/// Longest repository name accepted (the spec recommends registries allow 255).
pub const MAX_NAME: usize = 255;

/// The object a request names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Object {
    /// `/v2/<name>/blobs/<digest>`.
    Blob(Digest),
    /// `/v2/<name>/manifests/<reference>` by tag.
    ManifestTag(String),
    /// `/v2/<name>/manifests/<digest>`.
    ManifestDigest(Digest),
}

/// A parsed mirror request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The repository, e.g. `library/nginx`.
    pub name: String,
    /// What is asked for.
    pub object: Object,
}

/// Parses the part of the path after `/v2/`.
pub fn parse(rest: &str) -> Result<Route, OciError> {
    let (name, object) = if let Some((name, digest)) = rest.rsplit_once("/blobs/") {
        let d = parse_digest(digest)?;
        (name, Object::Blob(d))
    } else if let Some((name, reference)) = rest.rsplit_once("/manifests/") {
        let o = if reference.contains(':') {
            Object::ManifestDigest(parse_digest(reference)?)
        } else {
            check_tag(reference)?;
            Object::ManifestTag(reference.to_owned())
        };
        (name, o)
    } else {
        return Err(OciError::unsupported(format!(
            "/v2/{} is not a blob or manifest path (the mirror serves pulls only)",
            truncate(rest)
        )));
    };
    check_name(name)?;
    Ok(Route {
        name: name.to_owned(),
        object,
    })
}

fn parse_digest(s: &str) -> Result<Digest, OciError> {
    s.parse::<Digest>().map_err(|e| {
        OciError::digest_invalid(format!("{:?} is not a supported digest: {e}", truncate(s)))
    })
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`, at most
/// [`MAX_NAME`] bytes.
pub fn check_name(name: &str) -> Result<(), OciError> {
    let bad = |why: &str| {
        Err(OciError::name_invalid(format!(
            "repository name {:?} {why}",
            truncate(name)
        )))
    };
    if name.is_empty() {
        return bad("is empty");
    }
    if name.len() > MAX_NAME {
        return bad(&format!("is longer than {MAX_NAME} bytes"));
    }
    for component in name.split('/') {
        if !component_ok(component) {
            return bad(&format!(
                "has the component {:?}; components are lower-case letters and digits \
                 separated by '.', '_', '__' or dashes",
                truncate(component)
            ));
        }
    }
    Ok(())
}

fn component_ok(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator: '.', '_', '__' or one or more '-', then an alphanumeric.
        let sep_len = match b[i] {
            b'.' => 1,
            b'_' if b.get(i + 1) == Some(&b'_') => 2,
            b'_' => 1,
            b'-' => b[i..].iter().take_while(|x| **x == b'-').count(),
            _ => return false,
        };
        i += sep_len;
        if i >= b.len() || !alnum(b[i]) {
            return false;
        }
    }
    true
}

/// `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
pub fn check_tag(tag: &str) -> Result<(), OciError> {
    let b = tag.as_bytes();
    let first = |x: u8| x.is_ascii_alphanumeric() || x == b'_';
    let rest = |x: u8| first(x) || x == b'.' || x == b'-';
    if b.is_empty() || b.len() > 128 || !first(b[0]) || !b[1..].iter().all(|x| rest(*x)) {
        return Err(OciError::tag_invalid(format!(
            "{:?} is neither a tag ([a-zA-Z0-9_][a-zA-Z0-9._-]{{0,127}}) nor a digest",
            truncate(tag)
        )));
    }
    Ok(())
}

/// containerd's `ns` query parameter: a registry host, `host:port`, or `[v6]:port`.
/// Returns it unchanged when valid.
pub fn check_ns(ns: &str) -> Result<&str, OciError> {
    let bad = || {
        OciError::bad_ns(format!(
            "ns={:?} is not a registry host (host, host:port)",
            truncate(ns)
        ))
    };
    if ns.is_empty() || ns.len() > 253 + 6 {
        return Err(bad());
    }
    let (host, port) = if let Some(v6) = ns.strip_prefix('[') {
        let (h, rest) = v6.split_once(']').ok_or_else(bad)?;
        h.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?;
        match rest {
            "" => (None, None),
            r => (None, Some(r.strip_prefix(':').ok_or_else(bad)?)),
        }
    } else {
        match ns.rsplit_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(ns), None),
        }
    };
    if let Some(p) = port
        && (!p.bytes().all(|b| b.is_ascii_digit()) || p.parse::<u16>().is_err())
    {
        return Err(bad());
    }
    if let Some(h) = host {
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if h.is_empty() || !h.split('.').all(label_ok) {
            return Err(bad());
        }
    }
    Ok(ns)
}

/// At most 80 characters of untrusted input, for error messages.
pub fn truncate(s: &str) -> String {
    if s.chars().count() <= 80 {
        s.to_owned()
    } else {
        let t: String = s.chars().take(80).collect();
        format!("{t}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn parses_blobs_and_manifests() {
        let r = parse(&format!("library/nginx/blobs/{D}")).unwrap();
        assert_eq!(r.name, "library/nginx");
        assert!(matches!(r.object, Object::Blob(_)));
        let r = parse("a/b/c/manifests/v1.2-rc_3").unwrap();
        assert_eq!(r.name, "a/b/c");
        assert_eq!(r.object, Object::ManifestTag("v1.2-rc_3".into()));
        let r = parse(&format!("x/manifests/{D}")).unwrap();
        assert!(matches!(r.object, Object::ManifestDigest(_)));
        // A repository may itself be called "blobs" or "manifests".
        let r = parse(&format!("blobs/manifests/blobs/{D}")).unwrap();
        assert_eq!(r.name, "blobs/manifests");
    }

    #[test]
    fn refuses_what_is_outside_the_grammar() {
        for path in [
            format!("../etc/blobs/{D}"),
            format!("a/../b/blobs/{D}"),
            format!("a//b/blobs/{D}"),
            format!("/a/blobs/{D}"),
            format!("A/blobs/{D}"),
            format!("a-/blobs/{D}"),
            format!("a___b/blobs/{D}"),
            format!("a%2e%2e/blobs/{D}"),
            format!("blobs/{D}"),
            "a/blobs/sha256:abc".into(),
            "a/blobs/md5:0123".into(),
            format!("a/blobs/{}", D.to_uppercase()),
            "a/manifests/..".into(),
            "a/manifests/-x".into(),
            format!("a/manifests/{}", "t".repeat(129)),
            "a/tags/list".into(),
            format!("{}/blobs/{D}", "a".repeat(256)),
        ] {
            let e = parse(&path).unwrap_err();
            assert!(e.status.is_client_error(), "{path}: {e:?}");
        }
    }

    #[test]
    fn separators_follow_the_spec() {
        for ok in ["a.b", "a_b", "a__b", "a-b", "a---b", "a0", "0"] {
            assert!(component_ok(ok), "{ok}");
        }
        for bad in ["a..b", "a._b", "a___b", "a-", "-a", "_a", "a_", "", "a b"] {
            assert!(!component_ok(bad), "{bad}");
        }
    }

    #[test]
    fn ns_is_a_host() {
        for ok in [
            "docker.io",
            "registry-1.docker.io",
            "127.0.0.1:5000",
            "localhost",
            "[::1]:5000",
            "[::1]",
        ] {
            assert_eq!(check_ns(ok).unwrap(), ok);
        }
        for bad in [
            "", "a/b", "a:b", "a:99999", "-a.com", "a..b", "http://x", "[::1", "[zz]:1", "a b",
            "[::1]x",
        ] {
            assert!(check_ns(bad).is_err(), "{bad}");
        }
    }
}

//! What an operator asks for, checked: `POST /api/v1/preheat`'s body
//! ([`PreheatRequest`]) turned into a [`JobSpec`], or a message that says
//! what is wrong. Pure: no I/O, nothing looked up.
//!
//! Image references follow Docker's rules: a first component with a `.` or a
//! `:`, or `localhost`, names the registry; otherwise it is `docker.io`, and a
//! one-component name gets `library/`. No tag and no digest means `latest`; a
//! digest wins over a tag.

use serde::Deserialize;
use shoal_proto::Digest;

use super::{Credential, ImageRef, JobSpec, Scope};

/// Longest image reference accepted (characters).
pub const MAX_IMAGE: usize = 512;
/// Platforms one job may name.
pub const MAX_PLATFORMS: usize = 16;
/// Node names one job may name.
pub const MAX_NODES: usize = 10_000;
/// Longest credential field (bytes).
pub const MAX_SECRET: usize = 4096;

/// The body of `POST /api/v1/preheat`. Unknown fields are refused.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreheatRequest {
    /// `[registry/]repository[:tag][@digest]`.
    pub image: String,
    /// `os/arch[/variant]` each; empty or absent: each node's own platform.
    #[serde(default)]
    pub platforms: Vec<String>,
    /// Which peers; absent: all.
    #[serde(default)]
    pub scope: Option<ScopeRequest>,
    /// For a private image.
    #[serde(default)]
    pub credential: Option<CredentialRequest>,
}

/// `"all"`, `{"zone": Z}`, `{"count": N}`, `{"percent": P}` or `{"nodes": [..]}`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum ScopeRequest {
    /// Every connected peer.
    All,
    /// Peers of one zone.
    Zone(String),
    /// This many peers.
    Count(u64),
    /// This share of the peers, rounded up.
    Percent(u64),
    /// These peers, by peer id or hostname.
    Nodes(Vec<String>),
}

/// `{"username", "password"}` or `{"token"}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialRequest {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    token: String,
}

impl std::fmt::Debug for CredentialRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CredentialRequest(<redacted>)")
    }
}

impl PreheatRequest {
    /// Checks every field; the first problem found, in words.
    pub fn check(self) -> Result<JobSpec, String> {
        let image = parse_image(&self.image)?;
        if self.platforms.len() > MAX_PLATFORMS {
            return Err(format!(
                "at most {MAX_PLATFORMS} platforms ({} given)",
                self.platforms.len()
            ));
        }
        let mut platforms = Vec::new();
        for p in &self.platforms {
            let p = parse_platform(p)?;
            if !platforms.contains(&p) {
                platforms.push(p);
            }
        }
        let scope = match self.scope.unwrap_or(ScopeRequest::All) {
            ScopeRequest::All => Scope::All,
            ScopeRequest::Zone(z) => {
                if z.is_empty() || z.len() > 128 || z.chars().any(char::is_control) {
                    return Err("scope.zone must be 1 to 128 characters".into());
                }
                Scope::Zone(z)
            }
            ScopeRequest::Count(n) => match u32::try_from(n) {
                Ok(n @ 1..) => Scope::Count(n),
                _ => return Err(format!("scope.count must be at least 1 (got {n})")),
            },
            ScopeRequest::Percent(p) => match u8::try_from(p) {
                Ok(p @ 1..=100) => Scope::Percent(p),
                _ => return Err(format!("scope.percent must be 1 to 100 (got {p})")),
            },
            ScopeRequest::Nodes(names) => {
                if names.is_empty() {
                    return Err("scope.nodes names no node".into());
                }
                if names.len() > MAX_NODES {
                    return Err(format!("scope.nodes names more than {MAX_NODES} nodes"));
                }
                let mut out: Vec<String> = Vec::new();
                for n in names {
                    if n.is_empty()
                        || n.len() > 253
                        || !n
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
                    {
                        return Err(format!(
                            "scope.nodes: {:?} is not a node name (1 to 253 characters of [A-Za-z0-9._-])",
                            cut(&n)
                        ));
                    }
                    if !out.contains(&n) {
                        out.push(n);
                    }
                }
                Scope::Nodes(out)
            }
        };
        let credential = self.credential.map(check_credential).transpose()?;
        Ok(JobSpec {
            image,
            platforms,
            scope,
            credential,
        })
    }
}

fn check_credential(c: CredentialRequest) -> Result<Credential, String> {
    let visible = |s: &str| s.bytes().all(|b| (0x20..0x7f).contains(&b));
    for (name, v) in [
        ("username", &c.username),
        ("password", &c.password),
        ("token", &c.token),
    ] {
        // Never echo the value.
        if v.len() > MAX_SECRET || !visible(v) {
            return Err(format!(
                "credential.{name} must be at most {MAX_SECRET} printable ASCII characters"
            ));
        }
    }
    match (c.username.is_empty(), c.password.is_empty(), c.token.is_empty()) {
        (false, false, true) if !c.username.contains(':') => Ok(Credential::Basic {
            username: c.username,
            password: c.password,
        }),
        (false, false, true) => Err("credential.username may not contain ':'".into()),
        (true, true, false) => Ok(Credential::Token(c.token)),
        _ => Err(
            "credential takes either a username and a password, or a token (a registry bearer token)"
                .into(),
        ),
    }
}

/// Client input echoed in a message, cut short.
fn cut(s: &str) -> String {
    match s.char_indices().nth(80) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// Parses an image reference (see the module doc).
pub fn parse_image(input: &str) -> Result<ImageRef, String> {
    let bad = |why: &str| Err(format!("image {:?}: {why}", cut(input)));
    if input.is_empty() {
        return bad("empty; expected e.g. registry.example:5000/team/app:v1");
    }
    if input.len() > MAX_IMAGE {
        return bad(&format!("longer than {MAX_IMAGE} characters"));
    }
    if !input.bytes().all(|b| b.is_ascii_graphic()) {
        return bad("only visible ASCII characters, no spaces");
    }
    let (name_tag, digest) = match input.split_once('@') {
        Some((n, d)) => match d.parse::<Digest>() {
            Ok(d) => (n, Some(d)),
            Err(e) => return bad(&format!("bad digest: {e}")),
        },
        None => (input, None),
    };
    let slash = name_tag.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name_tag[slash..].rfind(':') {
        Some(i) => (&name_tag[..slash + i], Some(&name_tag[slash + i + 1..])),
        None => (name_tag, None),
    };
    if let Some(t) = tag {
        let ok = !t.is_empty()
            && t.len() <= 128
            && t.bytes().enumerate().all(|(i, b)| {
                b.is_ascii_alphanumeric() || b == b'_' || (i > 0 && (b == b'.' || b == b'-'))
            });
        if !ok {
            return bad("the tag must be 1 to 128 of [A-Za-z0-9_.-], not starting with . or -");
        }
    }
    let (registry, repository) = match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (first.to_owned(), rest.to_owned())
        }
        Some(_) => ("docker.io".to_owned(), name.to_owned()),
        None => ("docker.io".to_owned(), format!("library/{name}")),
    };
    if !valid_registry(&registry) {
        return bad("the registry must be host[:port]");
    }
    if !valid_repository(&repository) {
        return bad(
            "the repository must be lowercase components of [a-z0-9] joined by . _ __ or -, separated by /",
        );
    }
    let reference = match (digest, tag) {
        (Some(d), _) => d.to_string(),
        (None, Some(t)) => t.to_owned(),
        (None, None) => "latest".to_owned(),
    };
    Ok(ImageRef {
        registry,
        repository,
        reference,
    })
}

fn valid_registry(r: &str) -> bool {
    let (host, port) = match r.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(':') && !h.is_empty() && !r.starts_with('[') => (h, Some(p)),
        _ if r.starts_with('[') => match r.split_once(']') {
            Some((h, rest)) => (
                &h[1..],
                match rest.strip_prefix(':') {
                    Some(p) => Some(p),
                    None if rest.is_empty() => None,
                    None => return false,
                },
            ),
            None => return false,
        },
        _ => (r, None),
    };
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b':');
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|n| n > 0));
    host_ok && port_ok
}

fn valid_repository(repo: &str) -> bool {
    if repo.is_empty() || repo.len() > 255 {
        return false;
    }
    repo.split('/').all(|c| {
        let b = c.as_bytes();
        if b.is_empty() || !b[0].is_ascii_alphanumeric() || !b[b.len() - 1].is_ascii_alphanumeric()
        {
            return false;
        }
        let mut i = 0;
        while i < b.len() {
            let ch = b[i];
            if ch.is_ascii_lowercase() || ch.is_ascii_digit() {
                i += 1;
                continue;
            }
            // A separator: `.`, `_`, `__` or a run of `-`.
            match ch {
                b'.' => i += 1,
                b'_' => i += if b.get(i + 1) == Some(&b'_') { 2 } else { 1 },
                b'-' => {
                    while b.get(i) == Some(&b'-') {
                        i += 1;
                    }
                }
                _ => return false,
            }
            if !b
                .get(i)
                .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            {
                return false;
            }
        }
        true
    })
}

/// Parses `os/arch[/variant]` (lowercase).
pub fn parse_platform(p: &str) -> Result<String, String> {
    let parts: Vec<&str> = p.split('/').collect();
    let ok = (2..=3).contains(&parts.len())
        && parts.iter().all(|s| {
            !s.is_empty()
                && s.len() <= 32
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.')
        });
    if ok {
        Ok(p.to_owned())
    } else {
        Err(format!(
            "platform {:?}: expected os/arch[/variant], e.g. linux/amd64 or linux/arm/v7",
            cut(p)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(s: &str) -> (String, String, String) {
        let r = parse_image(s).unwrap();
        (r.registry, r.repository, r.reference)
    }

    #[test]
    fn image_references_follow_docker_rules() {
        let d = format!("sha256:{}", "ab".repeat(32));
        let t = |a: &str, b: &str, c: &str| (a.to_owned(), b.to_owned(), c.to_owned());
        assert_eq!(img("nginx"), t("docker.io", "library/nginx", "latest"));
        assert_eq!(img("team/app:v1"), t("docker.io", "team/app", "v1"));
        assert_eq!(
            img("127.0.0.1:5000/team/app:v1"),
            t("127.0.0.1:5000", "team/app", "v1")
        );
        assert_eq!(img("localhost/a/b/c"), t("localhost", "a/b/c", "latest"));
        assert_eq!(
            img(&format!("reg.example/app:v1@{d}")),
            t("reg.example", "app", &d)
        );
        assert_eq!(
            img("reg.example:443/a_b__c-d.e"),
            t("reg.example:443", "a_b__c-d.e", "latest")
        );
        for bad in [
            "",
            "UPPER/case",
            "a//b",
            "app:",
            "app:-x",
            "app@sha256:zz",
            "reg.example:99999/app",
            "app with space",
            "-app",
            "app-",
            "a/..b",
            &"a".repeat(600),
        ] {
            assert!(parse_image(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn requests_are_checked_field_by_field() {
        let req = |v: serde_json::Value| -> Result<JobSpec, String> {
            serde_json::from_value::<PreheatRequest>(v)
                .map_err(|e| e.to_string())?
                .check()
        };
        let ok = req(serde_json::json!({"image": "r.example/a:v1", "platforms": ["linux/amd64", "linux/amd64", "linux/arm/v7"], "scope": {"count": 3}})).unwrap();
        assert_eq!(ok.platforms, ["linux/amd64", "linux/arm/v7"]);
        assert_eq!(ok.scope, Scope::Count(3));
        assert_eq!(
            req(serde_json::json!({"image": "a"})).unwrap().scope,
            Scope::All
        );
        assert_eq!(
            req(serde_json::json!({"image": "a", "scope": "all"}))
                .unwrap()
                .scope,
            Scope::All
        );
        for (bad, says) in [
            (
                serde_json::json!({"image": "a", "scope": {"count": 0}}),
                "count",
            ),
            (
                serde_json::json!({"image": "a", "scope": {"percent": 101}}),
                "percent",
            ),
            (
                serde_json::json!({"image": "a", "scope": {"nodes": []}}),
                "nodes",
            ),
            (
                serde_json::json!({"image": "a", "scope": {"nodes": ["a/b"]}}),
                "nodes",
            ),
            (
                serde_json::json!({"image": "a", "scope": {"galaxy": 1}}),
                "unknown variant",
            ),
            (
                serde_json::json!({"image": "a", "platforms": ["linux"]}),
                "platform",
            ),
            (
                serde_json::json!({"image": "a", "extra": 1}),
                "unknown field",
            ),
            (
                serde_json::json!({"image": "a", "credential": {"username": "u"}}),
                "credential",
            ),
            (
                serde_json::json!({"image": "a", "credential": {"username": "u", "password": "p", "token": "t"}}),
                "credential",
            ),
            (serde_json::json!({"platforms": []}), "image"),
        ] {
            let e = req(bad.clone()).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn a_bad_credential_is_refused_without_being_echoed() {
        let secret = "hunter2\u{7}";
        let e = serde_json::from_value::<PreheatRequest>(serde_json::json!({
            "image": "a", "credential": {"username": "u", "password": secret}
        }))
        .unwrap()
        .check()
        .unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
        let c = CredentialRequest {
            username: "u".into(),
            password: "hunter2".into(),
            token: String::new(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}

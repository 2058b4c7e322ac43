//! A `WWW-Authenticate: Bearer realm="…",service="…",scope="…"` challenge, and the
//! anonymous token for it: how the mirror learns that a repository of a token registry
//! (Docker Hub, …) is public. Such a registry answers even an anonymous `HEAD` with a
//! 401; a repository is public when a token fetched *without credentials* opens it.
//!
//! Pure parsing here ([`BearerChallenge::parse`]); the fetch is
//! [`RegistryClient::anonymous_token`](super::RegistryClient::anonymous_token). No
//! credential is ever sent to the realm: only the anonymous request containerd itself
//! makes for a public image.

/// The parameters of a `Bearer` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BearerChallenge {
    /// The token endpoint (`http://` or `https://` only).
    pub realm: String,
    /// `service`, when given.
    pub service: Option<String>,
    /// `scope`, when given (space-separated scopes).
    pub scope: Option<String>,
}

impl BearerChallenge {
    /// Parses `Bearer realm="…",service="…",scope="…"`; `None` for another scheme, no
    /// realm, or a realm that is not an http(s) URL.
    pub fn parse(header: &str) -> Option<BearerChallenge> {
        let (scheme, rest) = header.trim().split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let (mut realm, mut service, mut scope) = (None, None, None);
        let mut rest = rest.trim();
        while let Some((key, tail)) = rest.split_once('=') {
            let key = key
                .trim()
                .trim_start_matches(',')
                .trim()
                .to_ascii_lowercase();
            let tail = tail.trim_start();
            let (value, next) = match tail.strip_prefix('"') {
                Some(q) => {
                    let end = q.find('"')?;
                    (&q[..end], &q[end + 1..])
                }
                None => {
                    let end = tail.find(',').unwrap_or(tail.len());
                    (&tail[..end], &tail[end..])
                }
            };
            match key.as_str() {
                "realm" => realm = Some(value.to_owned()),
                "service" => service = Some(value.to_owned()),
                "scope" => scope = Some(value.to_owned()),
                _ => {}
            }
            rest = next.trim_start().trim_start_matches(',');
        }
        let realm = realm?;
        let url = reqwest::Url::parse(&realm).ok()?;
        if !matches!(url.scheme(), "http" | "https") {
            return None;
        }
        Some(BearerChallenge {
            realm,
            service,
            scope,
        })
    }

    /// The realm URL with `service` and each `scope` as query parameters.
    pub fn token_url(&self) -> Option<reqwest::Url> {
        let mut url = reqwest::Url::parse(&self.realm).ok()?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = &self.service {
                q.append_pair("service", s);
            }
            for scope in self.scope.iter().flat_map(|s| s.split(' ')) {
                if !scope.is_empty() {
                    q.append_pair("scope", scope);
                }
            }
        }
        Some(url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_registries_send() {
        let c = BearerChallenge::parse(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#,
        )
        .unwrap();
        assert_eq!(c.realm, "https://auth.docker.io/token");
        assert_eq!(c.service.as_deref(), Some("registry.docker.io"));
        assert_eq!(c.scope.as_deref(), Some("repository:library/alpine:pull"));
        assert_eq!(
            c.token_url().unwrap().as_str(),
            "https://auth.docker.io/token?service=registry.docker.io&scope=repository%3Alibrary%2Falpine%3Apull"
        );
        let c = BearerChallenge::parse(r#"bearer realm="http://t/x", error="insufficient_scope""#)
            .unwrap();
        assert_eq!((c.service, c.scope), (None, None));
        for bad in [
            r#"Basic realm="x""#,
            r#"Bearer service="s""#,
            r#"Bearer realm="file:///etc/passwd""#,
            r#"Bearer realm="unterminated"#,
            "Bearer",
        ] {
            assert_eq!(BearerChallenge::parse(bad), None, "{bad}");
        }
    }
}

//! A small token service for `docker-registry`'s `auth: token`, and a client that does
//! the registry auth dance the way containerd does it.
//!
//! [`TokenService`] listens on 127.0.0.1 and answers `GET /token?service=…&scope=…`
//! (with `Authorization: Basic` for a user, or none for an anonymous caller) with
//! `{"token": JWT, "access_token": JWT, "expires_in": …}`. The JWT is ES256, signed with a
//! P-256 key whose self-signed certificate is written to [`TokenService::cert`] (the
//! registry's `rootcertbundle`) and sent in the token's `x5c` header. Users with the
//! right password get `pull` on every repository they ask for; anonymous callers only
//! on the repositories listed as public; a wrong password is a 401.
//!
//! [`AuthClient`] pulls with reqwest as containerd does: ask, and on a 401 read the
//! `WWW-Authenticate` challenge; `Basic` → retry with the user and password; `Bearer
//! realm=…,service=…,scope=…` → fetch a token from the realm (with Basic credentials
//! when it has them) and retry with `Authorization: Bearer`. Tokens are cached per
//! scope, as containerd does for a pull.
//!
//! Not here: the registry itself ([`crate::registry`]), refresh tokens, push scopes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// The `service` (JWT audience) the registry is configured with.
pub const SERVICE: &str = "shoal-test-registry";
/// The `issuer` the registry is configured with.
pub const ISSUER: &str = "shoal-test-token-service";

/// A running token service; stops with the runtime that started it.
#[derive(Clone)]
pub struct TokenService {
    addr: SocketAddr,
    cert: PathBuf,
    signer: Arc<Signer>,
    issued: Arc<AtomicU64>,
}

impl std::fmt::Debug for TokenService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenService")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

struct Signer {
    key: EcdsaKeyPair,
    cert_der: Vec<u8>,
    rng: SystemRandom,
}

/// Who may get a token for what.
#[derive(Debug, Clone, Default)]
pub struct TokenPolicy {
    /// `(user, password)` pairs; each gets `pull` on any repository.
    pub users: Vec<(String, String)>,
    /// Repositories an anonymous caller gets `pull` on.
    pub public: Vec<String>,
    /// Lifetime of the tokens issued, in seconds (`expires_in`).
    pub lifetime_secs: i64,
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

impl TokenService {
    /// Writes a key and its self-signed certificate under `dir` and starts serving.
    /// Must be called within a tokio runtime.
    pub async fn start(dir: &Path, policy: TokenPolicy) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = rcgen::CertificateParams::new(vec![ISSUER.to_owned()])?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, ISSUER);
        let cert = params.self_signed(&key)?;
        let cert_path = dir.join("token-signer.pem");
        std::fs::write(&cert_path, cert.pem())?;
        let rng = SystemRandom::new();
        let signing =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &key.serialize_der(), &rng)
                .map_err(|e| anyhow::anyhow!("token key: {e}"))?;
        let signer = Arc::new(Signer {
            key: signing,
            cert_der: cert.der().to_vec(),
            rng,
        });
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let service = TokenService {
            addr,
            cert: cert_path,
            signer,
            issued: Arc::default(),
        };
        let (s, policy) = (service.clone(), Arc::new(policy));
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let (s, policy) = (s.clone(), policy.clone());
                tokio::spawn(async move {
                    let _ = s.answer(sock, &policy).await;
                });
            }
        });
        Ok(service)
    }

    /// The realm: `http://127.0.0.1:PORT/token`.
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// The signer's certificate (PEM): the registry's `rootcertbundle`.
    pub fn cert(&self) -> &Path {
        &self.cert
    }

    /// Tokens issued so far.
    pub fn issued(&self) -> u64 {
        self.issued.load(Ordering::SeqCst)
    }

    /// A token for `subject` with `pull` on `repos`, expiring `lifetime` seconds from
    /// now (negative: already expired).
    pub fn mint(&self, subject: &str, repos: &[&str], lifetime: i64) -> String {
        let now = unix_now();
        let header = serde_json::json!({
            "typ": "JWT",
            "alg": "ES256",
            "x5c": [STANDARD.encode(&self.signer.cert_der)],
        });
        let access: Vec<_> = repos
            .iter()
            .map(|r| serde_json::json!({"type": "repository", "name": r, "actions": ["pull"]}))
            .collect();
        let claims = serde_json::json!({
            "iss": ISSUER,
            "sub": subject,
            "aud": SERVICE,
            "exp": now + lifetime,
            "nbf": now.min(now + lifetime) - 10,
            "iat": now.min(now + lifetime) - 10,
            "jti": format!("{:x}", rand_u64()),
            "access": access,
        });
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = self
            .signer
            .key
            .sign(&self.signer.rng, input.as_bytes())
            .expect("ECDSA signing");
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }

    async fn answer(
        &self,
        mut sock: tokio::net::TcpStream,
        policy: &TokenPolicy,
    ) -> anyhow::Result<()> {
        let mut head = Vec::new();
        let mut buf = [0u8; 2048];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match sock.read(&mut buf).await? {
                0 => return Ok(()),
                n => head.extend_from_slice(&buf[..n]),
            }
            anyhow::ensure!(head.len() < 64 << 10, "request head too large");
        }
        let text = String::from_utf8_lossy(&head).to_string();
        let target = text
            .lines()
            .next()
            .unwrap_or("")
            .split(' ')
            .nth(1)
            .unwrap_or("");
        let query = target.split_once('?').map(|(_, q)| q).unwrap_or("");
        let params: Vec<(String, String)> = query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), percent_decode(v)))
            .collect();
        let basic = text.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            if !name.eq_ignore_ascii_case("authorization") {
                return None;
            }
            let b64 = value.trim().strip_prefix("Basic ")?;
            let raw = STANDARD.decode(b64.trim()).ok()?;
            let raw = String::from_utf8(raw).ok()?;
            let (u, p) = raw.split_once(':')?;
            Some((u.to_owned(), p.to_owned()))
        });
        let user = match &basic {
            None => None,
            Some(creds) if policy.users.contains(creds) => Some(creds.0.clone()),
            Some(_) => {
                let body =
                    r#"{"errors":[{"code":"UNAUTHORIZED","message":"wrong user or password"}]}"#;
                let resp = format!(
                    "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                sock.write_all(resp.as_bytes()).await?;
                return Ok(());
            }
        };
        // scope=repository:NAME:pull (several scope parameters may come).
        let repos: Vec<String> = params
            .iter()
            .filter(|(k, _)| k == "scope")
            .filter_map(|(_, v)| {
                let rest = v.strip_prefix("repository:")?;
                let (name, actions) = rest.rsplit_once(':')?;
                actions
                    .split(',')
                    .any(|a| a == "pull")
                    .then(|| name.to_owned())
            })
            .filter(|name| user.is_some() || policy.public.contains(name))
            .collect();
        let repos: Vec<&str> = repos.iter().map(String::as_str).collect();
        let lifetime = if policy.lifetime_secs > 0 {
            policy.lifetime_secs
        } else {
            300
        };
        let token = self.mint(user.as_deref().unwrap_or(""), &repos, lifetime);
        self.issued.fetch_add(1, Ordering::SeqCst);
        let body = serde_json::json!({
            "token": token,
            "access_token": token,
            "expires_in": lifetime,
        })
        .to_string();
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        sock.write_all(resp.as_bytes()).await?;
        Ok(())
    }
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    ring::rand::SecureRandom::fill(&SystemRandom::new(), &mut b).expect("random bytes");
    u64::from_le_bytes(b)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => match u8::from_str_radix(&s[i + 1..i + 3], 16) {
                Ok(v) => {
                    out.push(v);
                    i += 3;
                }
                Err(_) => {
                    out.push(b'%');
                    i += 1;
                }
            },
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An `htpasswd` line (`user:$2y$…`, bcrypt) made with `htpasswd -nbB` (apache2-utils).
pub fn htpasswd_line(user: &str, password: &str) -> anyhow::Result<String> {
    let out = std::process::Command::new("htpasswd")
        .args(["-nbB", user, password])
        .output()
        .map_err(|e| anyhow::anyhow!("running htpasswd (apache2-utils): {e}"))?;
    anyhow::ensure!(
        out.status.success(),
        "htpasswd: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

/// The manifest media types containerd accepts (distribution answers an OCI manifest
/// only to a client that accepts it).
pub const MANIFEST_TYPES: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";

/// `Basic <base64(user:password)>`.
pub fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
}

/// How a pull through [`AuthClient::get`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The final status (after the auth dance).
    pub status: u16,
    /// `sha256:…` of the body.
    pub digest: String,
    /// Body bytes.
    pub len: u64,
    /// The body when it is short (an OCI error), else empty.
    pub text: String,
}

/// A registry client doing the auth dance as containerd does (see the module doc).
#[derive(Debug, Clone)]
pub struct AuthClient {
    http: reqwest::Client,
    creds: Option<(String, String)>,
    tokens: Arc<Mutex<HashMap<String, String>>>,
}

impl AuthClient {
    /// A client with `creds` (user, password), or anonymous.
    pub fn new(creds: Option<(&str, &str)>) -> Self {
        AuthClient {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("reqwest client"),
            creds: creds.map(|(u, p)| (u.to_owned(), p.to_owned())),
            tokens: Arc::default(),
        }
    }

    fn basic(&self) -> Option<String> {
        self.creds.as_ref().map(|(u, p)| basic(u, p))
    }

    /// `method` (`GET`/`HEAD`) of `url`; on a 401, answers its challenge once and asks
    /// again (a token the service refuses leaves the 401). The body is hashed, not kept.
    pub async fn get(&self, method: &str, url: &str) -> anyhow::Result<Fetched> {
        let method = reqwest::Method::from_bytes(method.as_bytes())?;
        let send = |auth: Option<String>| {
            let mut req = self.http.request(method.clone(), url);
            if url.contains("/manifests/") {
                req = req.header(reqwest::header::ACCEPT, MANIFEST_TYPES);
            }
            if let Some(a) = auth {
                req = req.header(reqwest::header::AUTHORIZATION, a);
            }
            req.send()
        };
        // A cached token for this URL's repository goes first, as containerd does.
        let cached = self
            .tokens
            .lock()
            .expect("tokens")
            .get(&repo_of(url))
            .cloned();
        let mut resp = send(cached.map(|t| format!("Bearer {t}"))).await?;
        if resp.status() == reqwest::StatusCode::UNAUTHORIZED {
            let challenge = resp
                .headers()
                .get(reqwest::header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let auth = if challenge.starts_with("Basic") {
                self.basic()
            } else if let Some(params) = challenge.strip_prefix("Bearer ") {
                // A token service that refuses (wrong password) leaves the 401 as the
                // answer, as containerd gives up then.
                match self.token(params).await {
                    Ok(token) => {
                        self.tokens
                            .lock()
                            .expect("tokens")
                            .insert(repo_of(url), token.clone());
                        Some(format!("Bearer {token}"))
                    }
                    Err(_) => None,
                }
            } else {
                None
            };
            if auth.is_some() {
                resp = send(auth).await?;
            }
        }
        read(resp).await
    }

    /// Fetches a token for a `Bearer` challenge's parameters.
    async fn token(&self, params: &str) -> anyhow::Result<String> {
        let p = challenge_params(params);
        let realm = p
            .get("realm")
            .ok_or_else(|| anyhow::anyhow!("challenge without realm: {params}"))?;
        let mut url = reqwest::Url::parse(realm)?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = p.get("service") {
                q.append_pair("service", s);
            }
            if let Some(s) = p.get("scope") {
                for scope in s.split(' ') {
                    q.append_pair("scope", scope);
                }
            }
        }
        let mut req = self.http.get(url);
        if let Some(b) = self.basic() {
            req = req.header(reqwest::header::AUTHORIZATION, b);
        }
        let resp = req.send().await?;
        anyhow::ensure!(
            resp.status().is_success(),
            "token service answered {}",
            resp.status()
        );
        let v: serde_json::Value = resp.json().await?;
        v["token"]
            .as_str()
            .or(v["access_token"].as_str())
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("token service answered without a token: {v}"))
    }
}

/// `/v2/<repo>/blobs|manifests/…` → `<repo>` (the token cache's key).
fn repo_of(url: &str) -> String {
    let path = url.split("/v2/").nth(1).unwrap_or("");
    let path = path.split('?').next().unwrap_or("");
    path.rsplit_once("/blobs/")
        .or_else(|| path.rsplit_once("/manifests/"))
        .map(|(r, _)| r.to_owned())
        .unwrap_or_default()
}

/// `realm="…",service="…",scope="…"` → map.
fn challenge_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = s.trim();
    while let Some((k, v)) = rest.split_once('=') {
        let k = k.trim().trim_start_matches(',').trim().to_owned();
        let v = v.trim_start();
        let (value, tail) = if let Some(q) = v.strip_prefix('"') {
            let end = q.find('"').unwrap_or(q.len());
            (q[..end].to_owned(), q.get(end + 1..).unwrap_or(""))
        } else {
            let end = v.find(',').unwrap_or(v.len());
            (v[..end].to_owned(), &v[end..])
        };
        out.insert(k, value);
        rest = tail.trim_start_matches(',');
    }
    out
}

async fn read(resp: reqwest::Response) -> anyhow::Result<Fetched> {
    use futures::StreamExt;
    use sha2::Digest as _;
    let status = resp.status().as_u16();
    let mut hasher = sha2::Sha256::new();
    let mut len = 0u64;
    let mut small = Vec::new();
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        len += chunk.len() as u64;
        hasher.update(&chunk);
        if small.len() < 4096 {
            small.extend_from_slice(&chunk[..chunk.len().min(4096 - small.len())]);
        }
    }
    Ok(Fetched {
        status,
        digest: format!("sha256:{:x}", hasher.finalize()),
        len,
        text: if status >= 300 {
            String::from_utf8_lossy(&small).into_owned()
        } else {
            String::new()
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_and_repos_parse() {
        let p = challenge_params(
            r#"realm="http://127.0.0.1:1/token",service="svc",scope="repository:a/b:pull""#,
        );
        assert_eq!(p["realm"], "http://127.0.0.1:1/token");
        assert_eq!(p["service"], "svc");
        assert_eq!(p["scope"], "repository:a/b:pull");
        assert_eq!(
            repo_of("http://x/v2/team/app/blobs/sha256:ab?ns=r"),
            "team/app"
        );
        assert_eq!(
            percent_decode("repository%3Aa%2Fb%3Apull"),
            "repository:a/b:pull"
        );
    }
}

//! containerd's `hosts.toml`, read: text and the file's directory in, the ordered list of
//! endpoints ([`EndpointSpec`]) out, as containerd's `config/hosts.go` would build them.
//!
//! Understood: `server`; `[host."<url>"]` entries in file order; in both places
//! `capabilities`, `ca` (path or array), `client` (path, array of paths, or array of
//! `[cert, key]` pairs; `""` as key means the key is in the cert file), `skip_verify`,
//! `override_path`, `dial_timeout` (Go duration), `proxy` (http/https only), `[header]`
//! with string or array values. Relative paths are relative to the file's directory.
//! URLs without a scheme get `https://`; query and user info are dropped; the API root is the URL's path with `/v2`
//! appended unless it already ends in `/v2` or `override_path` is set.
//! Keys containerd does not know are returned in [`HostsToml::ignored`] (containerd
//! ignores them too, so refusing them would break nodes that containerd accepts).
//!
//! Also here: the Docker certificate layout used when a registry directory has no
//! `hosts.toml` ([`from_cert_files`]), and dropping the entries that point at this peer's
//! own mirror ([`without_own_mirrors`]).
//!
//! Not here: reading files (the caller passes text and file names), certificates
//! (only their paths are collected), HTTP.
//!
//! Where containerd differs: a file that does not parse falls back to the certificate
//! files in containerd (with an error in its log); here it is an error naming file and
//! line, because silently pulling without the configured TLS is worse than failing.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::Url;
use toml_edit::{Document, Item, TableLike, Value};

use super::names::Authority;
use super::{Object, RegistryError};

/// What a host may be asked to do (containerd's `capabilities`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Fetch blobs and manifests by digest.
    pub pull: bool,
    /// Resolve a tag to a digest (fetch a manifest by tag).
    pub resolve: bool,
    /// Push (never used by Shoal; kept to mirror the file).
    pub push: bool,
}

impl Capabilities {
    /// All three: the default when `capabilities` is absent or empty.
    pub const ALL: Capabilities = Capabilities {
        pull: true,
        resolve: true,
        push: true,
    };
}

/// Whether an endpoint comes from a `[host."…"]` entry or is the namespace's server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A `[host."…"]` entry: tried first, in file order.
    Mirror,
    /// `server` (or the implicit server): tried last.
    Server,
}

/// A file named by `hosts.toml` (absolute), with the line that names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedFile {
    /// The file.
    pub path: PathBuf,
    /// 1-based line in `hosts.toml`; `None` for files found in the directory.
    pub line: Option<usize>,
}

/// A client certificate and its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientPair {
    /// The certificate chain (PEM).
    pub cert: NamedFile,
    /// The private key (PEM); `None` when it is in the certificate file.
    pub key: Option<NamedFile>,
}

/// One endpoint of a registry, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSpec {
    /// The API root: requests go to `<url>/<repo>/blobs/<digest>` (path without a
    /// trailing `/`; usually ends in `/v2`).
    pub url: Url,
    /// Mirror entry or server.
    pub role: Role,
    /// What it may be asked to do.
    pub capabilities: Capabilities,
    /// Extra CA certificates (PEM) trusted besides the built-in roots.
    pub ca: Vec<NamedFile>,
    /// Client certificates; the first is presented.
    pub client: Vec<ClientPair>,
    /// Accept any server certificate.
    pub skip_verify: bool,
    /// Headers sent with every request, in file order (name, value).
    pub headers: Vec<(String, String)>,
    /// containerd's `dial_timeout`: replaces the connect timeout for this endpoint.
    pub dial_timeout: Option<Duration>,
    /// An HTTP(S) proxy for this endpoint.
    pub proxy: Option<Url>,
    /// The TLS half of an `insecure` registry of containers-registries.conf, followed by
    /// its plain-HTTP twin: tried once, and a failure moves on quietly (containers/image
    /// tries HTTPS, then HTTP, the same way). Always false from `hosts.toml`.
    pub tls_probe: bool,
}

impl EndpointSpec {
    /// The API root as a string without a trailing `/`.
    pub fn api_root(&self) -> &str {
        self.url.as_str().trim_end_matches('/')
    }

    /// Whether this endpoint may be asked for `object`: `resolve` for a manifest by tag,
    /// `pull` for everything else.
    pub fn may_serve(&self, object: &Object) -> bool {
        if object.is_tag() {
            self.capabilities.resolve
        } else {
            self.capabilities.pull
        }
    }
}

/// A parsed `hosts.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostsToml {
    /// Mirrors in file order, then the server.
    pub endpoints: Vec<EndpointSpec>,
    /// Keys that were ignored (dotted, e.g. `host."https://m".mirror_weight`).
    pub ignored: Vec<String>,
}

/// Parses the text of `path` (a `hosts.toml`). `implicit_server` is the server used when
/// the file has no `server` key (e.g. `https://registry-1.docker.io`).
pub fn parse(text: &str, path: &Path, implicit_server: &str) -> Result<HostsToml, RegistryError> {
    let cx = Cx {
        text,
        path,
        dir: path.parent().unwrap_or(Path::new("/")),
    };
    let doc = Document::parse(text).map_err(|e| cx.error(e.span(), e.message().to_owned()))?;
    let root = doc.as_table();
    let mut ignored = Vec::new();
    let mut endpoints = Vec::new();
    if let Some(hosts) = root.get("host") {
        let span = hosts.span().or_else(|| key_span(root, "host"));
        let hosts = hosts
            .as_table_like()
            .ok_or_else(|| cx.error(span, "`host` must be a table of `[host.\"<url>\"]`".into()))?;
        for (url, item) in hosts.iter() {
            let span = key_span(hosts, url).or_else(|| item.span());
            let table = item.as_table_like().ok_or_else(|| {
                cx.error(span.clone(), format!("`host.\"{url}\"` must be a table"))
            })?;
            let prefix = format!("host.\"{url}\".");
            let fields = cx.fields(table, &prefix, &mut ignored)?;
            endpoints.push(cx.endpoint(url, span, Role::Mirror, fields)?);
        }
    }
    let fields = cx.fields(root, "", &mut ignored)?;
    let endpoint = match root.get("server") {
        Some(item) => {
            let span = item.span();
            let server = item
                .as_str()
                .ok_or_else(|| cx.error(span.clone(), "`server` must be a string".into()))?;
            cx.endpoint(server, span, Role::Server, fields)?
        }
        None => cx.endpoint(implicit_server, None, Role::Server, fields)?,
    };
    endpoints.push(endpoint);
    Ok(HostsToml { endpoints, ignored })
}

/// The endpoints of a registry directory without `hosts.toml` (Docker's layout): the
/// server `server` trusting every `*.crt` and presenting every `*.cert` (with the
/// `*.key` of the same stem when there is one). `names` are the directory's file names.
pub fn from_cert_files(
    dir: &Path,
    names: &[String],
    server: &str,
) -> Result<EndpointSpec, RegistryError> {
    let mut names: Vec<&String> = names.iter().collect();
    names.sort();
    let file = |name: &str| NamedFile {
        path: dir.join(name),
        line: None,
    };
    let ca = names
        .iter()
        .filter(|n| n.ends_with(".crt"))
        .map(|n| file(n))
        .collect();
    let client = names
        .iter()
        .filter_map(|n| n.strip_suffix(".cert"))
        .map(|stem| ClientPair {
            cert: file(&format!("{stem}.cert")),
            key: names
                .iter()
                .any(|n| **n == format!("{stem}.key"))
                .then(|| file(&format!("{stem}.key"))),
        })
        .collect();
    let cx = Cx {
        text: "",
        path: dir,
        dir,
    };
    let fields = Fields {
        ca,
        client,
        ..Fields::default()
    };
    cx.endpoint(server, None, Role::Server, fields)
}

/// The single endpoint of a registry with no directory at all.
pub fn implicit(server: &str, origin: &Path) -> Result<EndpointSpec, RegistryError> {
    let cx = Cx {
        text: "",
        path: origin,
        dir: origin,
    };
    cx.endpoint(server, None, Role::Server, Fields::default())
}

/// Drops the endpoints whose host and port are one of `own` (this peer's mirror: asking
/// it would loop). Returns what is kept and the URLs dropped.
pub fn without_own_mirrors(
    endpoints: Vec<EndpointSpec>,
    own: &[Authority],
) -> (Vec<EndpointSpec>, Vec<Url>) {
    let (dropped, kept): (Vec<_>, Vec<_>) = endpoints
        .into_iter()
        .partition(|e| Authority::of(&e.url).is_some_and(|a| own.contains(&a)));
    (kept, dropped.into_iter().map(|e| e.url).collect())
}

/// Parses a Go duration (`"1s"`, `"500ms"`, `"1m30s"`, `"0"`); `None` when malformed or
/// negative.
pub fn go_duration(s: &str) -> Option<Duration> {
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    if rest.is_empty() {
        return None;
    }
    let mut secs = 0f64;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let n: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        secs += n * unit;
        rest = &rest[unit_end..];
    }
    Duration::try_from_secs_f64(secs).ok()
}

/// The fields shared by `[host."…"]` entries and the top level.
#[derive(Debug, Default)]
struct Fields {
    capabilities: Option<Capabilities>,
    ca: Vec<NamedFile>,
    client: Vec<ClientPair>,
    skip_verify: bool,
    headers: Vec<(String, String)>,
    override_path: bool,
    dial_timeout: Option<Duration>,
    proxy: Option<Url>,
}

/// A string from the file and where it is.
type Spanned<'v> = (&'v str, Option<Range<usize>>);

/// The file being parsed, for paths and error positions.
struct Cx<'a> {
    text: &'a str,
    path: &'a Path,
    dir: &'a Path,
}

fn key_span(table: &dyn TableLike, key: &str) -> Option<Range<usize>> {
    table.key(key).and_then(|k| k.span())
}

impl Cx<'_> {
    fn line(&self, span: Option<Range<usize>>) -> Option<usize> {
        let start = span?.start.min(self.text.len());
        Some(
            self.text.as_bytes()[..start]
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
                + 1,
        )
    }

    fn error(&self, span: Option<Range<usize>>, message: String) -> RegistryError {
        RegistryError::Config {
            path: self.path.to_owned(),
            line: self.line(span),
            message,
        }
    }

    fn file(&self, p: &str, span: Option<Range<usize>>) -> NamedFile {
        let path = Path::new(p);
        NamedFile {
            path: if path.is_absolute() {
                path.to_owned()
            } else {
                self.dir.join(path)
            },
            line: self.line(span),
        }
    }

    fn string<'v>(&self, v: &'v Value, what: &str) -> Result<&'v str, RegistryError> {
        v.as_str()
            .ok_or_else(|| self.error(v.span(), format!("{what} must be a string")))
    }

    /// A string or an array of strings, each with its span.
    fn strings<'v>(
        &self,
        item: &'v Item,
        span: Option<Range<usize>>,
        what: &str,
    ) -> Result<Vec<Spanned<'v>>, RegistryError> {
        match item.as_value() {
            Some(Value::String(s)) => Ok(vec![(s.value().as_str(), span)]),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| Ok((self.string(v, what)?, v.span().or(span.clone()))))
                .collect(),
            _ => Err(self.error(
                span,
                format!("{what} must be a string or an array of strings"),
            )),
        }
    }

    fn fields(
        &self,
        table: &dyn TableLike,
        prefix: &str,
        ignored: &mut Vec<String>,
    ) -> Result<Fields, RegistryError> {
        let mut f = Fields::default();
        for (key, item) in table.iter() {
            let span = item.span().or_else(|| key_span(table, key));
            let bool_value = |what: &str| {
                item.as_bool()
                    .ok_or_else(|| self.error(span.clone(), format!("`{what}` must be a boolean")))
            };
            match key {
                "server" | "host" if prefix.is_empty() => {}
                "capabilities" => f.capabilities = Some(self.capabilities(item, span)?),
                "ca" => {
                    for (p, s) in self.strings(item, span, "`ca`")? {
                        f.ca.push(self.file(p, s));
                    }
                }
                "client" => f.client = self.client(item, span)?,
                "skip_verify" => f.skip_verify = bool_value("skip_verify")?,
                "override_path" => f.override_path = bool_value("override_path")?,
                "header" => f.headers = self.headers(item, span)?,
                "dial_timeout" => {
                    let s = item.as_str().ok_or_else(|| {
                        self.error(span.clone(), "`dial_timeout` must be a string".into())
                    })?;
                    f.dial_timeout = Some(go_duration(s).ok_or_else(|| {
                        self.error(span, format!("`dial_timeout` {s:?} is not a duration"))
                    })?);
                }
                "proxy" => {
                    let s = item.as_str().ok_or_else(|| {
                        self.error(span.clone(), "`proxy` must be a string".into())
                    })?;
                    let url = Url::parse(s)
                        .ok()
                        .filter(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
                        .ok_or_else(|| {
                            self.error(
                                span,
                                format!("`proxy` {s:?} is not an http:// or https:// URL"),
                            )
                        })?;
                    f.proxy = Some(url);
                }
                other => ignored.push(format!("{prefix}{other}")),
            }
        }
        Ok(f)
    }

    fn capabilities(
        &self,
        item: &Item,
        span: Option<Range<usize>>,
    ) -> Result<Capabilities, RegistryError> {
        let list = item
            .as_array()
            .ok_or_else(|| self.error(span.clone(), "`capabilities` must be an array".into()))?;
        if list.is_empty() {
            return Ok(Capabilities::ALL);
        }
        let mut caps = Capabilities {
            pull: false,
            resolve: false,
            push: false,
        };
        for v in list.iter() {
            match self
                .string(v, "a capability")?
                .to_ascii_lowercase()
                .as_str()
            {
                "pull" => caps.pull = true,
                "resolve" => caps.resolve = true,
                "push" => caps.push = true,
                other => {
                    return Err(self.error(
                        v.span().or(span.clone()),
                        format!("unknown capability {other:?} (pull, resolve, push)"),
                    ));
                }
            }
        }
        Ok(caps)
    }

    fn client(
        &self,
        item: &Item,
        span: Option<Range<usize>>,
    ) -> Result<Vec<ClientPair>, RegistryError> {
        let single = |p: &str, s: Option<Range<usize>>| ClientPair {
            cert: self.file(p, s),
            key: None,
        };
        match item.as_value() {
            Some(Value::String(s)) => Ok(vec![single(s.value(), span)]),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| {
                    let vspan = v.span().or(span.clone());
                    match v {
                        Value::String(s) => Ok(single(s.value(), vspan)),
                        Value::Array(pair) if pair.len() == 2 => {
                            let cert = self.string(pair.get(0).expect("len 2"), "`client`")?;
                            let key = self.string(pair.get(1).expect("len 2"), "`client`")?;
                            Ok(ClientPair {
                                cert: self.file(cert, vspan.clone()),
                                key: (!key.is_empty()).then(|| self.file(key, vspan)),
                            })
                        }
                        _ => Err(self.error(
                            vspan,
                            "each `client` entry must be a path or a [cert, key] pair".into(),
                        )),
                    }
                })
                .collect(),
            _ => Err(self.error(
                span,
                "`client` must be a path, an array of paths or of [cert, key] pairs".into(),
            )),
        }
    }

    fn headers(
        &self,
        item: &Item,
        span: Option<Range<usize>>,
    ) -> Result<Vec<(String, String)>, RegistryError> {
        let table = item
            .as_table_like()
            .ok_or_else(|| self.error(span, "`header` must be a table".into()))?;
        let mut out = Vec::new();
        for (name, value) in table.iter() {
            let span = value.span().or_else(|| key_span(table, name));
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(self.error(span, format!("{name:?} is not a header name")));
            }
            for (v, vspan) in self.strings(value, span, &format!("header {name:?}"))? {
                if reqwest::header::HeaderValue::from_str(v).is_err() {
                    // Never echo the value: headers often hold credentials.
                    return Err(self.error(
                        vspan,
                        format!("the value of header {name:?} is not a valid header value"),
                    ));
                }
                out.push((name.to_owned(), v.to_owned()));
            }
        }
        Ok(out)
    }

    fn endpoint(
        &self,
        raw: &str,
        span: Option<Range<usize>>,
        role: Role,
        f: Fields,
    ) -> Result<EndpointSpec, RegistryError> {
        let with_scheme = if raw.contains("://") {
            raw.to_owned()
        } else {
            format!("https://{raw}")
        };
        let mut url = Url::parse(&with_scheme)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
            .ok_or_else(|| {
                self.error(
                    span,
                    format!("{raw:?} is not a registry URL (http:// or https://)"),
                )
            })?;
        // containerd uses only scheme, host and path; user info would end up in logs.
        url.set_query(None);
        url.set_fragment(None);
        let _ = url.set_username("");
        let _ = url.set_password(None);
        let path = url.path().trim_end_matches('/').to_owned();
        let api_root = if f.override_path || path.ends_with("/v2") {
            path
        } else {
            format!("{path}/v2")
        };
        url.set_path(&api_root);
        Ok(EndpointSpec {
            url,
            role,
            capabilities: f.capabilities.unwrap_or(Capabilities::ALL),
            ca: f.ca,
            client: f.client,
            skip_verify: f.skip_verify,
            headers: f.headers,
            dial_timeout: f.dial_timeout,
            proxy: f.proxy,
            tls_probe: false,
        })
    }
}

#[cfg(test)]
mod tests;

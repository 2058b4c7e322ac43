//! `containers-registries.conf` (CRI-O's and Podman's registry configuration), read: the
//! text of one file in, its `[[registry]]` entries out ([`parse`]); several files, in the
//! order containers/image loads them (the main file, then the `registries.conf.d/*.conf`
//! drop-ins in lexical order), merged into the entries in force ([`effective`]), and the
//! entry that applies to one registry host ([`entry_for`]).
//!
//! Understood (version 2): `[[registry]]` with `prefix`, `location`, `insecure`,
//! `blocked`, `mirror-by-digest-only` and `[[registry.mirror]]` with `location`,
//! `insecure`, `pull-from-mirror`. Version 1 (`[registries.insecure]`,
//! `[registries.block]` host lists) becomes entries with those flags, as containers/image
//! converts it. Every other key (`unqualified-search-registries`, `short-name-mode`,
//! `[aliases]`, …) is left alone: it decides which name is pulled, not from where.
//!
//! Merging follows containers-registries.conf.d(5): a later file's `[[registry]]` with
//! the same `prefix` replaces the earlier entry whole (mirrors included); other entries
//! are added.
//!
//! Used by node setup (`shoal-peer containers configure`, which copies the entry in force
//! into its drop-in) and by the upstream client (which learns `location`, `insecure` and
//! the other mirrors from it). Pure: no file access.

use std::ops::Range;
use std::path::{Path, PathBuf};

use toml_edit::{Document, Item, Table, TableLike, Value};

/// Which pulls a mirror serves (`pull-from-mirror`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullFromMirror {
    /// `"all"` (the default): by digest and by tag.
    All,
    /// `"digest-only"`: only pulls by digest.
    DigestOnly,
    /// `"tag-only"`: only pulls by tag.
    TagOnly,
}

impl PullFromMirror {
    /// The value as written in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            PullFromMirror::All => "all",
            PullFromMirror::DigestOnly => "digest-only",
            PullFromMirror::TagOnly => "tag-only",
        }
    }
}

/// One `[[registry.mirror]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfMirror {
    /// `host[:port][/namespace]`.
    pub location: String,
    /// Plain HTTP and unverified TLS allowed.
    pub insecure: bool,
    /// `pull-from-mirror`, `None` when absent (meaning `all`).
    pub pull_from_mirror: Option<PullFromMirror>,
}

/// One `[[registry]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfEntry {
    /// `prefix` (the `location` when absent): a host, `host/namespace`, or `*.domain`.
    pub prefix: String,
    /// `location`; empty only for a `*.domain` prefix.
    pub location: String,
    /// Plain HTTP and unverified TLS allowed.
    pub insecure: bool,
    /// Pulls from this prefix are refused.
    pub blocked: bool,
    /// `mirror-by-digest-only`: the mirrors serve pulls by digest only.
    pub mirror_by_digest_only: bool,
    /// The mirrors, in the order they are tried.
    pub mirrors: Vec<ConfMirror>,
    /// The file it comes from.
    pub file: PathBuf,
    /// 1-based line of its `[[registry]]` header (or of the v1 list naming it).
    pub line: usize,
}

impl ConfEntry {
    /// Where images under the prefix are really pulled from (`location`, else `prefix`).
    pub fn location_or_prefix(&self) -> &str {
        if self.location.is_empty() {
            &self.prefix
        } else {
            &self.location
        }
    }
}

/// Why a file cannot be used, located at `path:line:column`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfError {
    /// The file.
    pub path: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// Whether the file is not TOML at all (else it parses but is not a valid config).
    pub malformed: bool,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for ConfError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.path.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

struct Cx<'a> {
    text: &'a str,
    path: &'a Path,
}

impl Cx<'_> {
    fn error(&self, span: Option<Range<usize>>, message: impl Into<String>) -> ConfError {
        let (line, column) = line_col(self.text, span.map_or(0, |s| s.start));
        ConfError {
            path: self.path.to_owned(),
            line,
            column,
            malformed: false,
            message: message.into(),
        }
    }

    fn line(&self, span: Option<Range<usize>>) -> usize {
        line_col(self.text, span.map_or(0, |s| s.start)).0
    }

    fn string(&self, t: &dyn TableLike, key: &str) -> Result<Option<String>, ConfError> {
        match t.get(key) {
            None => Ok(None),
            Some(item) => item
                .as_str()
                .map(|s| Some(s.trim().to_owned()))
                .ok_or_else(|| self.error(item.span(), format!("`{key}` must be a string"))),
        }
    }

    fn bool(&self, t: &dyn TableLike, key: &str) -> Result<bool, ConfError> {
        match t.get(key) {
            None => Ok(false),
            Some(item) => item
                .as_bool()
                .ok_or_else(|| self.error(item.span(), format!("`{key}` must be true or false"))),
        }
    }

    fn mirror(
        &self,
        t: &dyn TableLike,
        span: Option<Range<usize>>,
    ) -> Result<ConfMirror, ConfError> {
        let location = self.string(t, "location")?.unwrap_or_default();
        if location.is_empty() {
            return Err(self.error(span, "a [[registry.mirror]] needs a `location`"));
        }
        let pull_from_mirror = match self.string(t, "pull-from-mirror")?.as_deref() {
            None | Some("") => None,
            Some("all") => Some(PullFromMirror::All),
            Some("digest-only") => Some(PullFromMirror::DigestOnly),
            Some("tag-only") => Some(PullFromMirror::TagOnly),
            Some(other) => {
                return Err(self.error(
                    t.get("pull-from-mirror").and_then(Item::span),
                    format!("unknown pull-from-mirror {other:?} (all, digest-only, tag-only)"),
                ));
            }
        };
        Ok(ConfMirror {
            location,
            insecure: self.bool(t, "insecure")?,
            pull_from_mirror,
        })
    }

    fn registry(&self, t: &Table) -> Result<ConfEntry, ConfError> {
        let span = t.span();
        let location = self.string(t, "location")?.unwrap_or_default();
        let prefix = match self.string(t, "prefix")? {
            Some(p) if !p.is_empty() => p,
            _ => location.clone(),
        };
        if prefix.is_empty() {
            return Err(self.error(span, "a [[registry]] needs a `prefix` or a `location`"));
        }
        if location.is_empty() && !prefix.starts_with("*.") {
            // containers/image refuses it the same way.
            return Err(self.error(
                span,
                format!(
                    "[[registry]] prefix {prefix:?} has no `location` (only *.domain prefixes may omit it)"
                ),
            ));
        }
        let mut mirrors = Vec::new();
        match t.get("mirror") {
            None => {}
            Some(Item::ArrayOfTables(a)) => {
                for m in a.iter() {
                    mirrors.push(self.mirror(m, m.span())?);
                }
            }
            Some(Item::Value(Value::Array(a))) => {
                for v in a.iter() {
                    let m = v.as_inline_table().ok_or_else(|| {
                        self.error(v.span(), "each `mirror` must be a table with a `location`")
                    })?;
                    mirrors.push(self.mirror(m, v.span())?);
                }
            }
            Some(other) => {
                return Err(self.error(other.span(), "`mirror` must be [[registry.mirror]] tables"));
            }
        }
        Ok(ConfEntry {
            prefix,
            location,
            insecure: self.bool(t, "insecure")?,
            blocked: self.bool(t, "blocked")?,
            mirror_by_digest_only: self.bool(t, "mirror-by-digest-only")?,
            mirrors,
            file: self.path.to_owned(),
            line: self.line(span),
        })
    }
}

/// Parses the text of `path`, a `containers-registries.conf` file (the main one or a
/// drop-in).
pub fn parse(text: &str, path: &Path) -> Result<Vec<ConfEntry>, ConfError> {
    let cx = Cx { text, path };
    let doc = Document::parse(text).map_err(|e| ConfError {
        malformed: true,
        ..cx.error(e.span(), e.message().trim().replace('\n', " "))
    })?;
    let root = doc.as_table();
    let mut entries: Vec<ConfEntry> = Vec::new();
    match root.get("registry") {
        None => {}
        Some(Item::ArrayOfTables(a)) => {
            for t in a.iter() {
                let entry = cx.registry(t)?;
                if let Some(first) = entries.iter().find(|e| e.prefix == entry.prefix) {
                    return Err(cx.error(
                        t.span(),
                        format!(
                            "prefix {:?} is defined twice in this file (also on line {})",
                            entry.prefix, first.line
                        ),
                    ));
                }
                entries.push(entry);
            }
        }
        Some(other) => {
            return Err(cx.error(
                other.span(),
                "`registry` must be [[registry]] tables (version 2 of containers-registries.conf)",
            ));
        }
    }
    if let Some(v1) = root.get("registries") {
        if !entries.is_empty() {
            return Err(cx.error(
                v1.span(),
                "mixes version 1 ([registries.*]) and version 2 ([[registry]]) settings, which \
                 containers/image refuses",
            ));
        }
        entries = cx.v1(v1)?;
    }
    Ok(entries)
}

impl Cx<'_> {
    /// `[registries.insecure]` / `[registries.block]` host lists as entries.
    fn v1(&self, item: &Item) -> Result<Vec<ConfEntry>, ConfError> {
        let table = item
            .as_table_like()
            .ok_or_else(|| self.error(item.span(), "`registries` must be a table"))?;
        let mut entries: Vec<ConfEntry> = Vec::new();
        for (kind, insecure, blocked) in [("insecure", true, false), ("block", false, true)] {
            let Some(list) = table
                .get(kind)
                .and_then(Item::as_table_like)
                .and_then(|t| t.get("registries"))
            else {
                continue;
            };
            let array = list.as_array().ok_or_else(|| {
                self.error(
                    list.span(),
                    format!("registries.{kind}.registries must be an array"),
                )
            })?;
            for v in array.iter() {
                let host = v
                    .as_str()
                    .ok_or_else(|| self.error(v.span(), "each registry must be a string"))?
                    .trim()
                    .to_owned();
                let line = self.line(v.span());
                match entries.iter_mut().find(|e| e.prefix == host) {
                    Some(e) => {
                        e.insecure |= insecure;
                        e.blocked |= blocked;
                    }
                    None => entries.push(ConfEntry {
                        prefix: host.clone(),
                        location: host,
                        insecure,
                        blocked,
                        mirror_by_digest_only: false,
                        mirrors: Vec::new(),
                        file: self.path.to_owned(),
                        line,
                    }),
                }
            }
        }
        Ok(entries)
    }
}

/// The entries in force after loading `files` in order: a later entry with the same
/// prefix replaces the earlier one whole, in its place.
pub fn effective(files: impl IntoIterator<Item = Vec<ConfEntry>>) -> Vec<ConfEntry> {
    let mut out: Vec<ConfEntry> = Vec::new();
    for entries in files {
        for e in entries {
            match out.iter_mut().find(|o| o.prefix == e.prefix) {
                Some(slot) => *slot = e,
                None => out.push(e),
            }
        }
    }
    out
}

/// The entry that applies to images at the top of `registry` (a host): the one whose
/// prefix is the host itself, else the most specific `*.domain` wildcard that matches.
/// Entries for a namespace inside the registry (`docker.io/library`) apply only below
/// it and are not returned.
pub fn entry_for<'a>(entries: &'a [ConfEntry], registry: &str) -> Option<&'a ConfEntry> {
    if let Some(e) = entries.iter().find(|e| e.prefix == registry) {
        return Some(e);
    }
    entries
        .iter()
        .filter(|e| {
            e.prefix
                .strip_prefix('*')
                .is_some_and(|domain| domain.starts_with('.') && registry.ends_with(domain))
        })
        .max_by_key(|e| e.prefix.len())
}

/// Splits a `location` (`host[:port][/path]`) into its host and its path (without the
/// leading `/`; empty when none).
pub fn split_location(location: &str) -> (&str, &str) {
    let location = location.trim_end_matches('/');
    match location.split_once('/') {
        Some((host, path)) => (host, path),
        None => (location, ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Vec<ConfEntry> {
        parse(text, Path::new("/etc/containers/registries.conf")).unwrap()
    }

    #[test]
    fn reads_registries_and_mirrors() {
        let e = p(r#"
unqualified-search-registries = ["docker.io"]

[[registry]]
prefix = "docker.io"
location = "registry-1.docker.io"
mirror-by-digest-only = true

[[registry.mirror]]
location = "mirror.example.com/dockerhub"
insecure = true
pull-from-mirror = "digest-only"

[[registry]]
location = "quay.io"
blocked = true
"#);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].prefix, "docker.io");
        assert_eq!(e[0].location_or_prefix(), "registry-1.docker.io");
        assert!(e[0].mirror_by_digest_only);
        assert_eq!(e[0].line, 4);
        assert_eq!(
            e[0].mirrors,
            vec![ConfMirror {
                location: "mirror.example.com/dockerhub".into(),
                insecure: true,
                pull_from_mirror: Some(PullFromMirror::DigestOnly),
            }]
        );
        assert_eq!(e[1].prefix, "quay.io");
        assert!(e[1].blocked);
    }

    #[test]
    fn version_1_lists_become_entries() {
        let e = p(
            "[registries.search]\nregistries = ['docker.io']\n[registries.insecure]\nregistries = ['r.local:5000']\n[registries.block]\nregistries = ['bad.io', 'r.local:5000']\n",
        );
        assert_eq!(e.len(), 2);
        assert!(e[0].insecure && e[0].blocked && e[0].prefix == "r.local:5000");
        assert!(e[1].blocked && !e[1].insecure && e[1].prefix == "bad.io");
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let err = parse("[[registry]]\nprefix = 3\n", Path::new("/r.conf")).unwrap_err();
        assert_eq!((err.line, err.column), (2, 10));
        assert!(
            err.to_string()
                .starts_with("/r.conf:2:10: `prefix` must be a string")
        );
        let err = parse("[[registry]\n", Path::new("/r.conf")).unwrap_err();
        assert!(err.malformed && err.line == 1, "{err}");
        let err = parse("[[registry]]\nprefix = \"a.io\"\n", Path::new("/r.conf")).unwrap_err();
        assert!(err.message.contains("has no `location`"), "{err}");
        let err = parse(
            "[[registry]]\nprefix = \"a.io\"\nlocation = \"a.io\"\n[[registry]]\nlocation = \"a.io\"\n",
            Path::new("/r.conf"),
        )
        .unwrap_err();
        assert_eq!(err.line, 4, "{err}");
        let err = parse(
            "[[registry]]\nlocation = \"a.io\"\n[[registry.mirror]]\ninsecure = true\n",
            Path::new("/r.conf"),
        )
        .unwrap_err();
        assert!(err.message.contains("needs a `location`"), "{err}");
    }

    #[test]
    fn later_files_replace_entries_of_the_same_prefix() {
        let main = p(
            "[[registry]]\nlocation = \"docker.io\"\n[[registry.mirror]]\nlocation = \"m1\"\n[[registry]]\nlocation = \"quay.io\"\n",
        );
        let drop_in = p("[[registry]]\nlocation = \"docker.io\"\ninsecure = true\n");
        let e = effective([main, drop_in]);
        assert_eq!(e.len(), 2);
        assert!(e[0].insecure && e[0].mirrors.is_empty());
        assert_eq!(e[1].prefix, "quay.io");
    }

    #[test]
    fn entry_for_prefers_the_host_then_the_longest_wildcard() {
        let e = p(
            "[[registry]]\nprefix = \"*.example.com\"\ninsecure = true\n[[registry]]\nprefix = \"*.eu.example.com\"\nblocked = true\n[[registry]]\nprefix = \"docker.io/library\"\nlocation = \"x.io\"\n",
        );
        assert!(entry_for(&e, "r.eu.example.com").unwrap().blocked);
        assert!(entry_for(&e, "r.example.com").unwrap().insecure);
        assert!(entry_for(&e, "docker.io").is_none());
        assert!(entry_for(&e, "example.com").is_none());
        assert_eq!(split_location("h:5/a/b/"), ("h:5", "a/b"));
        assert_eq!(split_location("h"), ("h", ""));
    }
}

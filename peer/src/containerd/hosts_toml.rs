//! The `hosts.toml` merge: given a registry's current `hosts.toml` (or none), the text it
//! should have so that containerd tries the Shoal mirror first and everything else as
//! before.
//!
//! What is kept: every existing `[host."…"]` entry in its order with all its keys (`ca`,
//! `client`, `skip_verify`, `[header]`, …), `server`, comments and formatting (edited with
//! `toml_edit`). What changes: the mirror entry is added as the first host (or updated in
//! place and moved first when it is already there), and `server` is written when absent so
//! the real upstream stays the last resort. Pure: strings in, string out; no file access.

use std::path::Path;

use toml_edit::{Array, Document, DocumentMut, Item, Table, value};

use super::SetupError;
use super::order::{host_positions, max_position, scale_positions, table_at_mut, take_preamble};

/// What to put in front of a registry's hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorSpec {
    /// The mirror, e.g. `http://127.0.0.1:7650`.
    pub mirror_url: String,
    /// `["pull", "resolve"]` when tags are resolved through the mirror, else `["pull"]`.
    pub capabilities: Vec<String>,
    /// containerd's `dial_timeout` for the mirror (e.g. `"1s"`), so a dead mirror costs
    /// little; `None` leaves it out.
    pub dial_timeout: Option<String>,
}

/// The upstream `server` containerd would use for `registry` when `hosts.toml` has none:
/// `https://registry-1.docker.io` for `docker.io`, `https://<name>` otherwise, and none
/// for `_default` (containerd then uses the host being pulled from).
pub fn upstream_server(registry: &str) -> Option<String> {
    match registry {
        "_default" => None,
        "docker.io" => Some("https://registry-1.docker.io".into()),
        other => Some(format!("https://{other}")),
    }
}

/// The new text of `<dir>/<registry>/hosts.toml`.
///
/// `existing` is the current text (`None`: no file). `cert_files` are the names of the
/// files next to it; containerd loads `*.crt` / `*.cert` / `*.key` there only when
/// `hosts.toml` is absent or empty, so a new file names them explicitly to keep them in
/// use. Returns `existing` unchanged when nothing needs changing.
pub fn merge(
    path: &Path,
    registry: &str,
    existing: Option<&str>,
    cert_files: &[String],
    spec: &MirrorSpec,
) -> Result<String, SetupError> {
    match existing {
        None | Some("") => Ok(new_file(registry, cert_files, spec)),
        Some(text) => merge_existing(path, registry, text, spec),
    }
}

fn quote(s: &str) -> String {
    toml_edit::Value::from(s).to_string()
}

fn string_array(items: &[String]) -> String {
    let inner: Vec<String> = items.iter().map(|s| quote(s)).collect();
    format!("[{}]", inner.join(", "))
}

fn mirror_table_text(spec: &MirrorSpec) -> String {
    let mut out = format!(
        "[host.{}]\n  capabilities = {}\n",
        quote(&spec.mirror_url),
        string_array(&spec.capabilities)
    );
    if let Some(t) = &spec.dial_timeout {
        out.push_str(&format!("  dial_timeout = {}\n", quote(t)));
    }
    out
}

fn new_file(registry: &str, cert_files: &[String], spec: &MirrorSpec) -> String {
    let mut out = String::from(
        "# Written by `shoal-peer containerd configure`; `shoal-peer containerd restore` removes it.\n",
    );
    if let Some(server) = upstream_server(registry) {
        out.push_str(&format!("server = {}\n", quote(&server)));
    }
    let cas: Vec<String> = cert_files
        .iter()
        .filter(|f| f.ends_with(".crt"))
        .cloned()
        .collect();
    if !cas.is_empty() {
        out.push_str(&format!("ca = {}\n", string_array(&cas)));
    }
    let clients: Vec<String> = cert_files
        .iter()
        .filter_map(|f| f.strip_suffix(".cert"))
        .map(|stem| {
            let key = format!("{stem}.key");
            if cert_files.contains(&key) {
                string_array(&[format!("{stem}.cert"), key])
            } else {
                quote(&format!("{stem}.cert"))
            }
        })
        .collect();
    if !clients.is_empty() {
        out.push_str(&format!("client = [{}]\n", clients.join(", ")));
    }
    out.push('\n');
    out.push_str(&mirror_table_text(spec));
    out
}

/// `http://Host:80/` and `http://host:80` name the same mirror; no scheme means https.
fn same_host(a: &str, b: &str) -> bool {
    fn norm(s: &str) -> String {
        let s = s.trim().trim_end_matches('/').to_ascii_lowercase();
        if s.starts_with("http://") || s.starts_with("https://") {
            s
        } else {
            format!("https://{s}")
        }
    }
    norm(a) == norm(b)
}

/// Checks, with positions, what the merge relies on.
fn validate(path: &Path, text: &str) -> Result<(), SetupError> {
    let doc = Document::parse(text.to_string())
        .map_err(|e| SetupError::malformed(path.to_path_buf(), text, &e))?;
    let at = |item: &Item| item.span().map(|s| s.start);
    let root = doc.as_table();
    if let Some(server) = root.get("server")
        && !server.is_str()
    {
        return Err(SetupError::unsupported(
            path.to_path_buf(),
            text,
            at(server),
            "`server` must be a string such as \"https://registry.example.com\"",
        ));
    }
    let Some(host) = root.get("host") else {
        return Ok(());
    };
    let tables_only = match host {
        Item::Table(t) => {
            !t.is_dotted()
                && t.iter()
                    .all(|(_, v)| matches!(v, Item::Table(h) if !h.is_dotted()))
        }
        _ => false,
    };
    if !tables_only {
        let offset = root.key("host").and_then(|k| k.span()).map(|s| s.start);
        return Err(SetupError::unsupported(
            path.to_path_buf(),
            text,
            offset,
            "`host` entries are written as inline tables or dotted keys; Shoal merges only \
             [host.\"URL\"] tables: rewrite each entry as its own [host.\"URL\"] table and run \
             configure again",
        ));
    }
    Ok(())
}

fn merge_existing(
    path: &Path,
    registry: &str,
    text: &str,
    spec: &MirrorSpec,
) -> Result<String, SetupError> {
    validate(path, text)?;
    let mut doc: DocumentMut = text
        .parse()
        .map_err(|e| SetupError::malformed(path.to_path_buf(), text, &e))?;
    let mut changed = false;

    if doc.get("server").is_none()
        && let Some(server) = upstream_server(registry)
    {
        // Without root keys, the file's opening comment block sits in front of the first
        // table; what is inserted before that table takes the block along.
        let block = if doc.iter().any(|(_, v)| v.is_value()) {
            String::new()
        } else {
            take_preamble(&mut doc)
        };
        doc.insert("server", value(server));
        if let Some(mut key) = doc.key_mut("server") {
            key.leaf_decor_mut().set_prefix(block);
        }
        changed = true;
    }

    let has_root_values = doc.iter().any(|(k, v)| k != "host" && v.is_value());
    if doc.get("host").is_none() {
        let mut host = Table::new();
        host.set_implicit(true);
        doc.insert("host", Item::Table(host));
    }
    let mirror_key = doc["host"]
        .as_table()
        .and_then(|h| {
            h.iter()
                .map(|(k, _)| k)
                .find(|k| same_host(k, &spec.mirror_url))
        })
        .map(str::to_string);

    let mirror_key = match mirror_key {
        Some(key) => {
            let table = doc["host"][&key]
                .as_table_mut()
                .expect("validated: tables only");
            changed |= update_mirror(table, spec);
            key
        }
        None => {
            let mut table = parse_mirror_table(spec);
            // A blank line after the root keys; when the mirror opens the file, the
            // file's opening comments go before it.
            let prefix = if has_root_values {
                "\n".to_string()
            } else {
                take_preamble(&mut doc)
            };
            table.decor_mut().set_prefix(prefix);
            doc["host"]
                .as_table_mut()
                .expect("validated: a table")
                .insert(&spec.mirror_url, Item::Table(table));
            changed = true;
            spec.mirror_url.clone()
        }
    };

    // Put the mirror first: containerd tries hosts in the order their headers appear.
    let positions = host_positions(&doc, &mirror_key);
    let needs_move = match positions {
        (Some(mine), Some(first_other)) => mine >= first_other,
        (None, _) => true,
        _ => false,
    };
    if needs_move {
        scale_positions(doc.as_table_mut());
        let (_, first_other) = host_positions(&doc, &mirror_key);
        let position = match first_other {
            Some(p) => p - 1,
            None => max_position(doc.as_table()) + 1,
        };
        let host = doc["host"].as_table_mut().expect("validated: a table");
        if let Some(t) = host.get_mut(&mirror_key).and_then(Item::as_table_mut) {
            t.set_position(Some(position));
        }
        // Keep a blank line between the mirror and the entry it now precedes.
        if let Some(next) = first_other.and_then(|p| {
            host.iter_mut()
                .filter_map(|(_, item)| item.as_table_mut())
                .find_map(|t| table_at_mut(t, p))
        }) {
            let prefix = next.decor().prefix().and_then(|p| p.as_str()).unwrap_or("");
            if !prefix.starts_with('\n') {
                let prefix = format!("\n{prefix}");
                next.decor_mut().set_prefix(prefix);
            }
        }
        changed = true;
    }

    Ok(if changed {
        doc.to_string()
    } else {
        text.to_string()
    })
}

fn parse_mirror_table(spec: &MirrorSpec) -> Table {
    let mut snippet: DocumentMut = mirror_table_text(spec)
        .parse()
        .expect("the mirror table is valid TOML");
    let mut host = snippet
        .remove("host")
        .and_then(|h| h.into_table().ok())
        .expect("snippet has [host]");
    let (_, item) = host
        .remove_entry(&spec.mirror_url)
        .expect("snippet has the mirror");
    let mut table = item.into_table().expect("snippet entry is a table");
    table.set_position(None);
    table
}

/// Sets capabilities and dial_timeout on an existing mirror entry; true when it changed.
fn update_mirror(table: &mut Table, spec: &MirrorSpec) -> bool {
    let mut changed = false;
    let current: Option<Vec<String>> = table.get("capabilities").and_then(|c| {
        c.as_array().map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
    });
    if current.as_ref() != Some(&spec.capabilities) {
        let array: Array = spec.capabilities.iter().map(String::as_str).collect();
        set_keeping_decor(table, "capabilities", array.into());
        changed = true;
    }
    if let Some(timeout) = &spec.dial_timeout
        && table.get("dial_timeout").and_then(Item::as_str) != Some(timeout.as_str())
    {
        set_keeping_decor(table, "dial_timeout", timeout.as_str().into());
        changed = true;
    }
    changed
}

/// Sets `table[key]`. An existing value keeps its spaces and trailing comment; a new key
/// gets the indentation of the table's other keys.
fn set_keeping_decor(table: &mut Table, key: &str, mut new: toml_edit::Value) {
    if let Some(old) = table.get_mut(key).and_then(Item::as_value_mut) {
        *new.decor_mut() = old.decor().clone();
        *old = new;
        return;
    }
    let indent = table
        .iter()
        .filter_map(|(k, _)| table.key(k))
        .filter_map(|k| k.leaf_decor().prefix().and_then(|p| p.as_str()))
        .find(|p| p.chars().all(|c| c == ' ' || c == '\t'))
        .map(str::to_string);
    table.insert(key, Item::Value(new));
    if let (Some(indent), Some(mut k)) = (indent, table.key_mut(key)) {
        k.leaf_decor_mut().set_prefix(indent);
    }
}

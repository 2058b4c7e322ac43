//! The refusals of node setup, worded for the operator: inline registry mirrors / TLS
//! configs next to `config_path` (quoted with line numbers), and a missing `config_path`
//! (with the exact lines to add for that config version). Decides nothing else.

use std::collections::BTreeSet;

use toml_edit::Item;

use super::SetupError;
use super::error::line_col;
use super::imports::ConfigFile;
use super::layout::{Flavor, lookup};

pub(crate) fn check_inline_registry(
    file: &ConfigFile,
    registry_path: &[&str],
    flavor: Flavor,
) -> Result<(), SetupError> {
    let root = file.doc.as_table();
    let text = file.doc.raw();
    let mut lines = BTreeSet::new();
    if let Some(mirrors) = lookup(root, registry_path, "mirrors")
        && mirrors.as_table_like().is_none_or(|t| !t.is_empty())
    {
        item_lines(mirrors, text, &mut lines);
    }
    if let Some(configs) = lookup(root, registry_path, "configs").and_then(Item::as_table_like) {
        for (_, config) in configs.iter() {
            if let Some(tls) = config.as_table_like().and_then(|c| c.get("tls")) {
                item_lines(tls, text, &mut lines);
            }
        }
    }
    if lines.is_empty() {
        return Ok(());
    }
    let all: Vec<&str> = text.lines().collect();
    let quoted = lines
        .iter()
        .filter_map(|&n| all.get(n - 1).map(|l| format!("  {n:>4} | {l}")))
        .collect::<Vec<_>>()
        .join("\n");
    Err(SetupError::InlineRegistryConflict {
        path: file.path.clone(),
        quoted,
        hint: format!(
            "Move each mirror to <hosts-dir>/<registry>/hosts.toml: `server = \"https://<registry>\"` \
             and one [host.\"<endpoint>\"] table per endpoint with capabilities = [\"pull\", \"resolve\"]; \
             move configs.<registry>.tls to the same file (ca_file -> ca, cert_file + key_file -> \
             client = [[\"cert\", \"key\"]], insecure_skip_verify -> skip_verify). Then delete those \
             lines from {}, restart containerd once, and run configure again (docs/node-setup.md).{}",
            file.path.display(),
            flavor.hint()
        ),
    })
}

/// Adds the 1-based line numbers that `item` (and everything in it) occupies.
fn item_lines(item: &Item, text: &str, lines: &mut BTreeSet<usize>) {
    match item {
        Item::Table(t) => {
            add_span(t.span(), text, lines);
            for (key, value) in t.iter() {
                add_span(t.key(key).and_then(|k| k.span()), text, lines);
                item_lines(value, text, lines);
            }
        }
        Item::ArrayOfTables(a) => {
            for t in a.iter() {
                item_lines(&Item::Table(t.clone()), text, lines);
            }
        }
        Item::Value(v) => add_span(v.span(), text, lines),
        Item::None => {}
    }
}

fn add_span(span: Option<std::ops::Range<usize>>, text: &str, lines: &mut BTreeSet<usize>) {
    if let Some(span) = span {
        let first = line_col(text, span.start).0;
        let last = line_col(text, span.end.saturating_sub(1).max(span.start)).0;
        lines.extend(first..=last);
    }
}

pub(crate) fn no_config_path(
    main: &ConfigFile,
    version: i64,
    registry_path: &[&str],
    flavor: Flavor,
) -> SetupError {
    let header = registry_path
        .iter()
        .map(|p| {
            if p.contains('.') {
                format!("\"{p}\"")
            } else {
                p.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(".");
    let lines = format!("  [{header}]\n    config_path = \"{}\"", flavor.hosts_dir());
    let which = match version {
        ..=1 => "config version 1, containerd 1.x (version 1 is deprecated: prefer version = 2)",
        2 => "config version 2: containerd 1.6/1.7",
        _ => "config version 3: containerd 2.x",
    };
    let mut hint = String::new();
    if let Some(item) = lookup(main.doc.as_table(), registry_path, "config_path") {
        let line = line_col(main.doc.raw(), item.span().map_or(0, |s| s.start)).0;
        hint.push_str(&format!(
            "\nThe file already has an empty config_path on line {line}: set it there instead of \
             adding a second table."
        ));
    }
    hint.push_str(flavor.hint());
    SetupError::NoConfigPath {
        path: main.path.clone(),
        flavor: which.to_string(),
        lines,
        hint,
    }
}

//! Where tables go in a `hosts.toml` being merged: containerd tries hosts in the order
//! their headers appear, and `toml_edit` prints tables by their document position. These
//! helpers read and renumber positions (doubling keeps the order and frees odd slots for
//! the mirror) and move a file's opening comment block to whatever is inserted first.

use toml_edit::{DocumentMut, Item, Table};

/// Removes and returns the opening comment block of the file (the part of the first
/// table's prefix up to its last blank line); empty when there is none.
pub(crate) fn take_preamble(doc: &mut DocumentMut) -> String {
    let Some(first) = doc
        .iter()
        .filter_map(|(_, v)| v.as_table())
        .filter_map(first_position)
        .min()
    else {
        return String::new();
    };
    let root = doc.as_table_mut();
    let Some(table) = root
        .iter_mut()
        .filter_map(|(_, v)| v.as_table_mut())
        .find_map(|t| table_at_mut(t, first))
    else {
        return String::new();
    };
    let prefix = table
        .decor()
        .prefix()
        .and_then(|p| p.as_str())
        .unwrap_or("")
        .to_string();
    match prefix.rfind("\n\n") {
        Some(i) => {
            table.decor_mut().set_prefix(prefix[i + 1..].to_string());
            prefix[..i + 1].to_string()
        }
        None => String::new(),
    }
}

/// The smallest position of a printed (not implicit) table in `table`'s subtree.
fn first_position(table: &Table) -> Option<isize> {
    let own = table.position().filter(|_| !table.is_implicit());
    let children = table
        .iter()
        .filter_map(|(_, v)| v.as_table())
        .filter_map(first_position);
    own.into_iter().chain(children).min()
}

/// The printed (not implicit) table at `position` in `table`'s subtree.
pub(crate) fn table_at_mut(table: &mut Table, position: isize) -> Option<&mut Table> {
    if !table.is_implicit() && table.position() == Some(position) {
        return Some(table);
    }
    table
        .iter_mut()
        .filter_map(|(_, v)| v.as_table_mut())
        .find_map(|t| table_at_mut(t, position))
}

/// (position of the mirror entry, smallest position of the other host entries). An
/// entry's position is that of its first printed table: a host written only as
/// `[host."URL".header]` is placed (by containerd too) where that header is.
pub(crate) fn host_positions(
    doc: &DocumentMut,
    mirror_key: &str,
) -> (Option<isize>, Option<isize>) {
    let Some(host) = doc.get("host").and_then(Item::as_table) else {
        return (None, None);
    };
    let mut mine = None;
    let mut first_other: Option<isize> = None;
    for (key, item) in host.iter() {
        let pos = item.as_table().and_then(first_position);
        if key == mirror_key {
            mine = pos;
        } else if let Some(p) = pos {
            first_other = Some(first_other.map_or(p, |f| f.min(p)));
        }
    }
    (mine, first_other)
}

/// Doubles every table position, which keeps the order and leaves odd slots free.
pub(crate) fn scale_positions(table: &mut Table) {
    if let Some(p) = table.position() {
        table.set_position(Some(p * 2));
    }
    for (_, item) in table.iter_mut() {
        match item {
            Item::Table(t) => scale_positions(t),
            Item::ArrayOfTables(a) => a.iter_mut().for_each(scale_positions),
            _ => {}
        }
    }
}

pub(crate) fn max_position(table: &Table) -> isize {
    let mut max = table.position().unwrap_or(0);
    for (_, item) in table.iter() {
        match item {
            Item::Table(t) => max = max.max(max_position(t)),
            Item::ArrayOfTables(a) => {
                for t in a.iter() {
                    max = max.max(max_position(t));
                }
            }
            _ => {}
        }
    }
    max
}

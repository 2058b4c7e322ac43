//! The text of the drop-in: a comment saying who wrote it and how to undo it, then one
//! `[[registry]]` per mirrored registry with its `[[registry.mirror]]` tables. Values are
//! written as TOML strings (quoted and escaped by `toml_edit`); keys that are false or
//! empty are left out, as containers/image's defaults are the same.

use super::RegistryEntry;

/// A TOML string literal.
fn quoted(s: &str) -> String {
    toml_edit::Value::from(s).to_string().trim().to_owned()
}

/// The drop-in for `entries`.
pub fn render(entries: &[RegistryEntry]) -> String {
    let mut out = String::from(
        "# Written by `shoal-peer containers configure`: the Shoal mirror is tried first for\n\
         # each registry below; every other setting is copied from the entry in force before\n\
         # this file. Do not edit: run configure again after changing those entries, and\n\
         # `shoal-peer containers restore` to remove this file.\n",
    );
    for e in entries {
        out.push('\n');
        if let Some(from) = &e.copied_from {
            out.push_str(&format!("# copied from {from}\n"));
        }
        out.push_str("[[registry]]\n");
        out.push_str(&format!("prefix = {}\n", quoted(&e.prefix)));
        out.push_str(&format!("location = {}\n", quoted(&e.location)));
        if e.insecure {
            out.push_str("insecure = true\n");
        }
        for m in &e.mirrors {
            out.push_str("\n[[registry.mirror]]\n");
            out.push_str(&format!("location = {}\n", quoted(&m.location)));
            if m.insecure {
                out.push_str("insecure = true\n");
            }
            if let Some(p) = m.pull_from_mirror {
                out.push_str(&format!("pull-from-mirror = {}\n", quoted(p.as_str())));
            }
        }
    }
    out
}

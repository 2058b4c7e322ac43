//! `check`'s output: a unified diff per file configure would change, with every value
//! under a `[header]` table (or a `header = {…}` / `header.x = …` key) replaced by `"***"`,
//! because headers carry credentials (`authorization`).
//!
//! Masking is line based and applied to both sides, so a diff never shows a header value,
//! changed or not. Nothing here reads or writes files.

use std::path::Path;

use similar::TextDiff;

use super::FileChange;

/// What a masked value is shown as.
pub const MASK: &str = "\"***\"";

/// The unified diff of one change (`/dev/null` as the old side of a new file).
pub fn unified(change: &FileChange) -> String {
    let old = mask_headers(change.before.as_deref().unwrap_or(""));
    let new = mask_headers(&change.after);
    let old_name = match change.before {
        Some(_) => labelled("a", &change.path),
        None => "/dev/null".to_string(),
    };
    TextDiff::from_lines(&old, &new)
        .unified_diff()
        .context_radius(3)
        .header(&old_name, &labelled("b", &change.path))
        .to_string()
}

fn labelled(side: &str, path: &Path) -> String {
    format!("{side}{}", path.display())
}

/// `text` with the values of header entries replaced by [`MASK`].
pub fn mask_headers(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_header_table = false;
    let mut open: Option<&'static str> = None; // closing token of a masked multi-line value
    for line in text.split_inclusive('\n') {
        if let Some(close) = open {
            if line.contains(close) {
                open = None;
            }
            continue; // the value's continuation lines are dropped: the mask stands for them
        }
        let trimmed = line.trim_start();
        if trimmed.starts_with('[') {
            in_header_table = path_has_header(trimmed);
            out.push_str(line);
            continue;
        }
        let Some(eq) = find_eq(line) else {
            out.push_str(line);
            continue;
        };
        let key = &line[..eq];
        if !(in_header_table || path_has_header(key)) {
            out.push_str(line);
            continue;
        }
        let value = line[eq + 1..].trim();
        open = unclosed(value);
        let newline = if line.ends_with('\n') { "\n" } else { "" };
        out.push_str(key.trim_end());
        out.push_str(" = ");
        out.push_str(MASK);
        out.push_str(newline);
    }
    out
}

/// Whether a table header or a dotted key has a `header` segment (quoted parts ignored).
fn path_has_header(s: &str) -> bool {
    let mut bare = String::new();
    let mut quote: Option<char> = None;
    let end = if s.starts_with('[') {
        s.find(']').unwrap_or(s.len())
    } else {
        s.len()
    };
    for c in s[..end].chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => {
                quote = Some(c);
                bare.push('_');
            }
            None => bare.push(c),
        }
    }
    bare.trim_matches(|c: char| c == '[' || c.is_whitespace())
        .split('.')
        .any(|seg| seg.trim() == "header")
}

/// Position of the `=` of a key/value line, outside quotes; `None` for other lines.
fn find_eq(line: &str) -> Option<usize> {
    let trimmed = line.trim_start();
    if trimmed.is_empty() || trimmed.starts_with('#') {
        return None;
    }
    let mut quote: Option<char> = None;
    for (i, c) in line.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == '=' => return Some(i),
            None => {}
        }
    }
    None
}

/// The token that closes `value` on a later line, when it does not close on this one.
fn unclosed(value: &str) -> Option<&'static str> {
    for token in ["\"\"\"", "'''"] {
        if let Some(rest) = value.strip_prefix(token) {
            return (!rest.contains(token)).then_some(token);
        }
    }
    let opens = value.matches(['[', '{']).count();
    let closes = value.matches([']', '}']).count();
    (opens > closes).then_some(if value.starts_with('{') { "}" } else { "]" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_are_masked_everywhere() {
        let text = "server = \"https://r\"\n\
            [host.\"https://r\"]\n  capabilities = [\"pull\"]\n\
            [host.\"https://r\".header]\n  authorization = \"Bearer s3cret\"\n  x-multi = [\n    \"a-secret\",\n  ]\n\
            [host.\"https://header.example\"]\n  header = { authorization = \"Basic c2VjcmV0\" }\n  header.x = \"tok\"\n  ca = \"ca.crt\"\n";
        let masked = mask_headers(text);
        assert!(!masked.contains("s3cret"), "{masked}");
        assert!(!masked.contains("a-secret"), "{masked}");
        assert!(!masked.contains("c2VjcmV0"), "{masked}");
        assert!(!masked.contains("tok\""), "{masked}");
        assert!(masked.contains("  authorization = \"***\"\n"), "{masked}");
        // A host whose name contains "header" is not a header table.
        assert!(masked.contains("  ca = \"ca.crt\"\n"), "{masked}");
        assert!(masked.contains("  capabilities = [\"pull\"]\n"), "{masked}");
    }

    #[test]
    fn diff_of_new_file_is_against_dev_null() {
        let change = FileChange {
            path: "/etc/containerd/certs.d/ghcr.io/hosts.toml".into(),
            before: None,
            after: "server = \"https://ghcr.io\"\n".into(),
        };
        let d = unified(&change);
        assert!(
            d.starts_with("--- /dev/null\n+++ b/etc/containerd/certs.d/ghcr.io/hosts.toml\n"),
            "{d}"
        );
        assert!(d.contains("+server = \"https://ghcr.io\"\n"), "{d}");
    }
}

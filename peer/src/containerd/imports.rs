//! Loading a containerd config file and everything it `imports`, recursively and once
//! each, with `*` globs in file names. Pure over a [`Tree`]; does not interpret the
//! settings (see `config.rs`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use toml_edit::Document;

use super::{SetupError, Tree};

/// One parsed config file, spans kept for error positions.
pub(crate) struct ConfigFile {
    pub(crate) path: PathBuf,
    pub(crate) doc: Document<String>,
}

/// The main file then its imports, recursively, each once.
pub(crate) fn load(tree: &dyn Tree, main: &Path) -> Result<Vec<ConfigFile>, SetupError> {
    let mut files = Vec::new();
    let mut seen = BTreeSet::new();
    let mut queue = vec![main.to_path_buf()];
    while let Some(path) = queue.pop() {
        if !seen.insert(path.clone()) {
            continue;
        }
        let Some(text) = tree.read(&path)? else {
            if path == main {
                return Err(SetupError::ConfigMissing { path });
            }
            tracing::warn!(import = %path.display(), "imported containerd config does not exist; skipped");
            continue;
        };
        let doc = Document::parse(text.clone())
            .map_err(|e| SetupError::malformed(path.clone(), &text, &e))?;
        let imports = imports_of(tree, &path, &doc)?;
        // Depth-first, in the order written: push in reverse.
        queue.extend(imports.into_iter().rev());
        files.push(ConfigFile { path, doc });
    }
    Ok(files)
}

fn imports_of(
    tree: &dyn Tree,
    path: &Path,
    doc: &Document<String>,
) -> Result<Vec<PathBuf>, SetupError> {
    let Some(item) = doc.as_table().get("imports") else {
        return Ok(Vec::new());
    };
    let bad = |at: Option<usize>| {
        SetupError::unsupported(
            path.to_path_buf(),
            doc.raw(),
            at,
            "imports must be an array of file paths",
        )
    };
    let array = item
        .as_array()
        .ok_or_else(|| bad(item.span().map(|s| s.start)))?;
    let base = path.parent().unwrap_or(Path::new("/"));
    let mut out = Vec::new();
    for value in array.iter() {
        let s = value
            .as_str()
            .ok_or_else(|| bad(value.span().map(|s| s.start)))?;
        let p = base.join(s);
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.contains('*') {
            let dir = p.parent().unwrap_or(Path::new("/"));
            for entry in tree.list(dir)? {
                if glob_match(&name, &entry) && !tree.is_dir(&dir.join(&entry)) {
                    out.push(dir.join(entry));
                }
            }
        } else {
            out.push(p);
        }
    }
    Ok(out)
}

/// Matches a file name against a pattern where `*` stands for any run of characters
/// (the only wildcard containerd's configs use in practice). Like Go's `filepath.Glob`,
/// `*` also matches names that start with a dot.
pub(crate) fn glob_match(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || name.len() < first.len() + last.len() {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    if !name.ends_with(last) {
        return false;
    }
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(i) => rest = &rest[i + middle.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_star_in_file_names() {
        assert!(glob_match("*.toml", "10-mirror.toml"));
        assert!(glob_match("*.toml", ".toml"));
        assert!(!glob_match("*.toml", "a.toml.bak"));
        assert!(glob_match("a*b*c", "abc"));
        assert!(glob_match("a*b*c", "aXbYc"));
        assert!(!glob_match("a*b*c", "acb"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("ab*ba", "aba"));
    }
}

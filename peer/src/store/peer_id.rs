//! The peer's id: made once, kept in `dir/peer-id`, the same across restarts.
//!
//! Form: `<hostname>-<16 random hex>` (or just the hex when the hostname is
//! unknown), matching `[A-Za-z0-9._-]{1,128}`. The file is written atomically
//! (temporary file, sync, rename, sync of the directory), so a crash leaves
//! either no id or a whole one.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

use super::StoreError;

const FILE: &str = "peer-id";
/// Longest hostname prefix kept, so the id stays well under 128 characters.
const MAX_PREFIX: usize = 64;

/// True when `id` matches `[A-Za-z0-9._-]{1,128}`.
pub fn is_valid_peer_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The peer id stored in `dir/peer-id`, made (with this host's name as a
/// prefix, when it has one) and stored if there is none yet.
///
/// A file holding an invalid id is an error rather than replaced: the id is
/// the peer's identity at the scheduler, and silently changing it would hide
/// an operator's mistake.
pub fn load_or_create_peer_id(dir: impl AsRef<Path>) -> Result<String, StoreError> {
    load_or_create_with(dir.as_ref(), hostname().as_deref())
}

fn load_or_create_with(dir: &Path, hostname: Option<&str>) -> Result<String, StoreError> {
    let path = dir.join(FILE);
    match std::fs::read_to_string(&path) {
        Ok(s) => {
            let id = s.trim();
            return if is_valid_peer_id(id) {
                Ok(id.to_owned())
            } else {
                Err(StoreError::InvalidPeerId { path })
            };
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(StoreError::Io {
                op: "read",
                path,
                source: source.into(),
            });
        }
    }
    let io = |op, path: &Path| {
        let path = path.to_path_buf();
        move |source: std::io::Error| StoreError::Io {
            op,
            path,
            source: source.into(),
        }
    };
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    let id = new_peer_id(hostname);
    let tmp = dir.join(format!("{FILE}.tmp.{:08x}", rand::random::<u32>()));
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(format!("{id}\n").as_bytes())?;
            f.sync_all()
        });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io("write", &tmp)(e));
    }
    std::fs::rename(&tmp, &path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io("rename", &path)(e)
    })?;
    // Make the rename itself durable; failing that is not worth failing for.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    tracing::info!(peer.id = %id, "created peer id");
    Ok(id)
}

/// A fresh id: the sanitised hostname (if any) and 16 random hex characters.
fn new_peer_id(hostname: Option<&str>) -> String {
    let suffix = format!("{:016x}", rand::random::<u64>());
    let prefix: String = hostname
        .unwrap_or("")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(MAX_PREFIX)
        .collect();
    let prefix = prefix.trim_matches(|c| matches!(c, '.' | '-'));
    if prefix.is_empty() {
        suffix
    } else {
        format!("{prefix}-{suffix}")
    }
}

/// This host's name, from the kernel (Linux) or `HOSTNAME`.
fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_valid_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create_with(dir.path(), Some("node-1.example")).unwrap();
        assert!(a.starts_with("node-1.example-"), "{a}");
        assert!(is_valid_peer_id(&a));
        assert_eq!(load_or_create_with(dir.path(), Some("other")).unwrap(), a);
        // No temporary files are left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn hostnames_are_sanitised() {
        for host in [
            None,
            Some(""),
            Some("---"),
            Some("ünïcode host/../x"),
            Some(&*"h".repeat(300)),
        ] {
            let id = new_peer_id(host);
            assert!(is_valid_peer_id(&id), "{id}");
            assert!(id.len() <= MAX_PREFIX + 17);
        }
        assert_eq!(new_peer_id(None).len(), 16);
    }

    #[test]
    fn invalid_stored_ids_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), "bad id with spaces").unwrap();
        assert!(matches!(
            load_or_create_with(dir.path(), None),
            Err(StoreError::InvalidPeerId { .. })
        ));
        assert!(!is_valid_peer_id(""));
        assert!(!is_valid_peer_id(&"a".repeat(129)));
        assert!(is_valid_peer_id("a.b_c-D9"));
    }
}

//! What a mirror request carries: the path after `/v2/` ([`route::parse`]), containerd's
//! `ns` ([`route::check_ns`], then [`names::dir_candidates`] when the upstream client
//! looks for its `hosts.toml`) and the `Range` header ([`range::decide`]).

use crate::mirror::range::{self, Span};
use crate::mirror::route::{self, MAX_NAME, Object};
use crate::registry::names;

/// Blob sizes every `Range` is decided against: empty, tiny, a piece, and the
/// `u64::MAX` the mirror uses to check the syntax before it knows the size.
const SIZES: [u64; 6] = [0, 1, 2, 7, 4 << 20, u64::MAX];

/// Reads the input (as UTF-8) as a path, an `ns` and a `Range` value, and checks:
/// - a parsed route names a repository in the grammar (no empty, `.` or `..` component,
///   at most [`MAX_NAME`] bytes) and its canonical path parses to the same route;
/// - an accepted `ns` is returned unchanged, and a registry host (the upstream client's
///   check) gives directory candidates that are single, safe path components;
/// - a partial span lies inside the blob, and its canonical `bytes=FIRST-LAST` form
///   decides to the same span.
pub fn mirror_request(data: &[u8]) {
    let Some(s) = super::text(data) else {
        return;
    };
    path(s);
    ns(s);
    for size in SIZES {
        range_header(s, size);
    }
    assert!(route::truncate(s).chars().count() <= 81);
}

fn path(s: &str) {
    let Ok(r) = route::parse(s) else {
        return;
    };
    assert!(!r.name.is_empty() && r.name.len() <= MAX_NAME, "{r:?}");
    assert!(route::check_name(&r.name).is_ok(), "{r:?}");
    for component in r.name.split('/') {
        assert!(!matches!(component, "" | "." | ".."), "{r:?}");
    }
    let canonical = match &r.object {
        Object::Blob(d) => format!("{}/blobs/{d}", r.name),
        Object::ManifestTag(t) => {
            assert!(route::check_tag(t).is_ok(), "{r:?}");
            format!("{}/manifests/{t}", r.name)
        }
        Object::ManifestDigest(d) => format!("{}/manifests/{d}", r.name),
    };
    assert_eq!(
        route::parse(&canonical).as_ref().ok(),
        Some(&r),
        "{canonical}"
    );
}

fn ns(s: &str) {
    if let Ok(back) = route::check_ns(s) {
        assert_eq!(back, s);
        assert!(
            !s.contains('/') && !s.contains(char::is_whitespace),
            "{s:?}"
        );
    }
    if names::is_registry_host(s) {
        for dir in names::dir_candidates(s) {
            assert!(
                !dir.is_empty() && !dir.contains('/') && dir != "." && dir != "..",
                "{s:?} gives the directory {dir:?}"
            );
        }
    }
}

fn range_header(s: &str, size: u64) {
    match range::decide(Some(s), size) {
        Ok(Span::Partial { start, end }) => {
            assert!(
                start <= end && end < size,
                "{s:?} of {size}: {start}..={end}"
            );
            let canonical = format!("bytes={start}-{end}");
            assert_eq!(
                range::decide(Some(&canonical), size),
                Ok(Span::Partial { start, end }),
                "{s:?} of {size}"
            );
        }
        Ok(Span::Full | Span::Unsatisfiable) | Err(_) => {}
    }
}

//! Replays the fuzz corpora on stable: every file under `fuzz/corpus/<target>/` and
//! `fuzz/regressions/<target>/` goes through the same check as the fuzz target
//! (`shoal_peer::fuzzing`, `shoal_scheduler::fuzzing`). A target without a corpus, or a
//! fuzz target with no check here, fails the test.

use std::collections::BTreeSet;
use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use shoal_peer::fuzzing::Check;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn targets() -> Vec<(&'static str, Check)> {
    let mut all = shoal_peer::fuzzing::TARGETS.to_vec();
    all.push((
        "scheduler_wire",
        shoal_scheduler::fuzzing::scheduler_wire as Check,
    ));
    all
}

/// The files of `dir`, sorted; `None` when it does not exist.
fn files(dir: &Path) -> Option<Vec<PathBuf>> {
    let entries = fs::read_dir(dir).ok()?;
    let mut out: Vec<PathBuf> = entries
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    Some(out)
}

#[test]
fn every_fuzz_target_has_a_check_and_a_corpus() {
    let checked: BTreeSet<&str> = targets().iter().map(|(name, _)| *name).collect();
    let built: BTreeSet<String> = files(&fuzz_dir().join("fuzz_targets"))
        .expect("fuzz/fuzz_targets exists")
        .iter()
        .filter_map(|p| Some(p.file_stem()?.to_str()?.to_owned()))
        .collect();
    let built: BTreeSet<&str> = built.iter().map(String::as_str).collect();
    assert_eq!(checked, built, "fuzz targets and replayed checks differ");
    for name in checked {
        let corpus = files(&fuzz_dir().join("corpus").join(name))
            .unwrap_or_else(|| panic!("fuzz/corpus/{name} is missing"));
        assert!(!corpus.is_empty(), "fuzz/corpus/{name} is empty");
    }
}

#[test]
fn corpora_and_regressions_replay_clean() {
    let mut failed = Vec::new();
    let mut replayed = 0;
    for (name, check) in targets() {
        let corpus = files(&fuzz_dir().join("corpus").join(name)).unwrap_or_default();
        let regressions = files(&fuzz_dir().join("regressions").join(name)).unwrap_or_default();
        for file in corpus.iter().chain(&regressions) {
            let data = fs::read(file).expect("a corpus file");
            if catch_unwind(AssertUnwindSafe(|| check(&data))).is_err() {
                failed.push(file.display().to_string());
            }
            replayed += 1;
        }
    }
    assert!(
        failed.is_empty(),
        "inputs that fail their check: {failed:#?}"
    );
    assert!(replayed > 0, "no input replayed");
}

//! Every committed corpus input and crash regression of every fuzz target, run on the
//! ordinary (stable, unsanitized) build: what fuzzing found stays fixed, and the targets
//! themselves keep compiling and running in `cargo test`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use arrowbridge_fuzz_targets::TARGETS;

fn inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut files = Vec::new();
    for dir in ["corpus", "regressions"] {
        if let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) {
            files.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_file()));
        }
    }
    files.sort();
    files
}

/// Panics seen by the hook, caught or not: libFuzzer aborts on every panic, including one
/// that arrowbridge's own `catch_unwind` would turn into an error, and so does this test.
static PANICS: AtomicUsize = AtomicUsize::new(0);

#[test]
fn every_corpus_input_runs_through_its_target_without_a_panic() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        default_hook(info);
    }));
    assert_eq!(
        TARGETS.len(),
        9,
        "a target without a corpus would go unreplayed"
    );
    for (name, target) in TARGETS {
        let files = inputs(name);
        assert!(!files.is_empty(), "fuzz/corpus/{name} has no inputs");
        for file in files {
            let data = match std::fs::read(&file) {
                Ok(data) => data,
                // A fuzzer running beside this test replaces corpus files as it reduces them.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => panic!("{}: {e}", file.display()),
            };
            let before = PANICS.load(Ordering::SeqCst);
            let _ = std::panic::catch_unwind(|| target(&data));
            let panics = PANICS.load(Ordering::SeqCst) - before;
            assert_eq!(panics, 0, "{name} panicked on {}", file.display());
        }
    }
}

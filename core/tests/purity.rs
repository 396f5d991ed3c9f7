//! tunnox-core must stay sans-IO: no async runtime, sockets, files, threads, clocks or OS
//! randomness. This test reads the crate's own sources and manifest; `.ci/purity` additionally
//! checks the transitive dependency tree with `cargo tree`.

#![allow(clippy::expect_used)]
use std::fs;
use std::path::{Path, PathBuf};

/// Source fragments that mean IO, wall-clock time, threads or OS randomness.
const BANNED_SOURCE: &[&str] = &[
    "tokio",
    "std::net",
    "std::fs",
    "std::thread",
    "std::process",
    "Instant::now",
    "SystemTime::now",
    "thread_rng",
    "OsRng",
    "from_entropy",
    "from_os_rng",
    "getrandom",
];

/// Crates that must never be direct dependencies of the core.
const BANNED_CRATES: &[&str] = &[
    "tokio",
    "mio",
    "socket2",
    "async-std",
    "smol",
    "getrandom",
    "rand",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("read core/src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn core_sources_do_no_io() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(
        files.len() > 10,
        "found only {} source files under {src:?}",
        files.len()
    );
    let mut offences = Vec::new();
    for file in &files {
        let text = fs::read_to_string(file).expect("read source");
        for (n, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            for banned in BANNED_SOURCE {
                if line.contains(banned) {
                    offences.push(format!(
                        "{}:{}: `{banned}` in: {}",
                        file.display(),
                        n + 1,
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(
        offences.is_empty(),
        "tunnox-core must stay sans-IO:\n{}",
        offences.join("\n")
    );
    println!("checked {} source files of tunnox-core", files.len());
}

#[test]
fn core_has_no_io_dependencies() {
    let manifest = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .expect("read core/Cargo.toml");
    let mut in_dependencies = false;
    let mut deps = Vec::new();
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_dependencies = line == "[dependencies]";
            continue;
        }
        if in_dependencies && let Some((name, _)) = line.split_once('=') {
            deps.push(name.trim().trim_end_matches(".workspace").to_owned());
        }
    }
    assert!(
        deps.iter().any(|d| d == "bytes"),
        "parsed no dependencies: {deps:?}"
    );
    for banned in BANNED_CRATES {
        assert!(
            !deps.iter().any(|d| d == banned),
            "tunnox-core depends on {banned}"
        );
    }
}

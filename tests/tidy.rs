//! Style checks as tests: every source file opens with a `//!` line; shard-owned code holds no locks or `Arc`.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            // A build of a standalone crate under bench/ (uring-floor) done in place.
            if path.file_name().is_some_and(|n| n == "target") {
                continue;
            }
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn files(dirs: &[&str]) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    for dir in dirs {
        let dir = root.join(dir);
        if dir.exists() {
            rust_files(&dir, &mut out);
        }
    }
    assert!(!out.is_empty());
    out
}

#[test]
fn every_source_file_starts_with_a_module_doc_line() {
    for path in files(&["src", "loadtest", "tests", "bench", "examples"]) {
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("//!"),
            "{} must start with a `//!` line saying what it owns",
            path.display()
        );
    }
}

/// Files that may hold an `Arc`: around immutable data made before the shards start or by a
/// reload (the config, the users snapshot, TLS material; rustls takes its config as `Arc`), and
/// in runtime/mod.rs the start-up atomics the main thread shares with the signal and watchdog
/// threads (no shard owns them). Locks stay forbidden everywhere.
const ARC_OF_IMMUTABLE_DATA: &[&str] = &[
    "src/config/mod.rs",
    "src/net/tls.rs",
    "src/runtime/mod.rs",
    "src/auth/service.rs",
];

#[test]
fn shard_owned_code_has_no_locks_or_arc() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for path in files(&["src"]) {
        let relative = path
            .strip_prefix(root)
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let forbidden: &[&str] = if ARC_OF_IMMUTABLE_DATA.contains(&relative.as_str()) {
            &["Mutex", "RwLock"]
        } else {
            &["Mutex", "RwLock", "Arc<", "Arc::"]
        };
        let text = std::fs::read_to_string(&path).unwrap();
        for (number, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap();
            for &word in forbidden {
                assert!(
                    !code.contains(word),
                    "{}:{}: `{word}` in shard code; shards share nothing (use the mesh)",
                    path.display(),
                    number + 1
                );
            }
        }
    }
}

#[test]
fn every_source_file_is_reachable() {
    // An orphan .rs file under src/ (not declared as a module) would compile silently out of the build.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for path in files(&["src"]) {
        let name = path.file_stem().unwrap().to_str().unwrap();
        if ["lib", "main", "mod", "build"].contains(&name) {
            continue;
        }
        let parent = path.parent().unwrap();
        let declarer = if parent == root {
            root.join("lib.rs")
        } else {
            let mod_rs = parent.join("mod.rs");
            if mod_rs.exists() {
                mod_rs
            } else {
                parent.with_extension("rs")
            }
        };
        let text = std::fs::read_to_string(&declarer).unwrap_or_default();
        assert!(
            text.contains(&format!("mod {name};")),
            "{} is not declared in {}",
            path.display(),
            declarer.display()
        );
    }
}

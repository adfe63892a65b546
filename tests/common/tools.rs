//! The test tools `scripts/install-test-tools.sh` builds into `$MKG_CACHE_DIR` (default
//! `~/.cache/mqtt-kafka-gateway`): Go programs under `tests/tools/<name>/` built to `bin/<name>`, and a
//! Python venv at `py/`. A missing or outdated one fails the test with that command, never skips it.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::repo_root;

pub const INSTALL_HINT: &str = "run scripts/install-test-tools.sh (scripts/test.sh does)";

pub fn cache_dir() -> PathBuf {
    std::env::var_os("MKG_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/mqtt-kafka-gateway"))
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The binary of `tests/tools/<name>`; missing, or older than its sources (a test would run yesterday's
/// tool), fails.
pub fn go_tool(name: &str) -> PathBuf {
    let bin = cache_dir().join("bin").join(name);
    let built = modified(&bin).unwrap_or_else(|| panic!("{} is missing: {INSTALL_HINT}", bin.display()));
    let src = repo_root().join("tests/tools").join(name);
    for name in ["main.go", "go.mod", "go.sum"] {
        let source = src.join(name);
        if modified(&source).is_some_and(|t| t > built) {
            panic!("{} is older than {}: {INSTALL_HINT}", bin.display(), source.display());
        }
    }
    bin
}

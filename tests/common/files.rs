//! Test directories and secret files.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use tempfile::TempDir;

/// Test directories live here: owned by root (when the tests run as root) and writable
/// by nobody else, so that a test's own directory can serve as `ntimed run`'s state
/// directory, whose parent must be root's alone.
pub const TEST_ROOT: &str = "/tmp/ntimed-tests";

/// A fresh directory under [`TEST_ROOT`], mode 0755 (the engine's user must be able to
/// enter its jail).
pub fn tempdir(what: &str) -> TempDir {
    fs::create_dir_all(TEST_ROOT).expect("create the tests' root directory");
    let dir = tempfile::Builder::new()
        .prefix(&format!("ntimed-interop-{what}-"))
        .tempdir_in(TEST_ROOT)
        .expect("create tempdir");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod tempdir");
    dir
}

/// Writes `contents` to `path`, readable by its owner only (key files).
pub fn write_secret_file(path: &Path, contents: &str) {
    fs::write(path, contents).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .unwrap_or_else(|e| panic!("chmod 0600 {}: {e}", path.display()));
}

//! Cookie master keys: derived from a fleet secret or random and kept in `[nts]
//! key-dir`, rotated as time passes and saved when they change.

use std::path::Path;
use std::time::{Duration, SystemTime};

use tokio::task::JoinHandle;

use crate::auth::nts::cookie::{CookieKeys, Rotation, decode_persisted, encode_persisted};
use crate::proto::server::SharedCookieKeys;

/// The file random master keys are kept in, inside `[nts] key-dir`.
pub const COOKIE_KEY_FILE: &str = "cookie-keys";
/// How often the rotation task looks at the clock.
const ROTATION_CHECK: Duration = Duration::from_secs(60);

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Builds the cookie keys `[nts]` asks for: derived from the fleet secret, or random
/// and persisted in `key_dir` (reloaded from there, so a restart keeps cookies valid).
/// Returns the keys and the file to persist them to. With `write` false (`ntimed
/// check`) it only reads: a missing `key_dir` is not created, and new keys not saved.
pub fn load_cookie_keys(
    fleet_secret: Option<&Path>,
    key_dir: Option<&Path>,
    rotation: Rotation,
    write: bool,
) -> Result<(CookieKeys, Option<std::path::PathBuf>), String> {
    let mut keys = match (fleet_secret, key_dir) {
        (Some(path), _) => {
            let secret = crate::auth::keys::read_private_file(path, 4096)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            (
                CookieKeys::fleet(rotation, &secret)
                    .map_err(|e| format!("{}: {e}", path.display()))?,
                None,
            )
        }
        (None, Some(dir)) => {
            ensure_private_dir(dir, write)?;
            let file = dir.join(COOKIE_KEY_FILE);
            // Read as root before privileges are dropped, from a directory the
            // unprivileged user owns: never through a link it may have planted.
            let persisted = if std::fs::symlink_metadata(&file).is_ok() {
                let bytes = crate::auth::keys::read_private_file_no_link(&file, 1 << 20)
                    .map_err(|e| format!("{}: {e}", file.display()))?;
                let text = std::str::from_utf8(&bytes)
                    .map_err(|_| format!("{}: not text", file.display()))?;
                decode_persisted(text).map_err(|e| format!("{}: {e}", file.display()))?
            } else {
                Vec::new()
            };
            (CookieKeys::random(rotation, persisted), Some(file))
        }
        (None, None) => return Err("[nts] needs key-dir or fleet-secret".into()),
    };
    if write
        && keys.0.update(unix_now(), &mut rand::rng())
        && let Some(file) = &keys.1
    {
        persist_cookie_keys(file, &encode_persisted(&keys.0.persistable()))?;
    }
    Ok(keys)
}

/// Checks that `dir` is a directory only its owner may write, creating it (mode 0700)
/// if it is missing and `create`.
fn ensure_private_dir(dir: &Path, create: bool) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if !dir.exists() {
        if !create {
            return Ok(());
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("{}: cannot create: {e}", dir.display()))?;
    }
    let meta = std::fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if !meta.is_dir() {
        return Err(format!("{}: not a directory", dir.display()));
    }
    if meta.permissions().mode() & 0o022 != 0 {
        return Err(format!(
            "{}: group or others may write here; chmod 700 it",
            dir.display()
        ));
    }
    Ok(())
}

/// Writes the random keys atomically, mode 0600 ([`crate::util::write_atomic`]).
pub fn persist_cookie_keys(file: &Path, text: &str) -> Result<(), String> {
    crate::util::write_atomic(file, text)
        .map_err(|e| format!("{}: cannot save cookie keys: {e}", file.display()))
}

/// Rotates master keys as time passes, saving them when they change (off the async
/// workers, and without holding the keys' lock while writing).
pub fn spawn_rotation(
    keys: SharedCookieKeys,
    persist_to: Option<std::path::PathBuf>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(ROTATION_CHECK).await;
            let text = {
                let mut k = keys
                    .write()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                if !k.update(unix_now(), &mut rand::rng()) {
                    continue;
                }
                encode_persisted(&k.persistable())
            };
            if let Some(file) = persist_to.clone() {
                let saved =
                    tokio::task::spawn_blocking(move || persist_cookie_keys(&file, &text)).await;
                if let Ok(Err(e)) = saved {
                    tracing::warn!("{e}");
                }
            }
        }
    })
}

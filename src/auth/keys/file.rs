//! Reading key files and other secret files from disk: regular files only, of bounded
//! size, refused if group or others may read or write them.

use std::io::Read;
use std::path::Path;

use zeroize::Zeroizing;

use super::{KeyFileError, KeyFileFormat, KeyStore};

/// Key files are small; anything larger is refused before it is read into memory.
const MAX_FILE_LEN: u64 = 1 << 20;

impl KeyStore {
    /// Reads a key file, refusing one that group or others can read or write.
    pub fn load(path: &Path, format: KeyFileFormat) -> Result<Self, KeyFileError> {
        let name = path.display().to_string();
        let bytes = Self::read_file(path)?;
        Self::parse_bytes(&name, &bytes, format)
    }

    /// A key file's bytes, read as [`load`](Self::load) reads them, to be parsed
    /// elsewhere (the sandboxed engine, on a reload).
    pub fn read_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, KeyFileError> {
        read_private_file(path, MAX_FILE_LEN).map_err(|problem| KeyFileError {
            file: path.display().to_string(),
            line: None,
            problem,
        })
    }

    /// [`parse`](Self::parse) for bytes that must be UTF-8 text.
    pub fn parse_bytes(
        name: &str,
        bytes: &[u8],
        format: KeyFileFormat,
    ) -> Result<Self, KeyFileError> {
        let text = std::str::from_utf8(bytes).map_err(|_| KeyFileError {
            file: name.into(),
            line: None,
            problem: "not UTF-8 text".into(),
        })?;
        Self::parse(name, text, format)
    }
}

/// Reads a secret file: a regular file (opening a FIFO would block the start), at most
/// `max_len` bytes, that group and others can neither read nor write. The contents
/// are wiped when dropped.
pub fn read_private_file(path: &Path, max_len: u64) -> Result<Zeroizing<Vec<u8>>, String> {
    read_private(crate::util::open_regular(path)?, max_len)
}

/// [`read_private_file`] for a file in a directory an unprivileged process can write
/// (read as root before privileges are dropped): never through a symbolic link, and a
/// FIFO or device planted there is not waited on.
pub fn read_private_file_no_link(path: &Path, max_len: u64) -> Result<Zeroizing<Vec<u8>>, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("cannot open (symbolic links are refused): {e}"))?;
    read_private(file, max_len)
}

fn read_private(file: std::fs::File, max_len: u64) -> Result<Zeroizing<Vec<u8>>, String> {
    let meta = file.metadata().map_err(|e| format!("cannot stat: {e}"))?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    check_private(&meta)?;
    if meta.len() > max_len {
        return Err(format!("larger than {max_len} bytes"));
    }
    // Sized up front: a growing buffer would free copies of the secrets unwiped.
    let mut bytes = Zeroizing::new(Vec::with_capacity(meta.len() as usize + 1));
    file.take(max_len)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    Ok(bytes)
}

fn check_private(meta: &std::fs::Metadata) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o066 != 0 {
        return Err(format!(
            "mode {mode:04o} lets group or others read or write the keys; chmod 600 it"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_utf8_files_are_read() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let err = KeyStore::load(dir.path(), KeyFileFormat::Auto).unwrap_err();
        assert!(err.problem.contains("not a regular file"), "{err}");
        let path = dir.path().join("binary.keys");
        std::fs::write(&path, b"1 MD5 \xff\xfe\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = KeyStore::load(&path, KeyFileFormat::Auto).unwrap_err();
        assert!(err.problem.contains("UTF-8"), "{err}");
        let big = dir.path().join("big.keys");
        std::fs::write(&big, vec![b'#'; 2 << 20]).unwrap();
        std::fs::set_permissions(&big, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = KeyStore::load(&big, KeyFileFormat::Auto).unwrap_err();
        assert!(err.problem.contains("larger than"), "{err}");
    }

    #[test]
    fn group_or_world_access_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ntp.keys");
        std::fs::write(&path, "1 MD5 secret\n").unwrap();
        for mode in [0o644, 0o640, 0o604, 0o620] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = KeyStore::load(&path, KeyFileFormat::Auto).unwrap_err();
            assert!(err.problem.contains("chmod 600"), "{mode:o}: {err}");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(KeyStore::load(&path, KeyFileFormat::Auto).unwrap().len(), 1);
    }
}

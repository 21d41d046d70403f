//! Reading a file named by the configuration: a regular file only (a FIFO or device
//! planted at the path is refused, never waited on: a reload must not hang the root
//! supervisor), and never more than a limit.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Opens `path` for reading without blocking on a FIFO, and checks through the open
/// file (not the path, which may change meanwhile) that it is a regular file.
pub fn open_regular(path: &Path) -> Result<std::fs::File, String> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("cannot open: {e}"))?;
    let meta = file.metadata().map_err(|e| format!("cannot stat: {e}"))?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    Ok(file)
}

/// The contents of the regular file `path`, refused if longer than `max_len`.
pub fn read_bounded(path: &Path, max_len: u64) -> Result<Vec<u8>, String> {
    let file = open_regular(path)?;
    let mut bytes = Vec::new();
    file.take(max_len.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > max_len {
        return Err(format!("larger than {max_len} bytes"));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_within_the_limit_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"12345").unwrap();
        assert_eq!(read_bounded(&file, 5).unwrap(), b"12345");
        assert!(
            read_bounded(&file, 4)
                .unwrap_err()
                .contains("larger than 4")
        );
        assert!(read_bounded(dir.path(), 10).is_err(), "a directory");
        // A FIFO is refused at once (opening it would otherwise wait for a writer).
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if made.is_ok_and(|s| s.success()) {
            assert_eq!(read_bounded(&fifo, 10).unwrap_err(), "not a regular file");
        }
    }
}

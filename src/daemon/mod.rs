//! Layer 5: the tokio shell around the sans-IO core. It moves bytes between sockets and
//! the `proto` state machines and reads the system clock for them; it decides nothing
//! about packets itself.
//!
//! * [`client`]: the sources, the sync engine and the clock (`[[source]]`).
//! * [`net`]: address parsing and sockets with random source ports.
//! * [`peer`]: routing `[[peer]]` packets between the server sockets and the client task.
//! * [`serve`]: the UDP server loop (`ntimed run`).
//! * [`query`]: one-shot client exchanges (`ntimed query`).

pub mod client;
pub mod net;
pub mod nts;
pub mod peer;
pub mod query;
pub mod serve;

use crate::wire::NtpTimestamp;

/// The system clock as an NTP timestamp.
pub fn now() -> NtpTimestamp {
    NtpTimestamp::from_system_time(std::time::SystemTime::now())
}

/// log2 of the smallest step seen between system-clock reads, as NTP's precision field
/// wants it (RFC 5905 §7.3): the clock's resolution or the cost of reading it,
/// whichever is larger.
pub fn measure_precision() -> i8 {
    let mut best = f64::MAX;
    let mut last = now();
    for _ in 0..1000 {
        let t = now();
        let step = t.seconds_since(last);
        if step > 0.0 {
            best = best.min(step);
        }
        last = t;
    }
    if best == f64::MAX {
        return -20;
    }
    best.log2().ceil().clamp(-30.0, 0.0) as i8
}

/// At most one log line per interval about a kind of event, so that a flood of them
/// (dropped requests, refused commands) cannot flood the log.
pub struct LogLimit {
    interval: std::time::Duration,
    last: Option<std::time::Instant>,
    suppressed: u64,
}

impl LogLimit {
    pub fn new(interval: std::time::Duration) -> Self {
        Self {
            interval,
            last: None,
            suppressed: 0,
        }
    }

    /// Counts an event; if a line may be written about it now, returns how many
    /// events went unlogged since the last line.
    pub fn allow(&mut self) -> Option<u64> {
        let now = std::time::Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < self.interval)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// Replaces `file` with `text` atomically, mode 0600: a fresh temporary file beside it
/// (`NAME.tmp`; any old one, or a symlink planted in its place, is removed first and
/// never followed), fsync, rename, fsync of the directory.
pub fn write_atomic(file: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut name = file.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let tmp = file.with_file_name(name);
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    out.write_all(text.as_bytes())?;
    out.sync_all()?;
    std::fs::rename(&tmp, file)?;
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_limit_writes_one_line_per_interval_and_counts_the_rest() {
        let mut limit = LogLimit::new(std::time::Duration::from_secs(3600));
        assert_eq!(limit.allow(), Some(0));
        assert!((0..1000).all(|_| limit.allow().is_none()));
        limit.last = None;
        assert_eq!(limit.allow(), Some(1000));
    }
}

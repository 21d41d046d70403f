//! A limit on log lines about one kind of event.

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

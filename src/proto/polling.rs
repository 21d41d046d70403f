//! What sources and peers share: the reach register, the count of silent polls, the
//! poll interval within its bounds, and what a timeout asks of the driver.

/// Polls without an answer after which an association counts as gone quiet: it polls at
/// its `max_poll` (and an NTS source re-keys).
pub const SILENT_POLLS: u32 = 8;

/// What an association wants its driver to do after [`handle_timeout`]: the one result
/// type of sources and peers.
///
/// [`handle_timeout`]: crate::proto::source::Source::handle_timeout
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send the packet written into the buffer.
    Transmit,
    /// Run NTS-KE and hand the result back (sources with NTS only).
    KeyExchange,
}

/// RFC 5905's 8-bit reach register, and how many polls in a row went unanswered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reach {
    register: u8,
    silent_polls: u32,
    polls_sent: u64,
}

impl Reach {
    /// A poll goes out: the register shifts, and the previous poll counts as silent if
    /// nothing answered it.
    pub fn on_poll(&mut self) {
        if self.polls_sent > 0 && self.register & 1 == 0 {
            self.silent_polls = self.silent_polls.saturating_add(1);
        }
        self.polls_sent += 1;
        self.register <<= 1;
    }

    /// An authentic answer arrived.
    pub fn on_answer(&mut self) {
        self.register |= 1;
        self.silent_polls = 0;
    }

    /// Forget the silence (a fresh NTS session starts over).
    pub fn clear_silence(&mut self) {
        self.silent_polls = 0;
    }

    /// Whether any of the last 8 polls was answered.
    pub fn any(&self) -> bool {
        self.register != 0
    }

    pub fn register(&self) -> u8 {
        self.register
    }

    /// Whether [`SILENT_POLLS`] polls in a row went unanswered.
    pub fn is_silent(&self) -> bool {
        self.silent_polls >= SILENT_POLLS
    }

    pub fn polls_sent(&self) -> u64 {
        self.polls_sent
    }
}

/// The poll interval in force (log2 s): the engine's wish, or `max_poll` once silent,
/// plus any `backoff` (RATE kisses), within `min_poll..=max_poll`.
pub fn poll_exponent(min_poll: i8, max_poll: i8, wanted: i8, backoff: i8, reach: &Reach) -> i8 {
    let base = if reach.is_silent() { max_poll } else { wanted };
    base.saturating_add(backoff)
        .clamp(min_poll, max_poll.max(min_poll))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_register_shifts_per_poll_and_counts_silence() {
        let mut reach = Reach::default();
        reach.on_poll();
        reach.on_answer();
        assert!(reach.any());
        for _ in 0..8 {
            reach.on_poll();
        }
        assert!(!reach.any(), "8 polls later the answer has shifted out");
        assert!(
            !reach.is_silent(),
            "the first silent poll is counted at the next"
        );
        reach.on_poll();
        assert!(reach.is_silent());
        assert_eq!(poll_exponent(4, 10, 6, 0, &reach), 10);
        reach.on_answer();
        assert_eq!(poll_exponent(4, 10, 6, 2, &reach), 8);
        assert_eq!(poll_exponent(4, 10, 2, 0, &reach), 4);
    }
}

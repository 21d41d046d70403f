//! Applies clock commands in order and reports each outcome. A clock in this process
//! (the software clock, or the kernel's through adjtimex) answers at once and is
//! applied inline; the privileged clock process is another process, which can be slow
//! or gone, so its commands go through a thread of their own and the async runtime
//! never waits on it.

use std::sync::Arc;
use std::sync::mpsc as std_mpsc;

use tokio::sync::mpsc;

use crate::clock::{Clock, ClockCommand, ClockError};

/// Commands waiting for the clock thread at most. The engine sends a handful per
/// sample; more than this means the clock process stopped answering.
const QUEUE: usize = 64;

/// What became of one command.
pub struct Outcome {
    pub command: ClockCommand,
    pub result: Result<(), ClockError>,
}

pub enum ClockWorker {
    Inline(Arc<dyn Clock>),
    Thread {
        commands: std_mpsc::SyncSender<ClockCommand>,
    },
}

impl ClockWorker {
    /// Outcomes of commands applied on the thread arrive on `outcomes`.
    pub fn new(clock: Arc<dyn Clock>, outcomes: mpsc::Sender<Outcome>) -> std::io::Result<Self> {
        if !clock.applies_remotely() {
            return Ok(Self::Inline(clock));
        }
        let (commands, queue) = std_mpsc::sync_channel::<ClockCommand>(QUEUE);
        std::thread::Builder::new()
            .name("clock-link".into())
            .spawn(move || {
                while let Ok(command) = queue.recv() {
                    let result = clock.apply(command);
                    if outcomes.blocking_send(Outcome { command, result }).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Self::Thread { commands })
    }

    /// Applies `command`: at once (its outcome returned), or on the thread (`None`; the
    /// outcome arrives later). A full queue is an outcome too: the clock is not keeping
    /// up, and the command counts as refused.
    pub fn apply(&self, command: ClockCommand) -> Option<Outcome> {
        match self {
            Self::Inline(clock) => Some(Outcome {
                command,
                result: clock.apply(command),
            }),
            Self::Thread { commands } => match commands.try_send(command) {
                Ok(()) => None,
                Err(_) => Some(Outcome {
                    command,
                    result: Err(ClockError::Refused(
                        "the clock process is not keeping up".into(),
                    )),
                }),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ClockStatus;
    use crate::wire::NtpTimestamp;
    use std::sync::Mutex;
    use std::sync::mpsc::{Receiver, channel};

    /// A clock in another process that answers only when the test lets it.
    struct HeldUp {
        release: Mutex<Receiver<()>>,
    }

    impl Clock for HeldUp {
        fn now(&self) -> NtpTimestamp {
            NtpTimestamp::ZERO
        }
        fn apply(&self, _: ClockCommand) -> Result<(), ClockError> {
            let release = self
                .release
                .lock()
                .map_err(|_| ClockError::Lost("".into()))?;
            release.recv().map_err(|_| ClockError::Lost("gone".into()))
        }
        fn status(&self) -> ClockStatus {
            ClockStatus::default()
        }
        fn applies_remotely(&self) -> bool {
            true
        }
    }

    /// The caller (the engine's async loop) is never held up by a clock process that
    /// does not answer: the command is queued, and its outcome arrives once it does.
    #[test]
    fn a_clock_process_that_does_not_answer_holds_up_nothing() {
        let (release, held) = channel();
        let clock = Arc::new(HeldUp {
            release: Mutex::new(held),
        });
        let (tx, mut outcomes) = mpsc::channel(4);
        let worker = ClockWorker::new(clock, tx).unwrap();
        let command = ClockCommand::SetFrequency { ppm: 1.0 };
        assert!(worker.apply(command).is_none(), "queued, not waited for");
        assert!(outcomes.try_recv().is_err());
        release.send(()).unwrap();
        let outcome = outcomes.blocking_recv().unwrap();
        assert_eq!(outcome.command, command);
        assert!(outcome.result.is_ok());
    }

    /// A clock in this process is applied at once.
    #[test]
    fn a_local_clock_is_applied_inline() {
        let clock = Arc::new(crate::clock::SoftwareClock::simulated(0.0, 0.0));
        let (tx, _outcomes) = mpsc::channel(4);
        let worker = ClockWorker::new(clock.clone(), tx).unwrap();
        let outcome = worker
            .apply(ClockCommand::SetFrequency { ppm: 7.0 })
            .unwrap();
        assert!(outcome.result.is_ok());
        assert_eq!(clock.status().frequency_ppm, 7.0);
    }
}

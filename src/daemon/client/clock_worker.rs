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

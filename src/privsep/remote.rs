//! The engine's side of the clock: commands cross to the clock process; reading the
//! clock never does. The engine reads the system clock itself, or a mirror of the
//! simulated clock the clock process holds, kept exact by applying each command the
//! clock process applied at the instant it reports.

use std::os::unix::net::UnixDatagram;
use std::sync::Mutex;
use std::time::Duration;

use super::ipc::{self, FRAME_LEN, Reply};
use crate::clock::system::SystemClock;
use crate::clock::{Clock, ClockCommand, ClockError, ClockStatus, SoftwareClock, check_finite};
use crate::wire::NtpTimestamp;

/// The clock process answers at once; silence this long means it is gone.
const REPLY_TIMEOUT: Duration = Duration::from_secs(2);

/// How the engine reads the clock it does not hold.
pub enum LocalView {
    /// The kernel clock, read-only.
    System(SystemClock),
    /// A replica of the clock process's software clock (same epoch and start).
    Mirror(SoftwareClock),
}

/// Commands go to the clock process one at a time and [`Clock::apply`] blocks until
/// the answer comes (at most [`REPLY_TIMEOUT`]): run it where blocking is allowed.
/// Once the link is lost (silence, a closed link, a malformed reply or one to another
/// request) every call returns [`ClockError::Lost`]: the engine can no longer know what
/// the clock did, and what to do about it (exit, so that the daemon restarts) is the
/// caller's decision.
pub struct RemoteClock {
    link: Mutex<Link>,
    view: LocalView,
}

struct Link {
    socket: UnixDatagram,
    next_id: u32,
    /// Why the link was given up; once set, it is never used again.
    lost: Option<String>,
}

impl RemoteClock {
    pub fn new(link: UnixDatagram, view: LocalView) -> std::io::Result<Self> {
        Self::with_timeout(link, view, REPLY_TIMEOUT)
    }

    /// As [`Self::new`], giving the clock process `timeout` to answer each command.
    pub fn with_timeout(
        link: UnixDatagram,
        view: LocalView,
        timeout: Duration,
    ) -> std::io::Result<Self> {
        link.set_read_timeout(Some(timeout))?;
        Ok(Self {
            link: Mutex::new(Link {
                socket: link,
                next_id: 1,
                lost: None,
            }),
            view,
        })
    }

    /// Closes the link (the clock process then exits) and returns the view.
    pub fn into_view(self) -> LocalView {
        self.view
    }

    /// Sends `command` and waits for the reply to it. Any failure loses the link for
    /// good: a late reply could otherwise be taken for the answer to a later command.
    fn exchange(&self, command: &ClockCommand) -> Result<Reply, ClockError> {
        let mut link = self.link.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(why) = &link.lost {
            return Err(ClockError::Lost(why.clone()));
        }
        let id = link.next_id;
        link.next_id = id.wrapping_add(1);
        let mut buffer = [0u8; 2 * FRAME_LEN];
        let result = link
            .socket
            .send(&ipc::encode_command(id, command))
            .and_then(|_| link.socket.recv(&mut buffer))
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                    "no answer in time".to_string()
                }
                _ => e.to_string(),
            })
            .and_then(|len| match buffer.get(..len) {
                Some([]) | None => Err("it closed the link".to_string()),
                Some(frame) => ipc::decode_reply(frame).map_err(|e| e.to_string()),
            })
            .and_then(|(got, reply)| {
                if got == id {
                    Ok(reply)
                } else {
                    Err(format!("a reply to request {got} while waiting for {id}"))
                }
            });
        result.map_err(|why| {
            tracing::error!("lost the clock process: {why}");
            // The clock process sees the link close and exits; nothing more is sent.
            let _ = link.socket.shutdown(std::net::Shutdown::Both);
            link.lost = Some(why.clone());
            ClockError::Lost(why)
        })
    }
}

impl Clock for RemoteClock {
    fn now(&self) -> NtpTimestamp {
        match &self.view {
            LocalView::System(clock) => clock.now(),
            LocalView::Mirror(clock) => clock.now(),
        }
    }

    fn apply(&self, command: ClockCommand) -> Result<(), ClockError> {
        check_finite(&command)?;
        match self.exchange(&command)? {
            Reply::Refused(why) => Err(ClockError::Refused(why.to_string())),
            Reply::Applied { at } => match &self.view {
                LocalView::Mirror(clock) => clock.apply_at(at, command),
                LocalView::System(clock) => {
                    // The same books as the clock process keeps: steps, frequency, and
                    // the slew in progress (for the pending slew samples account for).
                    clock.record_applied(&command);
                    Ok(())
                }
            },
        }
    }

    /// Each command waits for the clock process's answer.
    fn applies_remotely(&self) -> bool {
        true
    }

    fn status(&self) -> ClockStatus {
        match &self.view {
            LocalView::System(clock) => clock.status(),
            LocalView::Mirror(clock) => clock.status(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::clock_process::{self, HeldClock};
    use super::super::policy::{Policy, PolicyConfig};
    use super::*;
    use std::time::SystemTime;

    /// The mirror shows exactly the time the clock process's clock shows.
    #[test]
    fn the_mirror_follows_the_held_clock_exactly() {
        let epoch = SystemTime::now();
        let (a, b) = crate::sys::seqpacket_pair().unwrap();
        let (engine_end, clock_end) = (UnixDatagram::from(a), UnixDatagram::from(b));
        let process = std::thread::spawn(move || {
            let held = HeldClock::Software(SoftwareClock::with_epoch(epoch, 0.3, 80.0));
            let mut policy = Policy::new(PolicyConfig::default(), 0.0);
            clock_process::serve(&clock_end, &held, &mut policy, None, None).unwrap();
            held
        });
        let mirror = SoftwareClock::with_epoch(epoch, 0.3, 80.0);
        let remote = RemoteClock::new(engine_end, LocalView::Mirror(mirror)).unwrap();
        remote.apply(ClockCommand::Step { offset: -0.3 }).unwrap();
        remote
            .apply(ClockCommand::SetFrequency { ppm: -80.0 })
            .unwrap();
        let slew = ClockCommand::Slew {
            offset: 0.01,
            duration: 1.0,
        };
        remote.apply(slew).unwrap();
        let refused = remote.apply(ClockCommand::Step { offset: 1.0 });
        assert!(
            matches!(refused, Err(ClockError::Refused(_))),
            "{refused:?}"
        );
        let LocalView::Mirror(mirror) = remote.into_view() else {
            unreachable!()
        };
        let HeldClock::Software(held) = process.join().unwrap() else {
            unreachable!()
        };
        assert_eq!(held.status().steps, 1);
        assert_eq!(held.status().frequency_ppm, -80.0);
        for t in [0.0, 0.5, 3.0, 100.0, 1e5] {
            assert_eq!(mirror.offset_at(t).to_bits(), held.offset_at(t).to_bits());
        }
    }

    fn lost(result: Result<(), ClockError>) -> String {
        match result {
            Err(ClockError::Lost(why)) => why,
            other => panic!("expected Lost, got {other:?}"),
        }
    }

    fn remote(engine_end: UnixDatagram, timeout: Duration) -> RemoteClock {
        RemoteClock::with_timeout(engine_end, LocalView::System(SystemClock::new()), timeout)
            .unwrap()
    }

    /// A closed link, silence, and a reply to another request each lose the link: the
    /// call returns `Lost` (the process does not exit), and so does every later call,
    /// even when the other end would now answer properly.
    #[test]
    fn a_lost_link_is_an_error_that_stays_and_the_process_lives_on() {
        let frequency = ClockCommand::SetFrequency { ppm: 1.0 };
        // Closed.
        let (a, b) = crate::sys::seqpacket_pair().unwrap();
        drop(b);
        let clock = remote(UnixDatagram::from(a), Duration::from_secs(2));
        let why = lost(clock.apply(frequency));
        assert!(!why.is_empty());
        assert_eq!(lost(clock.apply(frequency)), why);
        assert!(
            ClockError::Lost(why)
                .to_string()
                .contains("the clock process is gone"),
        );

        // Silent: the other end is open but never answers.
        let (a, b) = crate::sys::seqpacket_pair().unwrap();
        let clock = remote(UnixDatagram::from(a), Duration::from_millis(200));
        let started = std::time::Instant::now();
        assert_eq!(lost(clock.apply(frequency)), "no answer in time");
        assert!(started.elapsed() < Duration::from_secs(2));
        // The silent end now sees the link closed.
        let silent = UnixDatagram::from(b);
        let mut frame = [0u8; 64];
        assert_eq!(silent.recv(&mut frame).unwrap(), FRAME_LEN, "the request");
        assert_eq!(silent.recv(&mut frame).unwrap(), 0, "then the close");

        // A reply to another request, then a malformed one; a right answer after either
        // is never read.
        for wrong in [
            ipc::encode_reply(99, &Reply::Applied { at: 0.0 }).to_vec(),
            vec![0xff; 7],
        ] {
            let (a, b) = crate::sys::seqpacket_pair().unwrap();
            let clock_end = UnixDatagram::from(b);
            let answerer = std::thread::spawn(move || {
                let mut frame = [0u8; 64];
                let mut answered = 0;
                while let Ok(n) = clock_end.recv(&mut frame) {
                    if n == 0 {
                        break;
                    }
                    let (id, _) = ipc::decode_command(&frame[..n]).unwrap();
                    let reply = if answered == 0 {
                        wrong.clone()
                    } else {
                        ipc::encode_reply(id, &Reply::Applied { at: 0.0 }).to_vec()
                    };
                    answered += 1;
                    if clock_end.send(&reply).is_err() {
                        break;
                    }
                }
                answered
            });
            let clock = remote(UnixDatagram::from(a), Duration::from_secs(2));
            lost(clock.apply(frequency));
            lost(clock.apply(frequency));
            drop(clock);
            assert_eq!(answerer.join().unwrap(), 1, "one request only crossed");
        }
    }
}

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

pub struct RemoteClock {
    link: Mutex<Link>,
    view: LocalView,
}

struct Link {
    socket: UnixDatagram,
    next_id: u32,
}

impl RemoteClock {
    pub fn new(link: UnixDatagram, view: LocalView) -> std::io::Result<Self> {
        link.set_read_timeout(Some(REPLY_TIMEOUT))?;
        Ok(Self {
            link: Mutex::new(Link {
                socket: link,
                next_id: 1,
            }),
            view,
        })
    }

    /// Closes the link (the clock process then exits) and returns the view.
    pub fn into_view(self) -> LocalView {
        self.view
    }

    /// Sends `command` and waits for the reply to it. Any failure (silence, a closed
    /// link, a malformed reply or one to another request) leaves the engine unable to
    /// know what the clock did, so the engine exits: the supervisor then stops the
    /// daemon and systemd starts it afresh.
    fn exchange(&self, command: &ClockCommand) -> Reply {
        let mut link = self.link.lock().unwrap_or_else(|p| p.into_inner());
        let id = link.next_id;
        link.next_id = id.wrapping_add(1);
        let mut buffer = [0u8; 2 * FRAME_LEN];
        let result = link
            .socket
            .send(&ipc::encode_command(id, command))
            .and_then(|_| link.socket.recv(&mut buffer))
            .map_err(|e| e.to_string())
            .and_then(|len| match buffer.get(..len) {
                Some([]) | None => Err("the clock process is gone".to_string()),
                Some(frame) => ipc::decode_reply(frame).map_err(|e| e.to_string()),
            })
            .and_then(|(got, reply)| {
                if got == id {
                    Ok(reply)
                } else {
                    Err(format!("a reply to request {got} while waiting for {id}"))
                }
            });
        match result {
            Ok(reply) => reply,
            Err(e) => {
                tracing::error!("lost the clock process ({e}); the engine exits");
                std::process::exit(70);
            }
        }
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
        match self.exchange(&command) {
            Reply::Refused(why) => Err(ClockError::Refused(why.to_string())),
            Reply::Applied { at } => match &self.view {
                LocalView::Mirror(clock) => clock.apply_at(at, command),
                LocalView::System(clock) => {
                    if matches!(command, ClockCommand::Step { .. }) {
                        clock.record_step();
                    }
                    Ok(())
                }
            },
        }
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
}

//! The privileged side: a loop that reads one frame, checks it, asks the policy, applies
//! the command to the clock it holds and answers. Blocking and single-threaded; it
//! never allocates per frame beyond a log line.
//!
//! A malformed frame ends the loop with an error (the process then exits and the
//! supervisor stops everything): it can only come from an engine that is no longer
//! running our code. A command the policy refuses is answered with the reason and
//! logged; the engine carries on.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant, SystemTime};

use super::ipc::{self, FRAME_LEN, Refusal, Reply};
use super::policy::{Policy, PolicyState};
use crate::clock::system::SystemClock;
use crate::clock::{Clock, ClockCommand, SoftwareClock};

/// How long a receive waits before the loop looks at the drift file.
const IDLE_WAKE: Duration = Duration::from_secs(60);
/// How often the frequency is saved while synchronized.
const DRIFT_SAVE: Duration = Duration::from_secs(3600);
/// Larger than a frame, so that a long one is seen as long rather than cut to size.
const RECEIVE_BUFFER: usize = 2 * FRAME_LEN;
/// At most one log line about refused commands per interval.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The clock this process steers.
pub enum HeldClock {
    /// No `[clock]`: every command is refused by policy.
    None,
    /// `observe` or `simulated`: a software clock the engine mirrors.
    Software(SoftwareClock),
    /// The kernel clock.
    System(SystemClock),
}

impl HeldClock {
    /// Applies `command`, returning the instant the engine's mirror must apply it at.
    fn apply(&self, command: ClockCommand) -> Result<f64, String> {
        match self {
            Self::None => Err("no clock".into()),
            Self::Software(clock) => {
                let at = clock.elapsed();
                clock.apply_at(at, command).map_err(|e| e.to_string())?;
                Ok(at)
            }
            Self::System(clock) => clock
                .apply(command)
                .map(|()| 0.0)
                .map_err(|e| e.to_string()),
        }
    }
}

impl HeldClock {
    /// How long the next receive may wait: until the kernel clock's slew must end, if
    /// one runs, else [`IDLE_WAKE`].
    fn wait(&self) -> Duration {
        let deadline = match self {
            Self::System(clock) => clock.slew_deadline(),
            _ => None,
        };
        deadline.map_or(IDLE_WAKE, |d| {
            // A zero timeout would mean "block forever" to recv.
            d.saturating_duration_since(Instant::now())
                .clamp(Duration::from_millis(1), IDLE_WAKE)
        })
    }

    /// Ends the kernel clock's slew if it is due.
    fn tend(&self) {
        if let Self::System(clock) = self {
            clock.end_due_slew();
        }
    }
}

/// The drift file, opened before privileges were dropped; rewritten in place.
pub struct DriftFile {
    file: File,
    frequency_ppm: Option<f64>,
    synchronized: bool,
    next_save: Instant,
}

impl DriftFile {
    pub fn new(file: File) -> Self {
        Self {
            file,
            frequency_ppm: None,
            synchronized: false,
            next_save: Instant::now() + DRIFT_SAVE,
        }
    }

    fn note(&mut self, command: &ClockCommand) {
        match *command {
            ClockCommand::SetFrequency { ppm } => self.frequency_ppm = Some(ppm),
            ClockCommand::SetStatus { synchronized, .. } => self.synchronized = synchronized,
            _ => {}
        }
    }

    /// Saves the frequency if the clock is synchronized (and, unless `now`, an hour
    /// has passed since the last save).
    fn save(&mut self, now: bool) {
        let (Some(ppm), true) = (self.frequency_ppm, self.synchronized) else {
            return;
        };
        if !now && Instant::now() < self.next_save {
            return;
        }
        self.next_save = Instant::now() + DRIFT_SAVE;
        let text = format!("{ppm:.6}\n");
        let written = self
            .file
            .write_all_at(text.as_bytes(), 0)
            .and_then(|()| self.file.set_len(text.len() as u64))
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            tracing::warn!("cannot save the drift file: {e}");
        }
    }
}

/// The policy record's length, bytes. Always written whole at offset 0, so that once
/// root has written it at this size (before the split) a rewrite needs no new blocks:
/// a full filesystem cannot make it fail.
pub const RECORD_LEN: usize = 128;

/// The policy's per-boot state, kept in a root-only file the clock process opened
/// before dropping privileges: `BOOT_ID STEPPED STARTUP_OVER`, padded with spaces to
/// [`RECORD_LEN`] bytes (the last one a newline). Older versions wrote the same fields
/// unpadded; [`Self::load`] reads both and [`Self::prepare`] rewrites the old form.
pub struct PolicyRecord {
    file: File,
    boot_id: String,
}

impl PolicyRecord {
    pub fn new(file: File, boot_id: String) -> Self {
        Self { file, boot_id }
    }

    /// What an earlier clock process of this boot left: nothing after a reboot or on
    /// a new file; a record that cannot be read counts as "no steps left this boot".
    pub fn load(&self) -> PolicyState {
        let mut text = String::new();
        if self.read(&mut text).is_err() {
            return PolicyState::spent();
        }
        let Some((boot_id, rest)) = text.trim().split_once(' ') else {
            return if text.trim().is_empty() {
                PolicyState::default()
            } else {
                tracing::warn!("the policy record is unreadable; no steps this boot");
                PolicyState::spent()
            };
        };
        if boot_id != self.boot_id {
            return PolicyState::default();
        }
        PolicyState::decode(rest).unwrap_or_else(|| {
            tracing::warn!("the policy record is unreadable; no steps this boot");
            PolicyState::spent()
        })
    }

    fn read(&self, text: &mut String) -> io::Result<()> {
        let mut bytes = Vec::with_capacity(RECORD_LEN);
        let mut offset = 0u64;
        let mut chunk = [0u8; RECORD_LEN];
        // From offset 0 whatever the file position; more than a record is not a record.
        while bytes.len() <= RECORD_LEN {
            let n = self.file.read_at(&mut chunk, offset)?;
            if n == 0 {
                break;
            }
            bytes.extend_from_slice(chunk.get(..n).unwrap_or_default());
            offset += n as u64;
        }
        *text =
            String::from_utf8(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        Ok(())
    }

    /// Root, before the split: writes `state` as a full-length record (migrating an
    /// unpadded one) and syncs it, so that the file holds its blocks from now on.
    pub fn prepare(&self, state: &PolicyState) -> io::Result<()> {
        self.save(state)?;
        self.file.set_len(RECORD_LEN as u64)?;
        self.file.sync_all()
    }

    /// Rewrites the record in place (one `pwrite` of [`RECORD_LEN`] bytes at offset 0)
    /// and waits until it is on disk.
    pub fn save(&self, state: &PolicyState) -> io::Result<()> {
        let mut record = format!("{} {}", self.boot_id, state.encode()).into_bytes();
        if record.len() >= RECORD_LEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the policy record does not fit its fixed length",
            ));
        }
        record.resize(RECORD_LEN - 1, b' ');
        record.push(b'\n');
        self.file.write_all_at(&record, 0)?;
        self.file.sync_data()
    }
}

/// Writes `after` (the state a command will leave, if it changes it) to `record`
/// before the command is applied; a record that cannot be written refuses the command.
fn record_first(record: Option<&PolicyRecord>, after: Option<PolicyState>) -> Result<(), Refusal> {
    match (record, after) {
        (Some(record), Some(state)) => record.save(&state).map_err(|e| {
            // Logged as a refusal, within the refusal log's rate limit.
            tracing::debug!("cannot write the policy record: {e}");
            Refusal::NotRecorded
        }),
        _ => Ok(()),
    }
}

/// Why the loop ended badly.
#[derive(Debug, thiserror::Error)]
pub enum Fatal {
    #[error("malformed frame from the engine: {0}")]
    Malformed(#[from] ipc::FrameError),
    #[error("an empty frame from the engine")]
    Empty,
    #[error("IPC: {0}")]
    Io(#[from] io::Error),
}

/// Whether a zero-length read was the engine closing its end (`true`) or an empty
/// frame (`false`): after a close every read returns 0 at once; after an empty frame
/// the next one waits.
fn closed(link: &UnixDatagram, buffer: &mut [u8]) -> io::Result<bool> {
    link.set_read_timeout(Some(Duration::from_millis(50)))?;
    let result = link.recv(buffer);
    link.set_read_timeout(Some(IDLE_WAKE))?;
    match result {
        Ok(0) => Ok(true),
        Ok(_) => Ok(false),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Serves the engine on `link` until it closes its end (`Ok`) or sends something
/// malformed (`Err`). A command that changes the policy's per-boot state (a step, a
/// leap second, the first slew) is recorded in `record` (if any), on disk, *before*
/// the clock is touched, and refused if it cannot be: no crash, restart or full disk
/// can then leave a step applied but forgotten. (A command the clock then fails stays
/// recorded until the next save: the record errs towards "more was stepped".)
pub fn serve(
    link: &UnixDatagram,
    clock: &HeldClock,
    policy: &mut Policy,
    record: Option<&PolicyRecord>,
    mut drift: Option<&mut DriftFile>,
) -> Result<(), Fatal> {
    link.set_read_timeout(Some(IDLE_WAKE))?;
    let started = Instant::now();
    let mut buffer = [0u8; RECEIVE_BUFFER];
    let mut refusal_log = crate::util::LogLimit::new(REFUSAL_LOG_INTERVAL);
    loop {
        // A slew ends on time however long the engine stays silent.
        link.set_read_timeout(Some(clock.wait()))?;
        let len = match link.recv(&mut buffer) {
            Ok(0) if closed(link, &mut buffer)? => break,
            Ok(0) => return Err(Fatal::Empty),
            Ok(len) => len,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                clock.tend();
                if let Some(d) = drift.as_deref_mut() {
                    d.save(false);
                }
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        let (id, command) = ipc::decode_command(buffer.get(..len).unwrap_or_default())?;
        // A steady stream of commands must not keep a due slew running either.
        clock.tend();
        let now = started.elapsed().as_secs_f64();
        let unix_time = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let allowed = policy
            .check(&command, now, unix_time)
            .and_then(|()| record_first(record, policy.state_after(&command)));
        let reply = match allowed {
            Err(why) => {
                // A compromised engine may send refusable commands without end.
                if let Some(more) = refusal_log.allow() {
                    tracing::warn!(
                        "refused {command}: {why} ({more} more refused since the last report)"
                    );
                }
                Reply::Refused(why)
            }
            Ok(()) => match clock.apply(command) {
                Ok(at) => {
                    // Steps and leap seconds are rare and matter; the rest is routine.
                    if matches!(
                        command,
                        ClockCommand::Step { .. } | ClockCommand::SetLeap(_)
                    ) {
                        tracing::info!("applied {command}");
                    } else {
                        tracing::debug!("applied {command}");
                    }
                    policy.applied(&command);
                    Reply::Applied { at }
                }
                Err(e) => {
                    tracing::warn!("the clock refused {command}: {e}");
                    Reply::Refused(Refusal::System)
                }
            },
        };
        link.send(&ipc::encode_reply(id, &reply))?;
        if let (Reply::Applied { .. }, Some(d)) = (reply, drift.as_deref_mut()) {
            d.note(&command);
            d.save(false);
        }
    }
    if let Some(d) = drift {
        d.save(true);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::policy::PolicyConfig;
    use super::*;
    use crate::wire::Leap;

    fn pair() -> (UnixDatagram, UnixDatagram) {
        let (a, b) = crate::sys::seqpacket_pair().unwrap();
        (UnixDatagram::from(a), UnixDatagram::from(b))
    }

    fn policy() -> Policy {
        Policy::new(PolicyConfig::default(), 0.0)
    }

    /// Runs the loop on a thread, sends `frames`, and returns the replies and how the
    /// loop ended, with the clock it held.
    fn exchange(frames: Vec<Vec<u8>>) -> (Vec<Reply>, Result<(), String>, HeldClock) {
        let clock = HeldClock::Software(SoftwareClock::simulated(0.0, 0.0));
        exchange_with(frames, clock, None)
    }

    /// [`exchange`] with a given clock and policy record.
    fn exchange_with(
        frames: Vec<Vec<u8>>,
        clock: HeldClock,
        record: Option<PolicyRecord>,
    ) -> (Vec<Reply>, Result<(), String>, HeldClock) {
        let (engine, clock_end) = pair();
        let handle = std::thread::spawn(move || {
            let result = serve(&clock_end, &clock, &mut policy(), record.as_ref(), None)
                .map_err(|e| e.to_string());
            (result, clock)
        });
        let mut replies = Vec::new();
        for frame in frames {
            engine.send(&frame).unwrap();
            let mut buf = [0u8; 64];
            match engine.recv(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => replies.push(ipc::decode_reply(&buf[..n]).unwrap().1),
            }
        }
        drop(engine);
        let (result, clock) = handle.join().unwrap();
        (replies, result, clock)
    }

    fn status(clock: &HeldClock) -> crate::clock::ClockStatus {
        match clock {
            HeldClock::Software(c) => c.status(),
            _ => unreachable!(),
        }
    }

    #[test]
    fn commands_within_policy_are_applied_and_an_hour_step_is_refused() {
        let frames = [
            ClockCommand::SetFrequency { ppm: 12.0 },
            ClockCommand::Step { offset: 3600.0 },
            ClockCommand::Step { offset: 0.25 },
            ClockCommand::Step { offset: 3600.0 },
        ]
        .iter()
        .map(|c| ipc::encode_command(1, c).to_vec())
        .collect();
        let (replies, result, clock) = exchange(frames);
        assert!(result.is_ok());
        assert!(matches!(replies[0], Reply::Applied { .. }));
        assert_eq!(replies[1], Reply::Refused(Refusal::StepTooLarge));
        assert!(matches!(replies[2], Reply::Applied { .. }));
        assert_eq!(replies[3], Reply::Refused(Refusal::StartupOver));
        let s = status(&clock);
        assert_eq!((s.steps, s.frequency_ppm), (1, 12.0));
    }

    /// ADVERSARIAL 27: short, long, unknown, NaN, out of range: the loop ends with an
    /// error at the first one, and nothing in that frame (or after it) is applied.
    #[test]
    fn a_malformed_frame_ends_the_loop_and_nothing_is_applied() {
        let step = ipc::encode_command(1, &ClockCommand::Step { offset: 0.5 });
        let mut unknown = step;
        unknown[0] = 42;
        let mut nan = step;
        nan[8..16].copy_from_slice(&f64::NAN.to_be_bytes());
        let mut bad_leap = ipc::encode_command(1, &ClockCommand::SetLeap(Leap::NoWarning));
        bad_leap[1] = 7;
        let far = ipc::encode_command(1, &ClockCommand::SetFrequency { ppm: 2e6 });
        for hostile in [
            step[..31].to_vec(),
            [step.as_slice(), &[0]].concat(),
            unknown.to_vec(),
            nan.to_vec(),
            bad_leap.to_vec(),
            far.to_vec(),
            vec![0xff; 4096],
            Vec::new(),
        ] {
            let (replies, result, clock) = exchange(vec![hostile.clone(), step.to_vec()]);
            assert!(replies.is_empty(), "{hostile:?} got {replies:?}");
            let error = result.unwrap_err();
            assert!(
                error.contains("malformed") || error.contains("empty"),
                "{error}"
            );
            assert_eq!(status(&clock).steps, 0);
        }
    }

    const BOOT: &str = "0b8f5a52-3c4e-4d2a-9d7e-1f2a3b4c5d6e";

    fn frames(commands: &[ClockCommand]) -> Vec<Vec<u8>> {
        commands
            .iter()
            .map(|c| ipc::encode_command(1, c).to_vec())
            .collect()
    }

    /// What a record file says, read as the next clock process would.
    fn recorded(file: &File) -> PolicyState {
        PolicyRecord::new(file.try_clone().unwrap(), BOOT.into()).load()
    }

    /// The step is on disk before the clock is asked: with a clock that fails it, the
    /// record already counts it (the safe side: a restart gets no start-up step).
    #[test]
    fn a_step_is_recorded_before_the_clock_is_asked() {
        let file = tempfile::tempfile().unwrap();
        let record = PolicyRecord::new(file.try_clone().unwrap(), BOOT.into());
        record.prepare(&PolicyState::default()).unwrap();
        let (replies, result, _) = exchange_with(
            frames(&[ClockCommand::Step { offset: 0.25 }]),
            HeldClock::None,
            Some(record),
        );
        assert_eq!(replies, [Reply::Refused(Refusal::System)]);
        assert!(result.is_ok());
        let state = recorded(&file);
        assert_eq!((state.stepped, state.startup_over), (0.25, true));
    }

    /// A record that cannot be written (a full disk; here a read-only descriptor)
    /// refuses the step, with an ordinary refusal: nothing is applied and the loop
    /// carries on with commands that change no per-boot state.
    #[test]
    fn a_step_that_cannot_be_recorded_is_refused_and_the_loop_carries_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clock-policy");
        std::fs::write(&path, "").unwrap();
        let read_only = File::open(&path).unwrap();
        let (replies, result, clock) = exchange_with(
            frames(&[
                ClockCommand::Step { offset: 0.25 },
                ClockCommand::SetFrequency { ppm: 7.0 },
            ]),
            HeldClock::Software(SoftwareClock::simulated(0.0, 0.0)),
            Some(PolicyRecord::new(read_only, BOOT.into())),
        );
        assert_eq!(replies.len(), 2, "{replies:?} {result:?}");
        assert_eq!(replies[0], Reply::Refused(Refusal::NotRecorded));
        assert!(matches!(replies[1], Reply::Applied { .. }));
        assert!(result.is_ok(), "{result:?}");
        let s = status(&clock);
        assert_eq!((s.steps, s.frequency_ppm), (0, 7.0));
    }

    /// The record is one fixed-length write at offset 0, so a rewrite needs no new
    /// blocks; the unpadded form of earlier versions is read and rewritten.
    #[test]
    fn the_record_has_a_fixed_length_and_the_old_form_is_migrated() {
        let file = tempfile::tempfile().unwrap();
        file.write_all_at(format!("{BOOT} 900 1\n").as_bytes(), 0)
            .unwrap();
        let record = PolicyRecord::new(file.try_clone().unwrap(), BOOT.into());
        let old = record.load();
        assert_eq!((old.stepped, old.startup_over), (900.0, true));
        record.prepare(&old).unwrap();
        assert_eq!(file.metadata().unwrap().len(), RECORD_LEN as u64);
        assert_eq!(recorded(&file), old);
        let huge = PolicyState {
            stepped: 1e300,
            startup_over: true,
        };
        record.save(&huge).unwrap();
        assert_eq!(file.metadata().unwrap().len(), RECORD_LEN as u64);
        assert_eq!(recorded(&file), huge);
        // Another boot's record means nothing was stepped in this one.
        let other = PolicyRecord::new(file.try_clone().unwrap(), "another-boot".into());
        assert_eq!(other.load(), PolicyState::default());
    }
}

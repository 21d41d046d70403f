//! Reference clocks' I/O: the SHM segments polled once a second, the SOCK sockets
//! read as datagrams arrive, PHCs read and PPS devices asked for their latest edge once
//! a second. Each reading is parsed by the pure parsers of [`crate::refclock`] and
//! handed, with the time it was read, to the driver loop, which gives it to the
//! coordinator (a PPS edge after [`pulse_sample`] with its lock): the tasks here decide
//! nothing.
//!
//! Who opens what (see the README's "master role" section):
//! * SHM segments are attached by whichever process runs the engine, *before* it
//!   enters the sandbox (the privsep engine starts as root): units 0 and 1 are root's
//!   (mode 0600) by convention, and an attachment outlives the change of user and the
//!   chroot, so every unit works the same way and all parsing stays in the engine. A
//!   missing segment is created with the conventional mode (0600 for units 0 and 1,
//!   0666 for the others), as ntpd and chronyd do, so gpsd may start later.
//! * SOCK sockets are created by the root supervisor at the configured path (outside
//!   the chroot), mode 0660 and group `gpsd` when that group exists, and passed to the
//!   engine as descriptors (`--refclock-fds`).
//! * PHC and PPS devices are opened by the privileged process before the drop and
//!   kept: like SHM, by the engine while it is still root, in `prepare`. The
//!   descriptors stay open for the life of the process and are never reopened (a
//!   device's node is root's, and outside the chroot). The PPS edge is chosen then
//!   too (`PPS_SETPARAMS` needs `CAP_SYS_TIME`).

use std::os::fd::BorrowedFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::clock::Clock;
use crate::coordinator::AssociationId;
use crate::refclock::pps::{LockEstimate, PpsCombiner};
use crate::refclock::{RefclockDrop, RefclockOptions, RefclockSample, phc, shm, sock};
use crate::sys::{PhcReader, PpsFetch, ShmOwner, ShmSegment};
use crate::wire::NtpTimestamp;

/// How often an SHM segment is looked at (gpsd writes once a second).
pub const SHM_READ_INTERVAL: Duration = Duration::from_secs(1);
/// How often a PHC is read (chrony's default, dpoll 0).
pub const PHC_READ_INTERVAL: Duration = Duration::from_secs(1);
/// Bracketed reads per PHC reading, the fastest of which is used (chrony's 10).
const PHC_SAMPLES: u32 = 10;
/// How often a PPS device is asked for its latest edge, without waiting (as chrony
/// does): once per pulse, so each is seen once, and a poll never blocks the runtime.
pub const PPS_FETCH_INTERVAL: Duration = Duration::from_secs(1);
/// Bytes read per datagram: more than a sample, so a longer one shows as too long.
const DATAGRAM_BUFFER: usize = 2 * sock::SAMPLE_LEN;
/// The group a SOCK socket is given, when it exists: the sender's.
const SOCK_GROUP: &str = "gpsd";
const SOCK_MODE: u32 = 0o660;

/// A configured reference clock, checked and ready to open.
pub struct RefclockSpec {
    /// `refclock GPS shm:2`.
    pub name: String,
    pub kind: crate::refclock::DriverKind,
    pub options: RefclockOptions,
    /// SHM: the attached segment (see [`attach_shm`]).
    pub segment: Option<ShmSegment>,
    /// PHC, PPS: the open device (see [`open_devices`]).
    pub device: Option<BorrowedFd<'static>>,
    pub phc: phc::PhcSettings,
    pub pps: crate::refclock::pps::PpsSettings,
    /// PPS: the refid of the refclock that names the second (`None`: the system clock).
    pub lock: Option<[u8; 4]>,
}

/// One reading, as the tasks here hand it to the driver loop.
pub struct Reading {
    pub id: AssociationId,
    pub what: Read,
    pub at: Instant,
}

/// What a reading gave.
pub enum Read {
    /// A sample, or why there is none.
    Sample(Result<RefclockSample, RefclockDrop>),
    /// A PPS device's latest edges: the driver loop, which knows the lock, judges them.
    Pulse(Pulse),
}

/// One `PPS_FETCH`, with the clock's and the system clock's readings just after it.
#[derive(Debug, Clone, Copy)]
pub struct Pulse {
    pub fetched: PpsFetch,
    pub local: NtpTimestamp,
    pub system: NtpTimestamp,
}

/// The mode a missing SHM segment is created with: 0600 for units 0 and 1, 0666 above.
pub fn shm_mode(unit: u32) -> u32 {
    if unit < shm::FIRST_PUBLIC_UNIT {
        0o600
    } else {
        0o666
    }
}

/// Attaches the segment of every SHM refclock in `specs` (creating a missing one).
/// With `check_owners`, a root-only unit (0 or 1) that someone else made, or that
/// others may write, is refused: whoever can write it sets the time we serve.
pub fn attach_shm(specs: &mut [RefclockSpec], check_owners: bool) -> Result<(), String> {
    for spec in specs {
        let crate::refclock::DriverKind::Shm { unit } = spec.kind else {
            continue;
        };
        let key = i32::try_from(unit)
            .ok()
            .and_then(|u| shm::KEY_BASE.checked_add(u))
            .ok_or_else(|| format!("{}: unit {unit} out of range", spec.name))?;
        let segment = ShmSegment::attach(key, shm::SEGMENT_LEN, shm_mode(unit), true)
            .map_err(|e| format!("{}: cannot attach SHM key {key:#x}: {e}", spec.name))?;
        if check_owners && unit < shm::FIRST_PUBLIC_UNIT {
            let owner = segment
                .owner()
                .map_err(|e| format!("{}: SHM key {key:#x}: {e}", spec.name))?;
            check_private_owner(key, owner, crate::sys::effective_uid())
                .map_err(|why| format!("{}: SHM key {key:#x} {why}", spec.name))?;
        }
        spec.segment = Some(segment);
    }
    Ok(())
}

/// Whether a root-only unit's segment is safe to take time from when running as
/// `us`: made and owned by root or by us, and writable by no one else.
fn check_private_owner(key: i32, owner: ShmOwner, us: u32) -> Result<(), String> {
    let trusted = |uid: u32| uid == 0 || uid == us;
    if !trusted(owner.uid) || !trusted(owner.creator_uid) {
        return Err(format!(
            "was made by uid {} and is owned by uid {}, not root: remove it (ipcrm -M {key:#x}) \
             and restart its writer as root, or use unit 2 or above",
            owner.creator_uid, owner.uid
        ));
    }
    if owner.mode & 0o022 != 0 {
        return Err(format!(
            "has mode {:o}: others may write it; remove it (ipcrm -M {key:#x}) and restart its writer",
            owner.mode
        ));
    }
    Ok(())
}

/// Opens the device of every PHC and PPS refclock in `specs`, and makes a PPS device
/// capture the configured edge. The descriptor is kept for the life of the process:
/// the device is never reopened (only root could), and under clknetsim closing one of
/// its fake descriptors trips std's I/O-safety check.
pub fn open_devices(specs: &mut [RefclockSpec]) -> Result<(), String> {
    for spec in specs {
        let (crate::refclock::DriverKind::Phc { device }
        | crate::refclock::DriverKind::Pps { device }) = &spec.kind
        else {
            continue;
        };
        let fail = |e: std::io::Error| format!("{}: {}: {e}", spec.name, device.display());
        let fd = crate::sys::open_device(device).map_err(fail)?;
        let fd: BorrowedFd<'static> = std::os::fd::AsFd::as_fd(Box::leak(Box::new(fd)));
        if matches!(spec.kind, crate::refclock::DriverKind::Pps { .. }) {
            crate::sys::pps_capture(fd, spec.pps.edge).map_err(fail)?;
        }
        spec.device = Some(fd);
    }
    Ok(())
}

/// Creates the SOCK socket at `path`: a stale socket from an earlier run is replaced,
/// anything else there is refused.
pub fn bind_sock(path: &Path) -> Result<UnixDatagram, String> {
    let fail = |e: String| format!("refclock socket {}: {e}", path.display());
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(fail("exists and is not a socket; not removing it".into()));
        }
        let probe = UnixDatagram::unbound().map_err(|e| fail(e.to_string()))?;
        if probe.connect(path).is_ok() {
            return Err(fail("another process is bound to it".into()));
        }
        std::fs::remove_file(path).map_err(|e| fail(format!("removing the stale socket: {e}")))?;
    }
    let previous = crate::sys::set_umask(0o177);
    let bound = UnixDatagram::bind(path);
    crate::sys::set_umask(previous);
    let socket = bound.map_err(|e| fail(e.to_string()))?;
    if crate::sys::effective_uid() == 0
        && let Ok(Some(gid)) = crate::sys::lookup_group(SOCK_GROUP)
    {
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(|e| fail(e.to_string()))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCK_MODE))
        .map_err(|e| fail(e.to_string()))?;
    socket
        .set_nonblocking(true)
        .map_err(|e| fail(e.to_string()))?;
    Ok(socket)
}

/// The clock's reading and the system clock's, taken together: devices state their
/// times on the system clock (see [`crate::refclock::sample_from`]).
fn clocks(clock: &dyn Clock) -> (NtpTimestamp, NtpTimestamp) {
    let local = clock.now();
    (local, NtpTimestamp::from_system_time(SystemTime::now()))
}

/// Reads `segment` every [`SHM_READ_INTERVAL`] until the loop stops listening.
pub fn spawn_shm(
    id: AssociationId,
    segment: ShmSegment,
    clock: Arc<dyn Clock>,
    tx: mpsc::Sender<Reading>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(SHM_READ_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let Some(result) = read_shm(&segment, &*clock) else {
                continue;
            };
            let reading = Reading {
                id,
                what: Read::Sample(result),
                at: Instant::now(),
            };
            if tx.send(reading).await.is_err() {
                return;
            }
        }
    })
}

/// One look at the segment: `None` if there is nothing new. `valid` is cleared after
/// a complete read (good or garbage), as the protocol asks; a torn read is left for
/// the next look, when the writer has finished.
pub fn read_shm(
    segment: &ShmSegment,
    clock: &dyn Clock,
) -> Option<Result<RefclockSample, RefclockDrop>> {
    let (bytes, count_after) = segment.snapshot::<{ shm::SEGMENT_LEN }>(shm::COUNT);
    let (local, system) = clocks(clock);
    let parsed = shm::parse(&bytes, count_after);
    if !matches!(parsed, Ok(None) | Err(shm::ShmDrop::Torn)) {
        segment.write(shm::VALID, &0i32.to_ne_bytes());
    }
    match parsed {
        Ok(None) => None,
        Ok(Some(reading)) => {
            if let Err(why) = crate::refclock::check_fresh(reading.receive, system) {
                return Some(Err(why));
            }
            let precision = 2f64.powi(i32::from(reading.precision));
            Some(Ok(crate::refclock::sample_from(
                reading.offset,
                reading.leap,
                precision,
                local,
                system,
            )))
        }
        Err(why) => Some(Err(why.into())),
    }
}

/// Reads the PHC `fd` every [`PHC_READ_INTERVAL`] until the loop stops listening. The
/// offset ioctls return at once, so they run on the runtime like the SHM reads.
pub fn spawn_phc(
    id: AssociationId,
    fd: BorrowedFd<'static>,
    settings: phc::PhcSettings,
    clock: Arc<dyn Clock>,
    tx: mpsc::Sender<Reading>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut reader = PhcReader::new(PHC_SAMPLES);
        let mut ticks = tokio::time::interval(PHC_READ_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let result = read_phc(&mut reader, fd, &settings, &*clock);
            let what = Read::Sample(result);
            let at = Instant::now();
            if tx.send(Reading { id, what, at }).await.is_err() {
                return;
            }
        }
    })
}

/// One PHC reading as a sample of the disciplined clock.
fn read_phc(
    reader: &mut PhcReader,
    fd: BorrowedFd<'_>,
    settings: &phc::PhcSettings,
    clock: &dyn Clock,
) -> Result<RefclockSample, RefclockDrop> {
    let readings = reader
        .read(fd)
        .map_err(|e| RefclockDrop::Device(e.kind()))?;
    let (local, system) = clocks(clock);
    let sample = phc::sample_from_readings(&readings, settings)?;
    Ok(to_disciplined(sample, local, system))
}

/// A sample against the system clock, moved to the disciplined clock: `local` minus
/// `system`, read together, is how far the disciplined clock is ahead.
fn to_disciplined(
    sample: RefclockSample,
    local: NtpTimestamp,
    system: NtpTimestamp,
) -> RefclockSample {
    let ahead = local.seconds_since(system);
    RefclockSample {
        local: sample.local.add_seconds(ahead),
        offset: sample.offset - ahead,
        ..sample
    }
}

/// Asks the PPS device `fd` for its latest edges every [`PPS_FETCH_INTERVAL`] until the
/// loop stops listening.
pub fn spawn_pps(
    id: AssociationId,
    fd: BorrowedFd<'static>,
    clock: Arc<dyn Clock>,
    tx: mpsc::Sender<Reading>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(PPS_FETCH_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let what = match crate::sys::pps_fetch(fd, Duration::ZERO) {
                Ok(Some(fetched)) => {
                    let (local, system) = clocks(&*clock);
                    Read::Pulse(Pulse {
                        fetched,
                        local,
                        system,
                    })
                }
                // Interrupted: the next tick asks again.
                Ok(None) => continue,
                Err(e) => Read::Sample(Err(RefclockDrop::Device(e.kind()))),
            };
            let at = Instant::now();
            if tx.send(Reading { id, what, at }).await.is_err() {
                return;
            }
        }
    })
}

/// One PPS fetch judged by `combiner` with the lock source's estimate (both against
/// the disciplined clock): the edges are on the system clock, so the lock is moved
/// there for the combiner, and the sample back.
pub fn pulse_sample(
    combiner: &mut PpsCombiner,
    pulse: &Pulse,
    lock: Option<LockEstimate>,
) -> Result<RefclockSample, RefclockDrop> {
    let ahead = pulse.local.seconds_since(pulse.system);
    let lock = lock.map(|lock| LockEstimate {
        offset: lock.offset + ahead,
        when: lock.when.add_seconds(-ahead),
    });
    let sample = combiner.handle_edge(&pulse.fetched, lock)?;
    Ok(to_disciplined(sample, pulse.local, pulse.system))
}

/// Reads `socket` until the loop stops listening.
pub fn spawn_sock(
    id: AssociationId,
    socket: UnixDatagram,
    clock: Arc<dyn Clock>,
    tx: mpsc::Sender<Reading>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    socket.set_nonblocking(true)?;
    let socket = tokio::net::UnixDatagram::from_std(socket)?;
    Ok(tokio::spawn(async move {
        let mut buf = [0u8; DATAGRAM_BUFFER];
        loop {
            let len = match socket.recv(&mut buf).await {
                Ok(len) => len,
                // Nothing a datagram sender can cause: the refclock goes silent, and
                // unreachable, rather than spin.
                Err(e) => {
                    tracing::warn!("refclock socket: {e}; no longer read");
                    return;
                }
            };
            let (local, system) = clocks(&*clock);
            let at = Instant::now();
            let bytes = buf.get(..len).unwrap_or_default();
            let result = sock::parse(bytes)
                .map_err(RefclockDrop::from)
                .and_then(|reading| {
                    crate::refclock::check_fresh(reading.receive, system)?;
                    Ok(crate::refclock::sample_from(
                        reading.offset,
                        reading.leap,
                        0.0,
                        local,
                        system,
                    ))
                });
            let what = Read::Sample(result);
            if tx.send(Reading { id, what, at }).await.is_err() {
                return;
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SoftwareClock;

    /// A segment private to this test process, removed at the end.
    struct Private(i32);

    impl Drop for Private {
        fn drop(&mut self) {
            let _ = ShmSegment::remove(self.0);
        }
    }

    #[test]
    fn root_only_units_must_be_made_and_owned_by_root_or_us_and_kept_private() {
        let owner = |uid, creator_uid, mode| ShmOwner {
            uid,
            creator_uid,
            mode,
        };
        assert!(check_private_owner(1, owner(0, 0, 0o600), 0).is_ok());
        assert!(
            check_private_owner(1, owner(0, 0, 0o644), 0).is_ok(),
            "others may read"
        );
        assert!(
            check_private_owner(1, owner(1000, 1000, 0o600), 1000).is_ok(),
            "ours"
        );
        let theirs = check_private_owner(0x4e54_5030, owner(1000, 1000, 0o600), 0);
        assert!(theirs.unwrap_err().contains("ipcrm -M 0x4e545030"));
        assert!(
            check_private_owner(1, owner(0, 1000, 0o600), 0).is_err(),
            "given away"
        );
        assert!(check_private_owner(1, owner(0, 0, 0o666), 0).is_err());
        assert!(check_private_owner(1, owner(0, 0, 0o620), 0).is_err());
        // The kernel's view of a segment we make.
        let key = 0x6e75_0000 | (std::process::id() as i32 & 0xffff);
        let _ = ShmSegment::remove(key);
        let _cleanup = Private(key);
        let segment = ShmSegment::attach(key, shm::SEGMENT_LEN, 0o640, true).unwrap();
        let seen = segment.owner().unwrap();
        let us = crate::sys::effective_uid();
        assert_eq!(seen, owner(us, us, 0o640));
        assert!(check_private_owner(key, seen, us).is_ok());
    }

    /// `valid` 0 is nothing; a good sample is read once (valid cleared); garbage is a
    /// drop, and cleared too. The clock is 0.5 s ahead of the system clock.
    #[test]
    fn shm_reads_follow_the_protocol() {
        let key = 0x6e74_0000 | (std::process::id() as i32 & 0xffff);
        let _ = ShmSegment::remove(key);
        let _cleanup = Private(key);
        let segment = ShmSegment::attach(key, shm::SEGMENT_LEN, 0o600, true).unwrap();
        let clock = SoftwareClock::simulated(0.5, 0.0);
        assert!(
            read_shm(&segment, &clock).is_none(),
            "a new segment is all zeros"
        );
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap();
        let time = (now.as_secs() as i64, 0, 0);
        let fields = shm::ShmFields {
            mode: 1,
            count: 3,
            clock: (time.0 + 1, 0, 0),
            receive: time,
            precision: -10,
            valid: 1,
            ..Default::default()
        };
        segment.write(0, &fields.to_bytes());
        let sample = read_shm(&segment, &clock).unwrap().unwrap();
        assert!((sample.offset - 0.5).abs() < 0.05, "{sample:?}");
        assert_eq!(sample.dispersion, 2f64.powi(-10));
        assert!(read_shm(&segment, &clock).is_none(), "valid was cleared");
        segment.write(0, &shm::ShmFields { mode: 9, ..fields }.to_bytes());
        let dropped = read_shm(&segment, &clock).unwrap();
        assert_eq!(dropped, Err(RefclockDrop::Shm(shm::ShmDrop::Mode(9))));
        assert!(
            read_shm(&segment, &clock).is_none(),
            "garbage is cleared too"
        );
        // A sample left by a writer that stalled 20 s ago.
        let stale = shm::ShmFields {
            clock: (time.0 - 19, 0, 0),
            receive: (time.0 - 20, 0, 0),
            ..fields
        };
        segment.write(0, &stale.to_bytes());
        assert_eq!(read_shm(&segment, &clock), Some(Err(RefclockDrop::Stale)));
    }

    /// The driver loop's PPS glue. The system clock reads 0.7 s ahead of the reference
    /// and the disciplined clock 0.25 s ahead of the system clock; the lock (against the
    /// disciplined clock) is 0.05 s off. The first edge only vouches for the next; the
    /// next is a sample of the disciplined clock: -0.95 s at the edge's disciplined time.
    /// Without a lock, or with one 0.45 s off, the pulse is a counted drop.
    #[test]
    fn pulses_are_judged_on_the_system_clock_and_given_on_the_disciplined_one() {
        use crate::refclock::pps::{PpsDrop, PpsSettings};
        use crate::sys::DeviceTime;
        const T0: i64 = 1_800_000_000;
        let pulse = |sequence: u32| {
            let seconds = T0 + i64::from(sequence);
            let system = NtpTimestamp::from_unix(seconds, 900_000_000);
            Pulse {
                fetched: PpsFetch {
                    assert_sequence: sequence,
                    assert: DeviceTime {
                        seconds,
                        nanos: 700_000_000,
                    },
                    ..Default::default()
                },
                local: system.add_seconds(0.25),
                system,
            }
        };
        let lock = |offset: f64, sequence: u32| LockEstimate {
            offset,
            when: pulse(sequence).local,
        };
        let mut combiner = PpsCombiner::new(PpsSettings::default()).unwrap();
        assert_eq!(
            pulse_sample(&mut combiner, &pulse(1), Some(lock(-0.9, 1))),
            Err(RefclockDrop::Pps(PpsDrop::Unconfirmed))
        );
        let sample = pulse_sample(&mut combiner, &pulse(2), Some(lock(-0.9, 2))).unwrap();
        assert!((sample.offset + 0.95).abs() < 1e-6, "{sample:?}");
        let edge = NtpTimestamp::from_unix(T0 + 2, 950_000_000);
        assert!(sample.local.seconds_since(edge).abs() < 1e-6, "{sample:?}");
        assert_eq!(
            pulse_sample(&mut combiner, &pulse(3), None),
            Err(RefclockDrop::Pps(PpsDrop::NoLock))
        );
        assert_eq!(
            pulse_sample(&mut combiner, &pulse(4), Some(lock(-0.5, 4))),
            Err(RefclockDrop::Pps(PpsDrop::FarFromLock))
        );
        assert_eq!(combiner.counters().used, 1);
    }

    /// A socket left by an earlier run is replaced; a file, or a socket someone is
    /// bound to, is refused and left alone.
    #[test]
    fn sock_sockets_replace_only_stale_sockets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gps.sock");
        drop(UnixDatagram::bind(&path).unwrap());
        let socket = bind_sock(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, SOCK_MODE);
        let error = bind_sock(&path).unwrap_err();
        assert!(error.contains("another process is bound"), "{error}");
        drop(socket);
        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        let error = bind_sock(&file).unwrap_err();
        assert!(error.contains("not a socket"), "{error}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "x");
    }
}

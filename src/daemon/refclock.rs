//! Reference clocks' I/O: the SHM segments polled once a second, and the SOCK sockets
//! read as datagrams arrive. Each reading is parsed by the pure parsers of
//! [`crate::refclock`] and handed, with the time it was read, to the driver loop,
//! which gives it to the coordinator: the tasks here decide nothing.
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

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::clock::Clock;
use crate::coordinator::AssociationId;
use crate::refclock::{RefclockDrop, RefclockOptions, RefclockSample, shm, sock};
use crate::sys::ShmSegment;
use crate::wire::NtpTimestamp;

/// How often an SHM segment is looked at (gpsd writes once a second).
pub const SHM_READ_INTERVAL: Duration = Duration::from_secs(1);
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
}

/// One reading, as the tasks here hand it to the driver loop.
pub struct Reading {
    pub id: AssociationId,
    pub result: Result<RefclockSample, RefclockDrop>,
    pub at: Instant,
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
pub fn attach_shm(specs: &mut [RefclockSpec]) -> Result<(), String> {
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
        spec.segment = Some(segment);
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
                result,
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
                .map(|reading| {
                    crate::refclock::sample_from(reading.offset, reading.leap, 0.0, local, system)
                })
                .map_err(RefclockDrop::from);
            if tx.send(Reading { id, result, at }).await.is_err() {
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

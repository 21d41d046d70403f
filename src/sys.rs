//! The one place for system calls: the crate denies `unsafe` everywhere else, so every
//! syscall gets a safe, typed wrapper here and the unsafe surface stays small enough to
//! audit in one sitting.
//!
//! Today that is the Linux kernel clock, `adjtimex(2)`. Reads ([`adjtimex_read`],
//! [`pending_singleshot_us`]) need no privilege and never change anything. Changes go
//! through [`adjtimex_apply`], which takes a [`KernelClockChange`] rather than raw mode
//! bits, so a caller cannot ask for a mode combination nobody reviewed (the kernel PLL,
//! `ADJ_TAI`, ...). `ADJ_TICK` is allowed only together with a frequency, within the
//! kernel's ±10 %, for slews faster than the frequency's ±500 ppm.

#![allow(unsafe_code)]

use std::io;
use std::sync::Mutex;

/// `ADJ_OFFSET_SINGLESHOT` slews by at most this much, µs. The kernel itself takes any
/// `long`, but at its fixed 500 ppm a larger offset takes over 17 minutes to remove: an
/// offset that big should be stepped instead.
pub const MAX_SINGLESHOT_US: i64 = 512_000;

/// The kernel's frequency limit, ppm (`MAXFREQ`, 500 ppm; scaled: `500 << 16`).
pub const MAX_FREQUENCY_PPM: f64 = 500.0;

/// The kernel clamps `maxerror` (and, since 5.x, `esterror`) to `NTP_PHASE_LIMIT`,
/// 16 s in µs; we clamp first so that what we ask for is what we get on any kernel.
pub const MAX_ERROR_US: i64 = 16_000_000;

/// Clock ticks per second as `timex.tick` counts them (`USER_HZ`, `_SC_CLK_TCK`): one
/// µs of tick is `1e6 / nominal tick` ppm, 100 ppm at the usual 100.
pub fn clock_ticks_per_second() -> i64 {
    // SAFETY: sysconf takes an integer, touches no memory and cannot fail for
    // _SC_CLK_TCK (it returns -1 only for an unknown name).
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    // 100 is what every Linux target uses; a nonsensical answer falls back to it.
    let hz = wide(hz);
    if (1..=100_000).contains(&hz) { hz } else { 100 }
}

/// The tick length (µs) at which the clock runs at its nominal rate: the kernel's
/// `TICK_USEC`, `(1e6 + hz / 2) / hz`.
pub fn nominal_tick_us(hz: i64) -> i64 {
    (1_000_000 + hz / 2) / hz.max(1)
}

/// The scale of `timex.freq`: ppm with a 16-bit binary fraction.
const FREQ_SCALE: f64 = 65536.0;

/// Serialises our read-modify-write of the status word, so two threads setting
/// different bits cannot lose one another's change. (Another process can still race
/// us; the kernel offers no atomic bit update.)
static STATUS_LOCK: Mutex<()> = Mutex::new(());

/// The clock state `adjtimex` returns (`TIME_*`), mostly about leap seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockState {
    /// `TIME_OK`: no leap second pending.
    Ok,
    /// `TIME_INS`: a leap second will be inserted at the end of the UTC day.
    Insert,
    /// `TIME_DEL`: a leap second will be deleted at the end of the UTC day.
    Delete,
    /// `TIME_OOP`: a leap second is being inserted now.
    InProgress,
    /// `TIME_WAIT`: a leap second has just happened.
    Wait,
    /// `TIME_ERROR`: the clock is not synchronized (`STA_UNSYNC` and friends).
    Error,
}

impl ClockState {
    /// The kernel only returns 0–5; anything else is reported as `Error`, the state
    /// that promises least.
    fn from_raw(raw: libc::c_int) -> Self {
        match raw {
            libc::TIME_OK => Self::Ok,
            libc::TIME_INS => Self::Insert,
            libc::TIME_DEL => Self::Delete,
            libc::TIME_OOP => Self::InProgress,
            libc::TIME_WAIT => Self::Wait,
            _ => Self::Error,
        }
    }
}

/// The status bits callers may change. Built only from the constants below, so
/// nothing else (PPS, `STA_FREQHOLD`, ...) can be switched by accident.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatusFlags(libc::c_int);

impl StatusFlags {
    pub const NONE: Self = Self(0);
    /// The kernel PLL. We steer the frequency ourselves, so we switch it off.
    pub const PLL: Self = Self(libc::STA_PLL);
    /// Insert a leap second at the end of the UTC day.
    pub const INS: Self = Self(libc::STA_INS);
    /// Delete a leap second at the end of the UTC day.
    pub const DEL: Self = Self(libc::STA_DEL);
    /// The clock is not synchronized.
    pub const UNSYNC: Self = Self(libc::STA_UNSYNC);

    #[must_use]
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// The raw bits, for comparing with [`KernelClock::status`].
    pub const fn bits(self) -> i32 {
        self.0
    }
}

/// What the kernel says about its clock, in plain numbers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KernelClock {
    /// The PLL phase offset: ns if `STA_NANO` is set, else µs. After a [`KernelClockChange::SlewOnce`] it is instead
    /// the singleshot offset that was still pending, µs.
    pub offset: i64,
    /// The frequency correction as the kernel keeps it: ppm × 65536.
    pub freq: i64,
    /// The same, ppm.
    pub freq_ppm: f64,
    /// Maximum error, µs.
    pub maxerror: i64,
    /// Estimated error, µs.
    pub esterror: i64,
    /// The `STA_*` bits, read-only ones included.
    pub status: i32,
    /// µs per clock tick.
    pub tick: i64,
    /// The time the kernel read (UTC, Unix seconds), seconds part.
    pub time_secs: i64,
    /// The time the kernel read, nanoseconds past `time_secs`.
    pub time_nanos: u32,
    pub state: ClockState,
}

impl KernelClock {
    /// Whether all of `flags` are set.
    pub fn has(&self, flags: StatusFlags) -> bool {
        self.status & flags.0 == flags.0
    }

    fn from_timex(tx: &libc::timex, state: ClockState) -> Self {
        let freq = wide(tx.freq);
        let status = tx.status;
        let sub = wide(tx.time.tv_usec);
        let sub_nanos = if status & libc::STA_NANO != 0 {
            sub
        } else {
            sub.saturating_mul(1000)
        };
        Self {
            offset: wide(tx.offset),
            freq,
            freq_ppm: freq as f64 / FREQ_SCALE,
            maxerror: wide(tx.maxerror),
            esterror: wide(tx.esterror),
            status,
            tick: wide(tx.tick),
            time_secs: wide(tx.time.tv_sec),
            time_nanos: u32::try_from(sub_nanos.clamp(0, 999_999_999)).unwrap_or(0),
            state,
        }
    }
}

/// A change to the kernel clock. An enum, not mode bits, because the kernel ignores
/// every other mode alongside `ADJ_OFFSET_SINGLESHOT`, and a step is worth keeping
/// apart from everything else.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KernelClockChange {
    /// `ADJ_OFFSET_SINGLESHOT`: slew by `micros` at the kernel's fixed 500 ppm,
    /// replacing any singleshot slew still pending. Within ±[`MAX_SINGLESHOT_US`].
    SlewOnce { micros: i64 },
    /// `ADJ_SETOFFSET | ADJ_NANO`: jump by `seconds + nanos / 1e9` (so −0.3 s is
    /// `seconds: -1, nanos: 700_000_000`). `nanos` must be below 1e9.
    Step { seconds: i64, nanos: u32 },
    /// Frequency, status bits and error estimates, in one call.
    Adjust(KernelAdjust),
}

/// The parts of [`KernelClockChange::Adjust`]; `None` or empty leaves a thing alone.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct KernelAdjust {
    /// `ADJ_FREQUENCY`, ppm, within ±[`MAX_FREQUENCY_PPM`].
    pub frequency_ppm: Option<f64>,
    /// `ADJ_TICK`, µs per tick, within ±10 % of the nominal tick (what the kernel
    /// accepts); only with `frequency_ppm`, so the two always change together.
    pub tick_us: Option<i64>,
    /// `ADJ_STATUS`: bits to set. Every other bit is read and written back unchanged.
    pub set_status: StatusFlags,
    /// `ADJ_STATUS`: bits to clear. Must not overlap `set_status`.
    pub clear_status: StatusFlags,
    /// `ADJ_ESTERROR`, µs; clamped to 0..=[`MAX_ERROR_US`].
    pub estimated_error_us: Option<i64>,
    /// `ADJ_MAXERROR`, µs; clamped to 0..=[`MAX_ERROR_US`].
    pub max_error_us: Option<i64>,
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

/// Widens a kernel integer (`long`, `time_t`, `suseconds_t`: 32 or 64 bits depending
/// on the target) to i64. Generic so it compiles, lint-free, for either width.
fn wide<T: Into<i64>>(value: T) -> i64 {
    value.into()
}

/// Narrows to a kernel integer type, refusing what does not fit (32-bit targets).
fn narrow<T: TryFrom<i64>>(value: i64, what: &str) -> io::Result<T> {
    T::try_from(value)
        .map_err(|_| invalid(format!("{what} {value} does not fit the kernel's type")))
}

/// A timex that asks for nothing (`modes` = 0).
fn zeroed_timex() -> libc::timex {
    // SAFETY: timex is plain old data (integers, a timeval and padding), for which
    // all-zero bytes are a valid value; modes = 0 means "change nothing".
    unsafe { std::mem::zeroed() }
}

/// One `adjtimex(2)` call.
fn adjtimex(tx: &mut libc::timex) -> io::Result<ClockState> {
    // SAFETY: `tx` is a valid, exclusively borrowed timex for the whole call; the kernel
    // reads and writes only inside it and keeps no pointer to it.
    let rc = unsafe { libc::adjtimex(tx) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ClockState::from_raw(rc))
    }
}

/// Reads the kernel clock (`modes` = 0). Needs no privilege and never changes the clock.
pub fn adjtimex_read() -> io::Result<KernelClock> {
    let mut tx = zeroed_timex();
    let state = adjtimex(&mut tx)?;
    Ok(KernelClock::from_timex(&tx, state))
}

/// The singleshot slew still to apply, µs (`ADJ_OFFSET_SS_READ`). Read-only: the
/// kernel skips the update when `ADJ_OFFSET_READONLY` is set, and lets unprivileged
/// callers make this call for that reason.
pub fn pending_singleshot_us() -> io::Result<i64> {
    let mut tx = zeroed_timex();
    tx.modes = libc::ADJ_OFFSET_SS_READ;
    adjtimex(&mut tx)?;
    Ok(wide(tx.offset))
}

/// Applies `change` to the kernel clock (needs `CAP_SYS_TIME`; `EPERM` without it).
/// Returns the kernel's state after the change. Out-of-range input is refused with
/// `InvalidInput` before the kernel is called.
pub fn adjtimex_apply(change: &KernelClockChange) -> io::Result<KernelClock> {
    let mut tx = zeroed_timex();
    match *change {
        KernelClockChange::SlewOnce { micros } => {
            if !(-MAX_SINGLESHOT_US..=MAX_SINGLESHOT_US).contains(&micros) {
                return Err(invalid(format!(
                    "singleshot slew of {micros} µs is outside ±{MAX_SINGLESHOT_US} µs"
                )));
            }
            tx.modes = libc::ADJ_OFFSET_SINGLESHOT;
            tx.offset = narrow(micros, "singleshot slew (µs)")?;
            let state = adjtimex(&mut tx)?;
            Ok(KernelClock::from_timex(&tx, state))
        }
        KernelClockChange::Step { seconds, nanos } => {
            if nanos >= 1_000_000_000 {
                return Err(invalid(format!("{nanos} ns is not below one second")));
            }
            tx.modes = libc::ADJ_SETOFFSET | libc::ADJ_NANO;
            tx.time.tv_sec = narrow(seconds, "step (s)")?;
            tx.time.tv_usec = narrow(i64::from(nanos), "step (ns)")?;
            let state = adjtimex(&mut tx)?;
            Ok(KernelClock::from_timex(&tx, state))
        }
        KernelClockChange::Adjust(adjust) => apply_adjust(&mut tx, &adjust),
    }
}

fn apply_adjust(tx: &mut libc::timex, adjust: &KernelAdjust) -> io::Result<KernelClock> {
    if let Some(ppm) = adjust.frequency_ppm {
        if ppm.is_nan() || ppm.abs() > MAX_FREQUENCY_PPM {
            return Err(invalid(format!(
                "frequency {ppm} ppm is outside ±{MAX_FREQUENCY_PPM} ppm"
            )));
        }
        tx.modes |= libc::ADJ_FREQUENCY;
        // |scaled| <= 500 << 16, which fits even a 32-bit long.
        tx.freq = narrow((ppm * FREQ_SCALE).round() as i64, "frequency (ppm << 16)")?;
    }
    if let Some(tick) = adjust.tick_us {
        let nominal = nominal_tick_us(clock_ticks_per_second());
        let range = nominal * 9 / 10..=nominal * 11 / 10;
        if adjust.frequency_ppm.is_none() || !range.contains(&tick) {
            return Err(invalid(format!(
                "tick {tick} µs is outside {range:?} µs or comes without a frequency"
            )));
        }
        tx.modes |= libc::ADJ_TICK;
        tx.tick = narrow(tick, "tick (µs)")?;
    }
    if let Some(us) = adjust.estimated_error_us {
        tx.modes |= libc::ADJ_ESTERROR;
        tx.esterror = narrow(us.clamp(0, MAX_ERROR_US), "estimated error (µs)")?;
    }
    if let Some(us) = adjust.max_error_us {
        tx.modes |= libc::ADJ_MAXERROR;
        tx.maxerror = narrow(us.clamp(0, MAX_ERROR_US), "maximum error (µs)")?;
    }
    let (set, clear) = (adjust.set_status.0, adjust.clear_status.0);
    if set & clear != 0 {
        return Err(invalid(format!(
            "status bits {:#x} are both set and cleared",
            set & clear
        )));
    }
    if set == 0 && clear == 0 {
        let state = adjtimex(tx)?;
        return Ok(KernelClock::from_timex(tx, state));
    }
    // ADJ_STATUS replaces the whole word: read it, change only our bits, write it back,
    // with nobody else in this process doing the same in between.
    let _guard = STATUS_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let current = adjtimex_read()?;
    tx.modes |= libc::ADJ_STATUS;
    tx.status = (current.status | set) & !clear;
    let state = adjtimex(tx)?;
    Ok(KernelClock::from_timex(tx, state))
}

// ---------------------------------------------------------------------------------
// Processes and privileges (the privilege separation in `crate::privsep`)

/// A local user, as the password database knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// Looks `name` up in the password database (`getpwnam_r`): `Ok(None)` if there is no
/// such user.
pub fn lookup_user(name: &str) -> io::Result<Option<User>> {
    let c_name = std::ffi::CString::new(name)
        .map_err(|_| invalid(format!("user name {name:?} contains a NUL byte")))?;
    let mut buffer = vec![0u8; 16 * 1024];
    // SAFETY: passwd is plain old data (integers and pointers), for which all-zero bytes
    // are a valid value; getpwnam_r fills it in.
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the whole call: a NUL-terminated name, an
    // exclusively borrowed passwd, a buffer of the length given, and the out pointer.
    // The strings getpwnam_r points `entry` at live in `buffer`, which we only read
    // through `entry`'s integers below.
    let rc = unsafe {
        libc::getpwnam_r(
            c_name.as_ptr(),
            &mut entry,
            buffer.as_mut_ptr().cast(),
            buffer.len(),
            &mut found,
        )
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    if found.is_null() {
        return Ok(None);
    }
    Ok(Some(User {
        name: name.to_string(),
        uid: entry.pw_uid,
        gid: entry.pw_gid,
    }))
}

/// Looks a group up in the group database (`getgrnam_r`): its gid, or `Ok(None)` if
/// there is no such group.
pub fn lookup_group(name: &str) -> io::Result<Option<u32>> {
    let c_name = std::ffi::CString::new(name)
        .map_err(|_| invalid(format!("group name {name:?} contains a NUL byte")))?;
    let mut buffer = vec![0u8; 64 * 1024];
    // SAFETY: group is plain old data (integers and pointers), for which all-zero bytes
    // are a valid value; getgrnam_r fills it in.
    let mut entry: libc::group = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the whole call: a NUL-terminated name, an
    // exclusively borrowed group, a buffer of the length given, and the out pointer.
    // The strings getgrnam_r points `entry` at live in `buffer`; only the gid is read.
    let rc = unsafe {
        libc::getgrnam_r(
            c_name.as_ptr(),
            &mut entry,
            buffer.as_mut_ptr().cast(),
            buffer.len(),
            &mut found,
        )
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok((!found.is_null()).then_some(entry.gr_gid))
}

/// Sets the process's file mode creation mask, returning the one it replaces. It is
/// process-wide: call it only while no other thread creates files.
pub fn set_umask(mask: u32) -> u32 {
    // SAFETY: umask takes a number, cannot fail and touches no memory.
    unsafe { libc::umask(mask) }
}

/// The effective user id of this process.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid takes nothing, cannot fail and touches no memory.
    unsafe { libc::geteuid() }
}

/// Turns a `-1` return into the `errno` it stands for.
fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Becomes `user` for good: supplementary groups = its group only, then real,
/// effective and saved gid and uid. Capabilities the caller asked to keep with
/// [`set_keep_capabilities`] survive in the permitted set only.
pub fn become_user(user: &User) -> io::Result<()> {
    let groups = [user.gid as libc::gid_t];
    // SAFETY: setgroups reads `groups.len()` gids from a valid array.
    check(unsafe { libc::setgroups(groups.len(), groups.as_ptr()) })?;
    // SAFETY: setresgid/setresuid take plain integers.
    check(unsafe { libc::setresgid(user.gid, user.gid, user.gid) })?;
    // SAFETY: as above.
    check(unsafe { libc::setresuid(user.uid, user.uid, user.uid) })?;
    Ok(())
}

/// One `prctl` option with integer arguments (no pointers cross).
fn prctl(option: libc::c_int, arg: libc::c_ulong) -> io::Result<()> {
    // SAFETY: every option used here (below) takes integer arguments only.
    check(unsafe { libc::prctl(option, arg, 0 as libc::c_ulong, 0 as libc::c_ulong, 0) })
}

/// `PR_SET_KEEPCAPS`: whether permitted capabilities survive [`become_user`].
pub fn set_keep_capabilities(keep: bool) -> io::Result<()> {
    prctl(libc::PR_SET_KEEPCAPS, libc::c_ulong::from(keep))
}

/// `PR_SET_NO_NEW_PRIVS`: no exec can ever grant privileges again (set-uid binaries,
/// file capabilities); also what lets an unprivileged process install seccomp filters.
pub fn set_no_new_privileges() -> io::Result<()> {
    prctl(libc::PR_SET_NO_NEW_PRIVS, 1)
}

/// `PR_SET_DUMPABLE` 0: no core dumps of key material, and no ptrace by the same uid.
pub fn set_not_dumpable() -> io::Result<()> {
    prctl(libc::PR_SET_DUMPABLE, 0)
}

/// `PR_SET_PDEATHSIG`: `signal` arrives when the parent dies. The kernel clears it on
/// credential changes, so this comes after [`become_user`].
pub fn set_parent_death_signal(signal: libc::c_int) -> io::Result<()> {
    let signal = libc::c_ulong::try_from(signal).map_err(|_| invalid("signal".into()))?;
    prctl(libc::PR_SET_PDEATHSIG, signal)
}

/// A connected `AF_UNIX` `SOCK_SEQPACKET` pair: reliable, ordered, message boundaries
/// kept (so a short or long frame is seen as such), and end of file when the other
/// end closes. Both ends are close-on-exec.
pub fn seqpacket_pair() -> io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let mut fds = [-1 as libc::c_int; 2];
    // SAFETY: socketpair writes two descriptors into a valid two-element array.
    check(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    })?;
    // SAFETY: both descriptors were just created by socketpair and nothing else owns them.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Sets or clears close-on-exec, so that a descriptor is (or is no longer) passed to
/// the next program this process starts.
pub fn set_inheritable(fd: std::os::fd::BorrowedFd<'_>, inheritable: bool) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let raw = fd.as_raw_fd();
    // SAFETY: F_GETFD/F_SETFD on a descriptor the borrow keeps open; integers only.
    let flags = unsafe { libc::fcntl(raw, libc::F_GETFD) };
    check(flags)?;
    let flags = if inheritable {
        flags & !libc::FD_CLOEXEC
    } else {
        flags | libc::FD_CLOEXEC
    };
    // SAFETY: as above.
    check(unsafe { libc::fcntl(raw, libc::F_SETFD, flags) })
}

/// Marks every descriptor from `first` up close-on-exec (`close_range` with
/// `CLOSE_RANGE_CLOEXEC`), so that nothing this process inherited reaches a program
/// it starts unless passed on purpose.
pub fn close_on_exec_from(first: u32) -> io::Result<()> {
    // SAFETY: close_range takes integers only; with CLOSE_RANGE_CLOEXEC it closes
    // nothing, so no descriptor owned elsewhere in this process becomes invalid.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Descriptors already taken by [`take_inherited_fd`]: each may be owned only once.
static TAKEN_FDS: Mutex<Vec<i32>> = Mutex::new(Vec::new());

/// Takes ownership of descriptor `fd`, inherited from the parent across exec (its
/// number came on the command line), and makes it close-on-exec. Refuses the standard
/// streams, descriptors that are not open, and any number taken before.
pub(crate) fn take_inherited_fd(fd: i32) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{FromRawFd, OwnedFd};
    if fd <= 2 {
        return Err(invalid(format!("descriptor {fd} is a standard stream")));
    }
    let mut taken = TAKEN_FDS.lock().unwrap_or_else(|p| p.into_inner());
    if taken.contains(&fd) {
        return Err(invalid(format!("descriptor {fd} was already taken")));
    }
    // SAFETY: F_GETFD only asks whether `fd` is open; no memory is involved.
    check(unsafe { libc::fcntl(fd, libc::F_GETFD) })
        .map_err(|e| io::Error::new(e.kind(), format!("descriptor {fd}: {e}")))?;
    taken.push(fd);
    // SAFETY: `fd` is open (checked above), was handed to this process by its parent
    // for exactly this purpose, and TAKEN_FDS guarantees no second owner is made here.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    set_inheritable(std::os::fd::AsFd::as_fd(&owned), false)?;
    Ok(owned)
}

/// A set of signals, built from signal numbers.
fn signal_set(signals: &[libc::c_int]) -> io::Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain old data; sigemptyset initialises it below.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, exclusively borrowed sigset_t.
    check(unsafe { libc::sigemptyset(&mut set) })?;
    for &signal in signals {
        // SAFETY: as above; an invalid signal number is refused with EINVAL.
        check(unsafe { libc::sigaddset(&mut set, signal) })?;
    }
    Ok(set)
}

/// Blocks (`block`) or unblocks `signals` for the calling thread; threads started
/// later, and programs it execs, inherit the mask.
pub fn block_signals(signals: &[libc::c_int], block: bool) -> io::Result<()> {
    let set = signal_set(signals)?;
    let how = if block {
        libc::SIG_BLOCK
    } else {
        libc::SIG_UNBLOCK
    };
    // SAFETY: `set` is initialised; the old mask is not asked for (null).
    let rc = unsafe { libc::pthread_sigmask(how, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Waits up to `timeout` for one of `signals` (which must be blocked) and returns it.
pub fn wait_for_signal(
    signals: &[libc::c_int],
    timeout: std::time::Duration,
) -> io::Result<Option<libc::c_int>> {
    let set = signal_set(signals)?;
    let timeout = libc::timespec {
        tv_sec: narrow(
            i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
            "seconds",
        )?,
        tv_nsec: narrow(i64::from(timeout.subsec_nanos()), "nanoseconds")?,
    };
    // SAFETY: `set` and `timeout` are valid for the call; the siginfo is not asked for.
    let rc = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &timeout) };
    if rc >= 0 {
        return Ok(Some(rc));
    }
    match io::Error::last_os_error() {
        e if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EINTR)) => Ok(None),
        e => Err(e),
    }
}

/// Ignores `signal` (`SIG_IGN`) from now on; inherited across exec.
pub fn ignore_signal(signal: libc::c_int) -> io::Result<()> {
    // SAFETY: SIG_IGN installs no handler code, so nothing runs in signal context.
    if unsafe { libc::signal(signal, libc::SIG_IGN) } == libc::SIG_ERR {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sends `signal` to process `pid`.
pub fn send_signal(pid: u32, signal: libc::c_int) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| invalid(format!("pid {pid}")))?;
    // SAFETY: kill takes integers only.
    check(unsafe { libc::kill(pid, signal) })
}

// SysV shared memory

/// An attached SysV shared-memory segment (the NTP SHM refclock's), detached on drop.
/// Another process writes it at any time, so every access is a volatile copy: no
/// reference into it is ever handed out.
#[derive(Debug)]
pub struct ShmSegment {
    id: libc::c_int,
    base: std::ptr::NonNull<u8>,
    len: usize,
}

/// Who owns a SysV shared-memory segment, and who may use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShmOwner {
    pub uid: u32,
    /// The creator, who keeps the right to change its owner and mode.
    pub creator_uid: u32,
    /// The permission bits.
    pub mode: u32,
}

// SAFETY: the mapping belongs to the process, not the thread; every access goes
// through `&self` methods that copy with volatile reads and writes, which are no less
// valid from another thread.
unsafe impl Send for ShmSegment {}

impl ShmSegment {
    /// Attaches the segment with `key`, at least `len` bytes, read-write (the reader
    /// clears its `valid` word). With `create`, a missing one is made with `mode`
    /// (the permission bits); an existing one keeps its own.
    pub fn attach(key: i32, len: usize, mode: u32, create: bool) -> io::Result<Self> {
        let permissions = narrow::<libc::c_int>(i64::from(mode & 0o777), "mode")?;
        let flags = if create {
            libc::IPC_CREAT | permissions
        } else {
            0
        };
        // SAFETY: shmget takes integers only.
        let id = unsafe { libc::shmget(key, len, flags) };
        if id == -1 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a null address lets the kernel choose where to map it; flags 0 maps
        // it read-write. The result is checked against (void *) -1 below.
        let address = unsafe { libc::shmat(id, std::ptr::null(), 0) };
        if address as isize == -1 {
            return Err(io::Error::last_os_error());
        }
        let base = std::ptr::NonNull::new(address.cast::<u8>())
            .ok_or_else(|| io::Error::other("shmat returned null"))?;
        Ok(Self { id, base, len })
    }

    /// The segment's owner, creator and mode, as the kernel keeps them.
    pub fn owner(&self) -> io::Result<ShmOwner> {
        // SAFETY: an all-zero shmid_ds is a valid value of the plain C struct.
        let mut status: libc::shmid_ds = unsafe { std::mem::zeroed() };
        // SAFETY: IPC_STAT writes one shmid_ds to the pointer, which is to ours.
        check(unsafe { libc::shmctl(self.id, libc::IPC_STAT, &mut status) })?;
        Ok(ShmOwner {
            uid: status.shm_perm.uid,
            creator_uid: status.shm_perm.cuid,
            mode: u32::from(status.shm_perm.mode) & 0o777,
        })
    }

    /// Copies the first `N` bytes (at most the segment's length, zeros beyond), then
    /// reads the `i32` at `recheck` once more: a writer using a change counter (NTP
    /// SHM mode 1) can be caught mid-write by comparing it with the copy's.
    pub fn snapshot<const N: usize>(&self, recheck: usize) -> ([u8; N], i32) {
        let mut copy = [0u8; N];
        for (i, byte) in copy.iter_mut().enumerate().take(self.len) {
            // SAFETY: `i < self.len`, inside the mapping, which lives as long as
            // `self`; a byte read has no alignment to keep.
            *byte = unsafe { self.base.as_ptr().add(i).read_volatile() };
        }
        std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
        let mut again = [0u8; 4];
        for (i, byte) in again.iter_mut().enumerate() {
            let at = recheck.saturating_add(i);
            if at < self.len {
                // SAFETY: as above, `at < self.len`.
                *byte = unsafe { self.base.as_ptr().add(at).read_volatile() };
            }
        }
        (copy, i32::from_ne_bytes(again))
    }

    /// Writes `bytes` at `at` (what fits in the segment): the reader's clearing of
    /// `valid`, and test writers.
    pub fn write(&self, at: usize, bytes: &[u8]) {
        std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
        for (i, &byte) in bytes.iter().enumerate() {
            let offset = at.saturating_add(i);
            if offset < self.len {
                // SAFETY: `offset < self.len`, inside the read-write mapping.
                unsafe { self.base.as_ptr().add(offset).write_volatile(byte) };
            }
        }
        std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
    }

    /// Marks the segment with `key` for removal once nobody is attached (tests clean
    /// up their private segments with it).
    pub fn remove(key: i32) -> io::Result<()> {
        // SAFETY: shmget takes integers only; size 0 finds an existing segment.
        let id = unsafe { libc::shmget(key, 0, 0) };
        if id == -1 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: IPC_RMID reads no buffer, so null is allowed.
        check(unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) })
    }
}

impl Drop for ShmSegment {
    fn drop(&mut self) {
        // SAFETY: `base` is what shmat returned, attached until now; nothing refers
        // into the mapping (every access copied).
        unsafe { libc::shmdt(self.base.as_ptr().cast()) };
    }
}

// ---------------------------------------------------------------------------------
// PTP hardware clocks and kernel PPS

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

// The `_IOC` encoding of asm-generic/ioctl.h: number, type, size and direction packed
// into one word. Power, MIPS and SPARC use 13 size bits and other direction values.
#[cfg(any(
    target_arch = "powerpc",
    target_arch = "powerpc64",
    target_arch = "mips",
    target_arch = "mips64",
    target_arch = "sparc",
    target_arch = "sparc64"
))]
mod ioc {
    pub const SIZE_BITS: u32 = 13;
    pub const WRITE: u32 = 4;
    pub const READ: u32 = 2;
}
#[cfg(not(any(
    target_arch = "powerpc",
    target_arch = "powerpc64",
    target_arch = "mips",
    target_arch = "mips64",
    target_arch = "sparc",
    target_arch = "sparc64"
)))]
mod ioc {
    pub const SIZE_BITS: u32 = 14;
    pub const WRITE: u32 = 1;
    pub const READ: u32 = 2;
}

/// The kernel's `_IOC(direction, type, number, size)`: the request number of an ioctl
/// whose argument is `size` bytes. `direction` is [`IOC_WRITE`], [`IOC_READ`] or both.
pub const fn ioctl_request(direction: u32, kind: u8, number: u8, size: usize) -> u32 {
    // A size that does not fit its bits would silently change the direction; every
    // size used here is a small struct or a pointer.
    let size = size as u32 & ((1 << ioc::SIZE_BITS) - 1);
    direction << (16 + ioc::SIZE_BITS) | size << 16 | (kind as u32) << 8 | number as u32
}

/// `_IOC_WRITE`: user space writes the argument (the kernel reads it).
pub const IOC_WRITE: u32 = ioc::WRITE;
/// `_IOC_READ`: the kernel writes the argument back.
pub const IOC_READ: u32 = ioc::READ;

/// A time as a PHC or PPS ioctl reports it, exactly as the kernel filled it in:
/// nothing is checked yet (the refclock drivers do that, so recorded and fuzzed
/// readings take the same path).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeviceTime {
    pub seconds: i64,
    /// Nanoseconds past `seconds`; valid readings are below 1e9.
    pub nanos: i64,
}

/// `struct ptp_clock_time` (linux/ptp_clock.h).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct PtpClockTime {
    sec: i64,
    nsec: u32,
    reserved: u32,
}

impl PtpClockTime {
    fn device_time(self) -> DeviceTime {
        DeviceTime {
            seconds: self.sec,
            nanos: i64::from(self.nsec),
        }
    }
}

/// `PTP_MAX_SAMPLES`: the most readings one offset ioctl takes.
pub const PHC_MAX_SAMPLES: u32 = 25;
const MAX_SAMPLES: usize = PHC_MAX_SAMPLES as usize;

/// `struct ptp_sys_offset`: `2n + 1` interleaved system, PHC, system, ... readings.
#[repr(C)]
struct PtpSysOffset {
    n_samples: u32,
    rsv: [u32; 3],
    ts: [PtpClockTime; 2 * MAX_SAMPLES + 1],
}

/// `struct ptp_sys_offset_extended`: `n` (system before, PHC, system after) readings.
/// `rsv[0]` became `clockid` in Linux 6.12; zero, as here, is `CLOCK_REALTIME` (and
/// clknetsim reads it the same way).
#[repr(C)]
struct PtpSysOffsetExtended {
    n_samples: u32,
    rsv: [u32; 3],
    ts: [[PtpClockTime; 3]; MAX_SAMPLES],
}

/// `struct ptp_sys_offset_precise`: a hardware cross-timestamp.
#[repr(C)]
#[derive(Default)]
struct PtpSysOffsetPrecise {
    device: PtpClockTime,
    sys_realtime: PtpClockTime,
    sys_monoraw: PtpClockTime,
    rsv: [u32; 4],
}

/// `PTP_CLK_MAGIC`.
const PTP_MAGIC: u8 = b'=';
/// `PTP_SYS_OFFSET`: `_IOW('=', 5, struct ptp_sys_offset)`.
pub const PTP_SYS_OFFSET: u32 =
    ioctl_request(IOC_WRITE, PTP_MAGIC, 5, std::mem::size_of::<PtpSysOffset>());
/// `PTP_SYS_OFFSET_PRECISE`: `_IOWR('=', 8, struct ptp_sys_offset_precise)`.
pub const PTP_SYS_OFFSET_PRECISE: u32 = ioctl_request(
    IOC_READ | IOC_WRITE,
    PTP_MAGIC,
    8,
    std::mem::size_of::<PtpSysOffsetPrecise>(),
);
/// `PTP_SYS_OFFSET_EXTENDED`: `_IOWR('=', 9, struct ptp_sys_offset_extended)`.
pub const PTP_SYS_OFFSET_EXTENDED: u32 = ioctl_request(
    IOC_READ | IOC_WRITE,
    PTP_MAGIC,
    9,
    std::mem::size_of::<PtpSysOffsetExtended>(),
);

// The kernel's sizes on 64-bit targets (gcc on x86-64), so a field slip cannot compile.
#[cfg(target_pointer_width = "64")]
const _: () = {
    assert!(std::mem::size_of::<PtpClockTime>() == 16);
    assert!(std::mem::size_of::<PtpSysOffset>() == 832);
    assert!(std::mem::size_of::<PtpSysOffsetExtended>() == 1216);
    assert!(std::mem::size_of::<PtpSysOffsetPrecise>() == 64);
    assert!(std::mem::size_of::<PpsKtime>() == 16);
    assert!(std::mem::size_of::<PpsKinfo>() == 48);
    assert!(std::mem::size_of::<PpsKparams>() == 40);
    assert!(std::mem::size_of::<PpsFdata>() == 64);
    assert!(std::mem::offset_of!(PpsFdata, timeout) == 48);
};

/// One ioctl whose argument is a pointer to `arg`.
fn ioctl_with<T>(fd: BorrowedFd<'_>, request: u32, arg: &mut T) -> io::Result<()> {
    // SAFETY: `arg` is a valid, exclusively borrowed `T` for the whole call, and every
    // request passed here was built with `T`'s own size (or, for PPS, names a pointer
    // to `T`), so the kernel reads and writes only inside it; the borrow keeps `fd`
    // open. Nothing keeps the pointer after the call.
    let rc = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            request as libc::Ioctl,
            std::ptr::from_mut(arg),
        )
    };
    check(rc)
}

/// Opens a PHC or PPS device read-write (what their ioctls need), close-on-exec.
/// Through libc's `open`, which clknetsim intercepts (`std::fs::File::open` calls
/// `open64`, which it does not).
pub fn open_device(path: &std::path::Path) -> io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| invalid(format!("device path {path:?} contains a NUL byte")))?;
    // SAFETY: a NUL-terminated path valid for the call; integers otherwise.
    let fd = unsafe {
        libc::open(
            c_path.as_ptr(),
            libc::O_RDWR | libc::O_CLOEXEC | libc::O_NOCTTY,
        )
    };
    check(fd)?;
    // SAFETY: `fd` was just opened here and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Which PTP offset ioctl a device answers, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhcMethod {
    /// `PTP_SYS_OFFSET_PRECISE`: the hardware timestamps both clocks at one instant.
    Precise,
    /// `PTP_SYS_OFFSET_EXTENDED`: the driver brackets each PHC read with system reads.
    Extended,
    /// `PTP_SYS_OFFSET`: the same, with the bracketing done less tightly by the core.
    Plain,
}

/// What one offset ioctl returned, converted and not yet checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PhcReadings {
    /// A cross-timestamp: the PHC and `CLOCK_REALTIME` at the same instant.
    CrossTimestamp { phc: DeviceTime, system: DeviceTime },
    /// `[system before, PHC, system after]` per sample, system = `CLOCK_REALTIME`.
    Triples(Vec<[DeviceTime; 3]>),
}

/// Reads a PHC against `CLOCK_REALTIME` with the best ioctl the device answers,
/// remembering it once found.
#[derive(Debug, Clone)]
pub struct PhcReader {
    method: Option<PhcMethod>,
    samples: u32,
}

impl PhcReader {
    /// `samples` readings per call for the bracketing ioctls (1..=25, clamped).
    pub fn new(samples: u32) -> Self {
        Self {
            method: None,
            samples: samples.clamp(1, PHC_MAX_SAMPLES),
        }
    }

    /// The ioctl that worked, once one has.
    pub fn method(&self) -> Option<PhcMethod> {
        self.method
    }

    /// One reading. Until a method has worked, tries precise, extended and plain in
    /// turn, moving on only when the device says it lacks one (`EOPNOTSUPP`, `ENOTTY`);
    /// any other error is returned as is. A method that worked and then says it is
    /// unsupported (a cross-timestamp needs PCIe PTM, which a link change can lose) is
    /// forgotten, so the next reading looks again.
    pub fn read(&mut self, fd: BorrowedFd<'_>) -> io::Result<PhcReadings> {
        if let Some(method) = self.method {
            let result = self.read_with(fd, method);
            if result.as_ref().is_err_and(is_unsupported) {
                self.method = None;
            }
            return result;
        }
        let mut last = io::Error::from_raw_os_error(libc::EOPNOTSUPP);
        for method in [PhcMethod::Precise, PhcMethod::Extended, PhcMethod::Plain] {
            match self.read_with(fd, method) {
                Ok(readings) => {
                    self.method = Some(method);
                    return Ok(readings);
                }
                Err(e) if is_unsupported(&e) => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    fn read_with(&self, fd: BorrowedFd<'_>, method: PhcMethod) -> io::Result<PhcReadings> {
        match method {
            PhcMethod::Precise => {
                let mut arg = PtpSysOffsetPrecise::default();
                ioctl_with(fd, PTP_SYS_OFFSET_PRECISE, &mut arg)?;
                Ok(PhcReadings::CrossTimestamp {
                    phc: arg.device.device_time(),
                    system: arg.sys_realtime.device_time(),
                })
            }
            PhcMethod::Extended => {
                let mut arg = PtpSysOffsetExtended {
                    n_samples: self.samples,
                    rsv: [0; 3],
                    ts: [[PtpClockTime::default(); 3]; MAX_SAMPLES],
                };
                ioctl_with(fd, PTP_SYS_OFFSET_EXTENDED, &mut arg)?;
                let filled = (arg.n_samples.min(self.samples)) as usize;
                let triples = arg.ts.iter().take(filled);
                Ok(PhcReadings::Triples(
                    triples.map(|t| t.map(PtpClockTime::device_time)).collect(),
                ))
            }
            PhcMethod::Plain => {
                let mut arg = PtpSysOffset {
                    n_samples: self.samples,
                    rsv: [0; 3],
                    ts: [PtpClockTime::default(); 2 * MAX_SAMPLES + 1],
                };
                ioctl_with(fd, PTP_SYS_OFFSET, &mut arg)?;
                let filled = 2 * (arg.n_samples.min(self.samples)) as usize + 1;
                let times: Vec<DeviceTime> = arg
                    .ts
                    .iter()
                    .take(filled)
                    .map(|t| t.device_time())
                    .collect();
                Ok(PhcReadings::Triples(interleaved_triples(&times)))
            }
        }
    }
}

/// The device lacks this ioctl: `EOPNOTSUPP` from the PTP core or driver, `ENOTTY`
/// from a kernel that predates it.
fn is_unsupported(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EOPNOTSUPP | libc::ENOTTY))
}

/// `PTP_SYS_OFFSET`'s system, PHC, system, PHC, ..., system as triples: each PHC
/// reading with the system readings either side (`ts[2i]`, `ts[2i+1]`, `ts[2i+2]`).
fn interleaved_triples(times: &[DeviceTime]) -> Vec<[DeviceTime; 3]> {
    times
        .windows(3)
        .step_by(2)
        .filter_map(|w| <[DeviceTime; 3]>::try_from(w).ok())
        .collect()
}

/// `struct pps_ktime` (linux/pps.h).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct PpsKtime {
    sec: i64,
    nsec: i32,
    flags: u32,
}

impl PpsKtime {
    fn device_time(self) -> DeviceTime {
        DeviceTime {
            seconds: self.sec,
            nanos: i64::from(self.nsec),
        }
    }
}

/// `struct pps_kinfo`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct PpsKinfo {
    assert_sequence: u32,
    clear_sequence: u32,
    assert_tu: PpsKtime,
    clear_tu: PpsKtime,
    current_mode: libc::c_int,
}

/// `struct pps_kparams`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct PpsKparams {
    api_version: libc::c_int,
    mode: libc::c_int,
    assert_off_tu: PpsKtime,
    clear_off_tu: PpsKtime,
}

/// `struct pps_fdata`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct PpsFdata {
    info: PpsKinfo,
    timeout: PpsKtime,
}

// The PPS ioctls are declared with a *pointer* type as their size (`struct pps_fdata *`),
// so their numbers carry the pointer size, not the struct's.
const POINTER_SIZE: usize = std::mem::size_of::<*mut u8>();
/// `PPS_GETPARAMS`: `_IOR('p', 0xa1, struct pps_kparams *)`.
pub const PPS_GETPARAMS: u32 = ioctl_request(IOC_READ, b'p', 0xa1, POINTER_SIZE);
/// `PPS_SETPARAMS`: `_IOW('p', 0xa2, struct pps_kparams *)`.
pub const PPS_SETPARAMS: u32 = ioctl_request(IOC_WRITE, b'p', 0xa2, POINTER_SIZE);
/// `PPS_GETCAP`: `_IOR('p', 0xa3, int *)`.
pub const PPS_GETCAP: u32 = ioctl_request(IOC_READ, b'p', 0xa3, POINTER_SIZE);
/// `PPS_FETCH`: `_IOWR('p', 0xa4, struct pps_fdata *)`.
pub const PPS_FETCH: u32 = ioctl_request(IOC_READ | IOC_WRITE, b'p', 0xa4, POINTER_SIZE);

const PPS_CAPTUREASSERT: libc::c_int = 0x01;
const PPS_CAPTURECLEAR: libc::c_int = 0x02;
const PPS_TSFMT_TSPEC: libc::c_int = 0x1000;
const PPS_API_VERS_1: libc::c_int = 1;

/// The edge of the pulse that marks the second (RFC 2783's assert or clear).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PpsEdge {
    #[default]
    Assert,
    Clear,
}

/// What `PPS_FETCH` returned: the latest event of each edge, unchecked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PpsFetch {
    pub assert_sequence: u32,
    pub clear_sequence: u32,
    /// `CLOCK_REALTIME` at the latest assert edge.
    pub assert: DeviceTime,
    /// `CLOCK_REALTIME` at the latest clear edge.
    pub clear: DeviceTime,
}

/// Makes the device capture `edge`, timestamps as `timespec`. Changes the parameters
/// (`PPS_SETPARAMS`, which needs `CAP_SYS_TIME`) only when that edge is not captured
/// already, so an unprivileged process can use a device set up as it needs.
pub fn pps_capture(fd: BorrowedFd<'_>, edge: PpsEdge) -> io::Result<()> {
    let wanted = match edge {
        PpsEdge::Assert => PPS_CAPTUREASSERT,
        PpsEdge::Clear => PPS_CAPTURECLEAR,
    };
    let mut capabilities: libc::c_int = 0;
    ioctl_with(fd, PPS_GETCAP, &mut capabilities)?;
    if capabilities & wanted == 0 {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("the PPS device cannot capture {edge:?} edges"),
        ));
    }
    let mut params = PpsKparams::default();
    ioctl_with(fd, PPS_GETPARAMS, &mut params)?;
    if params.mode & wanted != 0 && params.mode & PPS_TSFMT_TSPEC != 0 {
        return Ok(());
    }
    params.api_version = PPS_API_VERS_1;
    params.mode |= wanted | PPS_TSFMT_TSPEC;
    ioctl_with(fd, PPS_SETPARAMS, &mut params)
}

/// The device's latest events (`PPS_FETCH`), waiting up to `timeout` for a new one
/// (zero: no wait). `None` when none came in time or a signal interrupted the wait.
pub fn pps_fetch(fd: BorrowedFd<'_>, timeout: std::time::Duration) -> io::Result<Option<PpsFetch>> {
    let mut arg = PpsFdata {
        timeout: PpsKtime {
            sec: i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
            nsec: i32::try_from(timeout.subsec_nanos()).unwrap_or(0),
            flags: 0,
        },
        ..PpsFdata::default()
    };
    match ioctl_with(fd, PPS_FETCH, &mut arg) {
        Ok(()) => Ok(Some(PpsFetch {
            assert_sequence: arg.info.assert_sequence,
            clear_sequence: arg.info.clear_sequence,
            assert: arg.info.assert_tu.device_time(),
            clear: arg.info.clear_tu.device_time(),
        })),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ETIMEDOUT | libc::EINTR)) => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn ioctl_requests_match_the_kernel_headers() {
        // From a C program including linux/ptp_clock.h and linux/pps.h (gcc, x86-64).
        assert_eq!(PTP_SYS_OFFSET, 0x4340_3d05);
        assert_eq!(PTP_SYS_OFFSET_PRECISE, 0xc040_3d08);
        assert_eq!(PTP_SYS_OFFSET_EXTENDED, 0xc4c0_3d09);
        assert_eq!(PPS_GETPARAMS, 0x8008_70a1);
        assert_eq!(PPS_SETPARAMS, 0x4008_70a2);
        assert_eq!(PPS_GETCAP, 0x8008_70a3);
        assert_eq!(PPS_FETCH, 0xc008_70a4);
        // Numbers from other headers: RTC_RD_TIME (_IOR('p', 0x09, struct rtc_time),
        // 36 bytes) and FIONREAD (0x541B, an _IO('T', 0x1b) in all but name).
        assert_eq!(ioctl_request(IOC_READ, b'p', 0x09, 36), 0x8024_7009);
        assert_eq!(ioctl_request(0, b'T', 0x1b, 0), 0x541b);
    }

    #[test]
    fn ptp_requests_match_the_libc_crate_on_every_target() {
        assert_eq!(PTP_SYS_OFFSET as libc::Ioctl, libc::PTP_SYS_OFFSET);
        assert_eq!(
            PTP_SYS_OFFSET_PRECISE as libc::Ioctl,
            libc::PTP_SYS_OFFSET_PRECISE
        );
        assert_eq!(
            PTP_SYS_OFFSET_EXTENDED as libc::Ioctl,
            libc::PTP_SYS_OFFSET_EXTENDED
        );
    }

    #[test]
    fn plain_offsets_pair_each_phc_reading_with_the_system_readings_around_it() {
        let t = |seconds| DeviceTime { seconds, nanos: 0 };
        let times: Vec<DeviceTime> = (0..7).map(t).collect();
        assert_eq!(
            interleaved_triples(&times),
            vec![[t(0), t(1), t(2)], [t(2), t(3), t(4)], [t(4), t(5), t(6)]]
        );
        assert!(interleaved_triples(&times[..2]).is_empty());
    }

    #[test]
    fn a_file_that_is_no_phc_fails_every_method_and_none_is_remembered() {
        let fd = open_device(std::path::Path::new("/dev/null")).unwrap();
        let mut reader = PhcReader::new(5);
        let error = reader.read(fd.as_fd()).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::ENOTTY));
        assert_eq!(reader.method(), None);
    }

    #[test]
    fn a_method_that_stops_working_is_looked_for_again() {
        let fd = open_device(std::path::Path::new("/dev/null")).unwrap();
        let mut reader = PhcReader {
            method: Some(PhcMethod::Precise),
            samples: 5,
        };
        assert!(reader.read(fd.as_fd()).is_err());
        assert_eq!(reader.method(), None);
    }

    #[test]
    fn a_file_that_is_no_pps_device_is_an_error_not_a_timeout() {
        let fd = open_device(std::path::Path::new("/dev/null")).unwrap();
        let error = pps_fetch(fd.as_fd(), std::time::Duration::ZERO).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::ENOTTY));
        let error = pps_capture(fd.as_fd(), PpsEdge::Assert).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::ENOTTY));
    }

    #[test]
    fn a_missing_device_is_reported_by_name() {
        let error = open_device(std::path::Path::new("/dev/ptp-none-here")).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::NotFound);
        assert!(open_device(std::path::Path::new("/dev/\0ptp")).is_err());
    }
}

// ---------------------------------------------------------------------------------
// Datagrams in batches: `recvmmsg(2)` with the kernel's receive time of each
// (`SO_TIMESTAMPNS`), `sendmmsg(2)`, and `poll(2)` to wait on a non-blocking socket. The
// server answers a whole batch with one system call each way. Replies may ask for the
// kernel's transmit time (`SO_TIMESTAMPING`), which comes back on the socket's error
// queue with a copy of the packet.

/// Room for the control messages of one datagram, in `u64`s so that it is aligned as
/// `cmsghdr` needs: an `SCM_TIMESTAMPNS` (32 bytes) on a request; on a transmit time
/// that, an `SCM_TIMESTAMPING` (64) and an `IP_RECVERR` (48) or `IPV6_RECVERR` (64),
/// with room to spare: a message cut short (`MSG_CTRUNC`) loses its time.
const TIMESTAMP_CONTROL_WORDS: usize = 32;

fn set_socket_option(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the option value is a live c_int and its exact size is passed.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
}

/// Asks the kernel to attach its receive time (`CLOCK_REALTIME`, ns) to each datagram.
pub fn enable_receive_timestamps(fd: BorrowedFd<'_>) -> io::Result<()> {
    set_socket_option(fd, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1)
}

/// Lets replies ask for the kernel's software transmit time, one by one
/// ([`SendBatch::queue`]); each comes back on the error queue with a copy of the packet
/// ([`ReceiveBatch::receive_transmit_times`]). Receive times stay `SO_TIMESTAMPNS`.
pub fn enable_transmit_timestamps(fd: BorrowedFd<'_>) -> io::Result<()> {
    let report = libc::SOF_TIMESTAMPING_SOFTWARE as libc::c_int;
    // RX_FILTER keeps requests from carrying an SCM_TIMESTAMPING as well; kernels
    // without it add one, for which the control buffer has room.
    let filter = libc::SOF_TIMESTAMPING_OPT_RX_FILTER as libc::c_int;
    set_socket_option(fd, libc::SOL_SOCKET, libc::SO_TIMESTAMPING, report | filter)
        .or_else(|_| set_socket_option(fd, libc::SOL_SOCKET, libc::SO_TIMESTAMPING, report))
}

/// Waits until `fd` is readable or `timeout` has passed; false on a timeout. A signal
/// counts as a timeout (the caller loops anyway).
pub fn wait_readable(fd: BorrowedFd<'_>, timeout: std::time::Duration) -> io::Result<bool> {
    let mut poll_fd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let millis = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one live pollfd, and the count says one.
    let rc = unsafe { libc::poll(&mut poll_fd, 1, millis) };
    if rc < 0 {
        let error = io::Error::last_os_error();
        return if error.kind() == io::ErrorKind::Interrupted {
            Ok(false)
        } else {
            Err(error)
        };
    }
    Ok(rc > 0)
}

/// One datagram of a [`ReceiveBatch`].
#[derive(Debug, Clone, Copy)]
pub struct Datagram<'a> {
    pub data: &'a [u8],
    pub from: std::net::SocketAddr,
    /// The kernel's receive time, Unix seconds and nanoseconds, if it gave one.
    pub kernel_time: Option<(i64, u32)>,
    /// Larger than the buffer: `data` is only its beginning (`MSG_TRUNC`).
    pub truncated: bool,
}

/// Buffers for up to `capacity` datagrams of `slot_len` bytes, allocated once.
pub struct ReceiveBatch {
    slot_len: usize,
    buffers: Vec<u8>,
    addresses: Vec<libc::sockaddr_storage>,
    controls: Vec<[u64; TIMESTAMP_CONTROL_WORDS]>,
    headers: Vec<libc::mmsghdr>,
    iovecs: Vec<libc::iovec>,
    received: usize,
}

// SAFETY: the raw pointers in `headers` and `iovecs` point only into this batch's own
// vectors, are rewritten before every call and are never dereferenced by Rust code.
unsafe impl Send for ReceiveBatch {}

impl ReceiveBatch {
    pub fn new(capacity: usize, slot_len: usize) -> Self {
        let capacity = capacity.max(1);
        let slot_len = slot_len.max(1);
        Self {
            slot_len,
            buffers: vec![0; capacity * slot_len],
            // SAFETY: all-zero is a valid sockaddr_storage, mmsghdr and iovec (null
            // pointers, zero lengths).
            addresses: vec![unsafe { std::mem::zeroed() }; capacity],
            controls: vec![[0; TIMESTAMP_CONTROL_WORDS]; capacity],
            headers: (0..capacity)
                // SAFETY: as above.
                .map(|_| unsafe { std::mem::zeroed() })
                .collect(),
            iovecs: (0..capacity)
                .map(|_| libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                })
                .collect(),
            received: 0,
        }
    }

    /// Reads what is queued on `fd`, up to the capacity, without waiting
    /// (`MSG_DONTWAIT`): `WouldBlock` when nothing is. Returns how many came.
    pub fn receive(&mut self, fd: BorrowedFd<'_>) -> io::Result<usize> {
        self.receive_with(fd, libc::MSG_DONTWAIT)
    }

    /// Reads the transmit times waiting on `fd`'s error queue (see
    /// [`enable_transmit_timestamps`]), as [`receive`](Self::receive) reads datagrams;
    /// [`transmit_times`](Self::transmit_times) gives them.
    pub fn receive_transmit_times(&mut self, fd: BorrowedFd<'_>) -> io::Result<usize> {
        self.receive_with(fd, libc::MSG_DONTWAIT | libc::MSG_ERRQUEUE)
    }

    /// Slots read at once.
    pub fn capacity(&self) -> usize {
        self.headers.len()
    }

    fn receive_with(&mut self, fd: BorrowedFd<'_>, flags: libc::c_int) -> io::Result<usize> {
        self.received = 0;
        let slots = self.buffers.chunks_exact_mut(self.slot_len);
        let parts = self
            .headers
            .iter_mut()
            .zip(self.iovecs.iter_mut())
            .zip(self.addresses.iter_mut())
            .zip(self.controls.iter_mut())
            .zip(slots);
        for ((((header, iovec), address), control), slot) in parts {
            iovec.iov_base = slot.as_mut_ptr().cast();
            iovec.iov_len = slot.len();
            header.msg_hdr.msg_name = (&raw mut *address).cast();
            header.msg_hdr.msg_namelen =
                std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            header.msg_hdr.msg_iov = &raw mut *iovec;
            header.msg_hdr.msg_iovlen = 1;
            header.msg_hdr.msg_control = control.as_mut_ptr().cast();
            header.msg_hdr.msg_controllen = std::mem::size_of_val(control) as _;
            header.msg_hdr.msg_flags = 0;
            header.msg_len = 0;
        }
        let count = libc::c_uint::try_from(self.headers.len()).unwrap_or(libc::c_uint::MAX);
        // SAFETY: every header points at an iovec, address and control buffer of this
        // batch with their true lengths, all alive and unaliased during the call; the
        // count is at most the number of headers.
        let rc = unsafe {
            libc::recvmmsg(
                fd.as_raw_fd(),
                self.headers.as_mut_ptr(),
                count,
                flags,
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        self.received = usize::try_from(rc).unwrap_or(0).min(self.headers.len());
        Ok(self.received)
    }

    /// The datagrams the last [`receive`](Self::receive) read; one whose sender is no
    /// IP address (which a UDP socket never reports) is left out.
    pub fn datagrams(&self) -> impl Iterator<Item = Datagram<'_>> {
        self.headers
            .iter()
            .zip(&self.addresses)
            .zip(self.buffers.chunks_exact(self.slot_len))
            .take(self.received)
            .filter_map(|((header, address), slot)| {
                let len = (header.msg_len as usize).min(slot.len());
                Some(Datagram {
                    data: slot.get(..len)?,
                    from: socket_address(address, header.msg_hdr.msg_namelen)?,
                    kernel_time: control_time(&header.msg_hdr, libc::SCM_TIMESTAMPNS),
                    truncated: header.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
                })
            })
    }

    /// What the last [`receive_transmit_times`](Self::receive_transmit_times) read:
    /// each sent packet whole as the kernel looped it back (link, network and transport
    /// headers, then the reply) with the time it left, Unix seconds and nanoseconds.
    /// Packets cut short and reports without a software time are left out.
    pub fn transmit_times(&self) -> impl Iterator<Item = (&[u8], (i64, u32))> {
        self.headers
            .iter()
            .zip(self.buffers.chunks_exact(self.slot_len))
            .take(self.received)
            .filter(|(header, _)| header.msg_hdr.msg_flags & libc::MSG_TRUNC == 0)
            .filter_map(|(header, slot)| {
                let len = (header.msg_len as usize).min(slot.len());
                let time = control_time(&header.msg_hdr, libc::SCM_TIMESTAMPING)?;
                Some((slot.get(..len)?, time))
            })
    }
}

/// The IPv4 or IPv6 address the kernel wrote into `storage`.
fn socket_address(
    storage: &libc::sockaddr_storage,
    len: libc::socklen_t,
) -> Option<std::net::SocketAddr> {
    let family = libc::c_int::from(storage.ss_family);
    let fits = |size: usize| usize::try_from(len).is_ok_and(|len| len >= size);
    if family == libc::AF_INET && fits(std::mem::size_of::<libc::sockaddr_in>()) {
        // SAFETY: the kernel wrote a sockaddr_in (its family and length say so) into
        // this storage, which is larger and at least as aligned.
        let v4 = unsafe { &*(&raw const *storage).cast::<libc::sockaddr_in>() };
        let ip = std::net::Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr));
        Some(std::net::SocketAddr::from((ip, u16::from_be(v4.sin_port))))
    } else if family == libc::AF_INET6 && fits(std::mem::size_of::<libc::sockaddr_in6>()) {
        // SAFETY: as above, for a sockaddr_in6.
        let v6 = unsafe { &*(&raw const *storage).cast::<libc::sockaddr_in6>() };
        let ip = std::net::Ipv6Addr::from(v6.sin6_addr.s6_addr);
        Some(std::net::SocketAddr::V6(std::net::SocketAddrV6::new(
            ip,
            u16::from_be(v6.sin6_port),
            v6.sin6_flowinfo,
            v6.sin6_scope_id,
        )))
    } else {
        None
    }
}

/// The time in a received message's `SCM_TIMESTAMPNS` (a timespec) or
/// `SCM_TIMESTAMPING` (three, of which the first is the software time; zero if none)
/// control message, as `kind` says.
fn control_time(header: &libc::msghdr, kind: libc::c_int) -> Option<(i64, u32)> {
    if header.msg_controllen == 0 || header.msg_flags & libc::MSG_CTRUNC != 0 {
        return None;
    }
    // SAFETY: the header's control pointer and length are those the kernel filled in
    // (its own control buffer, still alive); the CMSG macros stay within that length.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(header);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET
                && (*cmsg).cmsg_type == kind
                && (*cmsg).cmsg_len as usize
                    >= libc::CMSG_LEN(std::mem::size_of::<libc::timespec>() as u32) as usize
            {
                let time: libc::timespec = libc::CMSG_DATA(cmsg)
                    .cast::<libc::timespec>()
                    .read_unaligned();
                let nanos = u32::try_from(time.tv_nsec)
                    .ok()
                    .filter(|n| *n < 1_000_000_000)?;
                if time.tv_sec == 0 && nanos == 0 {
                    return None;
                }
                return Some((wide(time.tv_sec), nanos));
            }
            cmsg = libc::CMSG_NXTHDR(header, cmsg);
        }
    }
    None
}

/// Replies to send with one `sendmmsg`: up to `capacity`, each in a buffer of its own
/// that keeps its allocation from batch to batch.
pub struct SendBatch {
    replies: Vec<Vec<u8>>,
    destinations: Vec<socket2::SockAddr>,
    /// Whether each reply asks for its kernel transmit time.
    timestamped: Vec<bool>,
    queued: usize,
    headers: Vec<libc::mmsghdr>,
    iovecs: Vec<libc::iovec>,
    /// The control message that asks for a transmit time, shared (read only) by every
    /// reply that asks, and its length.
    transmit_request: ([u64; 4], usize),
}

/// An `SO_TIMESTAMPING` control message asking for this packet's software transmit
/// time, and its length.
fn transmit_request() -> ([u64; 4], usize) {
    let mut words = [0u64; 4];
    // SAFETY: CMSG_SPACE(4) is 24 bytes, within the 32 of `words`, which is aligned for
    // cmsghdr; CMSG_DATA points inside it.
    let len = unsafe {
        let header = words.as_mut_ptr().cast::<libc::cmsghdr>();
        (*header).cmsg_level = libc::SOL_SOCKET;
        (*header).cmsg_type = libc::SO_TIMESTAMPING;
        (*header).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u32>() as u32) as _;
        libc::CMSG_DATA(header)
            .cast::<u32>()
            .write_unaligned(libc::SOF_TIMESTAMPING_TX_SOFTWARE);
        libc::CMSG_SPACE(std::mem::size_of::<u32>() as u32) as usize
    };
    (words, len)
}

// SAFETY: as for ReceiveBatch: the pointers point into the batch itself and are
// rewritten before each call.
unsafe impl Send for SendBatch {}

impl SendBatch {
    pub fn new(capacity: usize, reply_capacity: usize) -> Self {
        let capacity = capacity.max(1);
        let unspecified = std::net::SocketAddr::from(([0, 0, 0, 0], 0));
        Self {
            replies: (0..capacity)
                .map(|_| Vec::with_capacity(reply_capacity))
                .collect(),
            destinations: vec![socket2::SockAddr::from(unspecified); capacity],
            timestamped: vec![false; capacity],
            queued: 0,
            // SAFETY: all-zero is a valid mmsghdr (null pointers, zero lengths).
            headers: (0..capacity)
                .map(|_| unsafe { std::mem::zeroed() })
                .collect(),
            iovecs: (0..capacity)
                .map(|_| libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                })
                .collect(),
            transmit_request: transmit_request(),
        }
    }

    pub fn len(&self) -> usize {
        self.queued
    }

    pub fn is_empty(&self) -> bool {
        self.queued == 0
    }

    /// An empty buffer for the next reply, or None when the batch is full. The reply
    /// is sent only once [`queue`](Self::queue) names its destination.
    pub fn next_reply(&mut self) -> Option<&mut Vec<u8>> {
        let reply = self.replies.get_mut(self.queued)?;
        reply.clear();
        Some(reply)
    }

    /// Queues the reply written into [`next_reply`](Self::next_reply)'s buffer; with
    /// `timestamped`, it asks for its kernel transmit time (on a socket where
    /// [`enable_transmit_timestamps`] succeeded).
    pub fn queue(&mut self, to: std::net::SocketAddr, timestamped: bool) {
        let slot = self
            .destinations
            .get_mut(self.queued)
            .zip(self.timestamped.get_mut(self.queued));
        if let Some((destination, asks)) = slot {
            *destination = socket2::SockAddr::from(to);
            *asks = timestamped;
            self.queued += 1;
        }
    }

    /// The destination of each queued reply, in order.
    pub fn destinations(&self) -> impl Iterator<Item = std::net::SocketAddr> + '_ {
        self.destinations
            .iter()
            .take(self.queued)
            .filter_map(|d| d.as_socket())
    }

    /// Sends every queued reply and empties the batch. A reply the kernel refuses
    /// (say, an unreachable destination) is skipped, not retried; returns how many were
    /// sent and the first error.
    pub fn send(&mut self, fd: BorrowedFd<'_>) -> (usize, Option<io::Error>) {
        let queued = std::mem::take(&mut self.queued);
        let request = &raw mut self.transmit_request.0;
        let request_len = self.transmit_request.1;
        let parts = self
            .headers
            .iter_mut()
            .zip(self.iovecs.iter_mut())
            .zip(self.replies.iter_mut())
            .zip(self.destinations.iter().zip(&self.timestamped))
            .take(queued);
        for (((header, iovec), reply), (destination, timestamped)) in parts {
            iovec.iov_base = reply.as_mut_ptr().cast();
            iovec.iov_len = reply.len();
            header.msg_hdr.msg_name = destination.as_ptr().cast_mut().cast();
            header.msg_hdr.msg_namelen = destination.len();
            header.msg_hdr.msg_iov = &raw mut *iovec;
            header.msg_hdr.msg_iovlen = 1;
            if *timestamped {
                header.msg_hdr.msg_control = request.cast();
                header.msg_hdr.msg_controllen = request_len as _;
            } else {
                header.msg_hdr.msg_control = std::ptr::null_mut();
                header.msg_hdr.msg_controllen = 0;
            }
            header.msg_hdr.msg_flags = 0;
            header.msg_len = 0;
        }
        let (mut sent, mut first_error, mut next) = (0, None, 0);
        while next < queued {
            let Some(rest) = self.headers.get_mut(next..queued) else {
                break;
            };
            let count = libc::c_uint::try_from(rest.len()).unwrap_or(libc::c_uint::MAX);
            // SAFETY: each header in `rest` points at its reply, destination and (if it
            // asks for a transmit time) the shared control message, alive and
            // unchanged during the call; the count is the length of `rest`.
            let rc = unsafe { libc::sendmmsg(fd.as_raw_fd(), rest.as_mut_ptr(), count, 0) };
            if rc > 0 {
                let done = usize::try_from(rc).unwrap_or(0);
                sent += done;
                next += done;
                continue;
            }
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            first_error.get_or_insert(error);
            // The first of `rest` failed: skip it.
            next += 1;
        }
        (sent, first_error)
    }
}

#[cfg(test)]
mod datagram_tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsFd;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    fn loopback_pair() -> (UdpSocket, UdpSocket) {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        server.set_nonblocking(true).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        (server, client)
    }

    fn receive_all(server: &UdpSocket, batch: &mut ReceiveBatch, expected: usize) -> usize {
        let mut total = 0;
        let mut seen = 0;
        while seen < expected {
            assert!(wait_readable(server.as_fd(), Duration::from_secs(5)).unwrap());
            let n = batch.receive(server.as_fd()).unwrap();
            total += n;
            seen += n;
        }
        total
    }

    #[test]
    fn a_batch_reads_many_datagrams_with_their_kernel_receive_times() {
        let (server, client) = loopback_pair();
        enable_receive_timestamps(server.as_fd()).unwrap();
        let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        for i in 0..10u8 {
            client
                .send_to(&[i; 48], server.local_addr().unwrap())
                .unwrap();
        }
        let mut batch = ReceiveBatch::new(32, 64);
        assert!(wait_readable(server.as_fd(), Duration::from_secs(5)).unwrap());
        // Loopback delivers synchronously: all ten are queued already.
        assert_eq!(batch.receive(server.as_fd()).unwrap(), 10);
        let after = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        for (i, datagram) in batch.datagrams().enumerate() {
            assert_eq!(datagram.data, &[i as u8; 48]);
            assert_eq!(datagram.from, client.local_addr().unwrap());
            assert!(!datagram.truncated);
            let (seconds, nanos) = datagram.kernel_time.unwrap();
            let at = Duration::new(seconds as u64, nanos);
            assert!(before <= at && at <= after, "{before:?} {at:?} {after:?}");
        }
        let error = batch.receive(server.as_fd()).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::WouldBlock);
        assert_eq!(batch.datagrams().count(), 0);
    }

    #[test]
    fn without_timestamps_enabled_there_is_no_kernel_time() {
        let (server, client) = loopback_pair();
        client
            .send_to(&[1; 48], server.local_addr().unwrap())
            .unwrap();
        let mut batch = ReceiveBatch::new(4, 64);
        receive_all(&server, &mut batch, 1);
        assert_eq!(batch.datagrams().next().unwrap().kernel_time, None);
    }

    #[test]
    fn an_oversized_datagram_is_marked_truncated_and_the_batch_goes_on() {
        let (server, client) = loopback_pair();
        let to = server.local_addr().unwrap();
        client.send_to(&[7; 48], to).unwrap();
        client.send_to(&[8; 200], to).unwrap();
        client.send_to(&[9; 48], to).unwrap();
        let mut batch = ReceiveBatch::new(8, 64);
        receive_all(&server, &mut batch, 3);
        let got: Vec<(u8, usize, bool)> = batch
            .datagrams()
            .map(|d| (d.data[0], d.data.len(), d.truncated))
            .collect();
        assert_eq!(got, vec![(7, 48, false), (8, 64, true), (9, 48, false)]);
    }

    #[test]
    fn a_send_batch_delivers_every_reply_to_its_destination() {
        let (server, client) = loopback_pair();
        let other = UdpSocket::bind("127.0.0.1:0").unwrap();
        other
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut batch = SendBatch::new(4, 64);
        for (byte, to) in [(1u8, &client), (2, &other), (3, &client)] {
            batch.next_reply().unwrap().extend_from_slice(&[byte; 48]);
            batch.queue(to.local_addr().unwrap(), false);
        }
        assert_eq!(batch.len(), 3);
        let (sent, error) = batch.send(server.as_fd());
        assert_eq!((sent, error.is_none()), (3, true));
        assert!(batch.is_empty());
        let mut buf = [0u8; 64];
        let read = |socket: &UdpSocket, buf: &mut [u8]| {
            let (n, from) = socket.recv_from(buf).unwrap();
            assert_eq!(from, server.local_addr().unwrap());
            (buf[0], n)
        };
        assert_eq!(read(&client, &mut buf), (1, 48));
        assert_eq!(read(&client, &mut buf), (3, 48));
        assert_eq!(read(&other, &mut buf), (2, 48));
    }

    #[test]
    fn replies_that_ask_get_their_kernel_transmit_time_back_with_the_packet() {
        transmit_times_come_back_on("127.0.0.1:0");
        transmit_times_come_back_on("[::1]:0");
    }

    fn transmit_times_come_back_on(address: &str) {
        let server = UdpSocket::bind(address).unwrap();
        let client = UdpSocket::bind(address).unwrap();
        server.set_nonblocking(true).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        enable_receive_timestamps(server.as_fd()).unwrap();
        enable_transmit_timestamps(server.as_fd()).unwrap();
        let mut batch = SendBatch::new(4, 64);
        for (byte, asks) in [(1u8, true), (2, false), (3, true)] {
            batch.next_reply().unwrap().extend_from_slice(&[byte; 48]);
            batch.queue(client.local_addr().unwrap(), asks);
        }
        let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        assert_eq!(batch.send(server.as_fd()).0, 3);
        let after = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let mut reports = ReceiveBatch::new(4, 256);
        let mut stamped = Vec::new();
        while stamped.len() < 2 {
            assert!(wait_readable(server.as_fd(), Duration::from_secs(5)).unwrap());
            reports.receive_transmit_times(server.as_fd()).unwrap();
            stamped.extend(reports.transmit_times().map(|(packet, (secs, nanos))| {
                // The packet with its headers (IPv6's too, whole): the reply is its tail.
                assert!(packet.len() >= 48 + 28);
                let at = Duration::new(secs as u64, nanos);
                assert!(before <= at && at <= after, "{before:?} {at:?} {after:?}");
                packet[packet.len() - 48..].to_vec()
            }));
        }
        assert_eq!(stamped, vec![vec![1u8; 48], vec![3u8; 48]]);
        // Requests still carry SCM_TIMESTAMPNS alone.
        client
            .send_to(&[4; 48], server.local_addr().unwrap())
            .unwrap();
        let mut requests = ReceiveBatch::new(4, 64);
        receive_all(&server, &mut requests, 1);
        assert!(requests.datagrams().next().unwrap().kernel_time.is_some());
        // Nothing is left on the error queue.
        let left = reports.receive_transmit_times(server.as_fd());
        assert_eq!(left.unwrap_err().kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn a_full_send_batch_takes_no_more_replies() {
        let mut batch = SendBatch::new(1, 64);
        batch.next_reply().unwrap().push(1);
        batch.queue("127.0.0.1:9".parse().unwrap(), false);
        assert!(batch.next_reply().is_none());
        batch.queue("127.0.0.1:9".parse().unwrap(), false);
        assert_eq!(batch.len(), 1);
    }

    #[test]
    fn an_idle_socket_times_out() {
        let (server, _client) = loopback_pair();
        assert!(!wait_readable(server.as_fd(), Duration::from_millis(10)).unwrap());
    }
}

//! Dropping privileges for good: chroot, user, capabilities, no_new_privs, Landlock and
//! seccomp, in that order, each step before the next needs it gone. Everything here
//! runs once, single-threaded, before any runtime exists.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use caps::{CapSet, Capability, CapsHashSet};
use landlock::{
    ABI, Access, AccessFs, AccessNet, CompatLevel, Compatible, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus, Scope, path_beneath_rules,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::sys::{self, User};

/// Which process is being sandboxed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Keeps `CAP_SYS_TIME`; seccomp allows the clock calls and its IPC socket.
    Clock,
    /// No capabilities; seccomp allows networking, timers and its state files.
    Engine,
}

/// Who the children become and where they are jailed: `[sandbox]`, checked.
#[derive(Debug, Clone)]
pub struct Jail {
    pub user: User,
    /// Canonical; root-owned and not group- or world-writable, as is its parent.
    pub state_dir: PathBuf,
}

/// What a sandboxed process ended up with, for its start-up log line (which the tests
/// read: where CAP_SYS_TIME is outside the bounding set, asking for it yields nothing).
#[derive(Debug, Clone)]
pub struct Report {
    pub role: Role,
    pub uid: u32,
    pub gid: u32,
    pub root: PathBuf,
    /// The capabilities asked for, and those held now (permitted = effective).
    pub requested: Vec<Capability>,
    pub held: Vec<Capability>,
    /// Landlock's status, and which scopes the kernel enforces.
    pub landlock: String,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = |caps: &[Capability]| {
            if caps.is_empty() {
                "none".to_string()
            } else {
                caps.iter()
                    .map(|c| c.to_string().to_lowercase())
                    .collect::<Vec<_>>()
                    .join(",")
            }
        };
        write!(
            f,
            "sandboxed {:?} process: uid {} gid {}, root {}, capabilities requested {} held {}, \
             no_new_privs, seccomp filter, landlock {}",
            self.role,
            self.uid,
            self.gid,
            self.root.display(),
            names(&self.requested),
            names(&self.held),
            self.landlock
        )
    }
}

impl Jail {
    /// Looks the user up and checks the state directory. A missing one is created
    /// (root-owned, 0755) if `create` and its parent is root's alone; without `create`
    /// (`ntimed check`) it only has to be creatable. Both are checked whatever the
    /// other's fate, and every problem is in the error, one per line.
    pub fn new(user: &str, state_dir: &Path, create: bool) -> Result<Self, String> {
        match (sandbox_user(user), checked_state_dir(state_dir, create)) {
            (Ok(user), Ok(state_dir)) => Ok(Self { user, state_dir }),
            (Err(e), Ok(_)) | (Ok(_), Err(e)) => Err(e),
            (Err(user), Err(dir)) => Err(format!("{user}\n{dir}")),
        }
    }

    /// The state directory (canonical; it may not exist yet under `ntimed check`).
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Copies the resolver's files into `STATE/etc`, so that names still resolve in
    /// the chroot (a copy taken at start, as mail servers' chroots do).
    pub fn copy_resolver_files(&self) -> Result<(), String> {
        use std::os::unix::fs::DirBuilderExt;
        let etc = self.state_dir.join("etc");
        match std::fs::symlink_metadata(&etc) {
            Ok(meta) if meta.is_dir() => check_root_owned_dir(&etc)?,
            Ok(_) => return Err(format!("{}: not a directory", etc.display())),
            Err(_) => std::fs::DirBuilder::new()
                .mode(0o755)
                .create(&etc)
                .map_err(|e| format!("{}: {e}", etc.display()))?,
        }
        for name in ["resolv.conf", "hosts"] {
            let Ok(text) = std::fs::read_to_string(Path::new("/etc").join(name)) else {
                continue;
            };
            let copy = etc.join(name);
            // write_atomic makes the file 0600; the engine's user must read it.
            crate::util::write_atomic(&copy, &text)
                .and_then(|()| {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o644))
                })
                .map_err(|e| format!("{}: {e}", copy.display()))?;
        }
        Ok(())
    }

    /// Makes `dir` (which must lie in the state directory, directly or deeper in
    /// root-owned directories) a private directory of the user, creating it if
    /// needed. Returns its path as seen from inside the chroot.
    pub fn user_dir(&self, dir: &Path) -> Result<PathBuf, String> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let (dir, inside) = self.check_user_dir(dir)?;
        if std::fs::symlink_metadata(&dir).is_err() {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .map_err(|e| format!("{}: {e}", dir.display()))?;
            std::os::unix::fs::chown(&dir, Some(self.user.uid), Some(self.user.gid))
                .map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(inside)
    }

    /// What [`Jail::user_dir`] checks, changing nothing: `dir` lies in the state
    /// directory under root-owned directories, and is the user's if it exists.
    /// Returns its path outside and inside the chroot.
    pub fn check_user_dir(&self, dir: &Path) -> Result<(PathBuf, PathBuf), String> {
        let (dir, inside) = place_in_jail(&self.state_dir, dir)?;
        match std::fs::symlink_metadata(&dir) {
            Ok(meta) if !meta.is_dir() => Err(format!("{}: not a directory", dir.display())),
            Ok(meta) if meta.uid() != self.user.uid => Err(format!(
                "{}: owned by uid {}, not {}: chown {} it",
                dir.display(),
                meta.uid(),
                self.user.name,
                self.user.name
            )),
            _ => Ok((dir, inside)),
        }
    }
}

/// Where `dir` is outside and inside the jail at `state_dir`: it must lie in it, under
/// directories only root may change (the state directory itself may be yet to be made,
/// under `ntimed check`).
pub fn place_in_jail(state_dir: &Path, dir: &Path) -> Result<(PathBuf, PathBuf), String> {
    let outside = |why: &str| {
        format!(
            "{}: {why}; with privilege separation the engine writes only inside the \
             state directory {}",
            dir.display(),
            state_dir.display()
        )
    };
    let parent = dir
        .parent()
        .and_then(|p| std::fs::canonicalize(p).ok())
        .or_else(|| {
            let parent = dir.parent()?;
            let (grandparent, name) = creatable(parent).ok()?;
            Some(grandparent.join(name)).filter(|p| p == state_dir)
        })
        .ok_or_else(|| outside("its parent does not exist"))?;
    let name = dir.file_name().ok_or_else(|| outside("no name"))?;
    let inside = parent
        .strip_prefix(state_dir)
        .map_err(|_| outside("outside the state directory"))?
        .to_path_buf();
    if parent.exists() {
        check_root_owned_dir(&parent)?;
    }
    Ok((parent.join(name), Path::new("/").join(inside).join(name)))
}

/// The user the unprivileged processes become: it must exist and not be root.
pub fn sandbox_user(user: &str) -> Result<User, String> {
    let found = sys::lookup_user(user)
        .map_err(|e| format!("looking up user {user:?}: {e}"))?
        .ok_or_else(|| {
            format!(
                "user {user:?} does not exist: create it (useradd --system --no-create-home \
                 --shell /usr/sbin/nologin {user}) or name another in [sandbox] user"
            )
        })?;
    if found.uid == 0 || found.gid == 0 {
        return Err(format!("user {user:?} is root: name an unprivileged user"));
    }
    Ok(found)
}

/// The state directory, canonical: root's, enterable by others, in a parent only root
/// may change; created if missing and `create` (else only checked to be creatable).
pub fn checked_state_dir(state_dir: &Path, create: bool) -> Result<PathBuf, String> {
    let state_dir = match std::fs::symlink_metadata(state_dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let (parent, name) = creatable(state_dir)?;
            if !create {
                return Ok(parent.join(name));
            }
            create_root_dir(&parent.join(name))?
        }
        _ => std::fs::canonicalize(state_dir)
            .map_err(|e| format!("state directory {}: {e}", state_dir.display()))?,
    };
    check_root_owned_dir(&state_dir)?;
    let mode = std::fs::metadata(&state_dir).map_or(0, |m| m.mode());
    if mode & 0o001 == 0 {
        return Err(format!(
            "{}: the engine's user cannot enter its own jail: chmod 755 it",
            state_dir.display()
        ));
    }
    if let Some(parent) = state_dir.parent() {
        check_root_owned_dir(parent)?;
    }
    Ok(state_dir)
}

/// The canonical parent and the name of a directory that does not exist yet, if root
/// alone may create it there.
fn creatable(dir: &Path) -> Result<(PathBuf, std::ffi::OsString), String> {
    let missing = |why: &str| format!("state directory {}: {why}", dir.display());
    let name = dir.file_name().ok_or_else(|| missing("no name"))?;
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let parent =
        std::fs::canonicalize(parent).map_err(|_| missing("neither it nor its parent exists"))?;
    check_root_owned_dir(&parent)
        .map_err(|e| missing(&format!("cannot be created safely: {e}")))?;
    Ok((parent, name.to_os_string()))
}

/// Creates `dir`, root's and 0755 (the engine's user must enter it), and returns it.
/// The mode is set through the directory just made, opened without following links,
/// so that a path swapped meanwhile cannot turn the chmod onto something else.
fn create_root_dir(dir: &Path) -> Result<PathBuf, String> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let fail = |e: std::io::Error| format!("state directory {}: cannot create: {e}", dir.display());
    std::fs::DirBuilder::new()
        .mode(0o755)
        .create(dir)
        .map_err(fail)?;
    let made = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_DIRECTORY)
        .open(dir)
        .map_err(fail)?;
    // The umask may have taken bits away.
    made.set_permissions(std::fs::Permissions::from_mode(0o755))
        .map_err(fail)?;
    tracing::info!(
        "created the state directory {} (root's, mode 0755)",
        dir.display()
    );
    std::fs::canonicalize(dir).map_err(fail)
}

/// A directory only root may change: owned by root, no group or world write bit, and
/// not a symbolic link.
fn check_root_owned_dir(dir: &Path) -> Result<(), String> {
    let meta = std::fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if !meta.is_dir() {
        return Err(format!("{}: not a directory", dir.display()));
    }
    if meta.uid() != 0 || meta.mode() & 0o022 != 0 {
        return Err(format!(
            "{}: must be owned by root and not writable by group or others (chown root: and \
             chmod go-w it), or the unprivileged side could change its own jail",
            dir.display()
        ));
    }
    Ok(())
}

/// Drops everything `role` does not need; `writable` are directories (inside the jail,
/// as seen after the chroot) the engine may write; `death_signal` arrives when the
/// supervisor, process `parent`, dies. Irreversible.
pub fn enter(
    jail: &Jail,
    role: Role,
    writable: &[PathBuf],
    death_signal: libc::c_int,
    parent: u32,
) -> Result<Report, String> {
    let fail = |what: &str, e: &dyn std::fmt::Display| format!("sandbox: {what}: {e}");
    let requested: Vec<Capability> = match role {
        Role::Clock => vec![Capability::CAP_SYS_TIME],
        Role::Engine => Vec::new(),
    };
    // What we can keep: only what we hold now (not CAP_SYS_TIME when a test or an
    // administrator removed it from the bounding set).
    let permitted = caps::read(None, CapSet::Permitted).map_err(|e| fail("capabilities", &e))?;
    let keep: CapsHashSet = requested
        .iter()
        .copied()
        .filter(|c| permitted.contains(c))
        .collect();

    std::os::unix::fs::chroot(&jail.state_dir).map_err(|e| fail("chroot", &e))?;
    std::env::set_current_dir("/").map_err(|e| fail("chdir /", &e))?;
    let bounding = caps::read(None, CapSet::Bounding).map_err(|e| fail("bounding set", &e))?;
    for cap in bounding.difference(&keep) {
        caps::drop(None, CapSet::Bounding, *cap).map_err(|e| fail("bounding set", &e))?;
    }
    sys::set_keep_capabilities(!keep.is_empty()).map_err(|e| fail("keepcaps", &e))?;
    sys::become_user(&jail.user).map_err(|e| fail("setresuid", &e))?;
    sys::set_keep_capabilities(false).map_err(|e| fail("keepcaps", &e))?;
    caps::clear(None, CapSet::Ambient).map_err(|e| fail("ambient set", &e))?;
    caps::clear(None, CapSet::Inheritable).map_err(|e| fail("inheritable set", &e))?;
    caps::set(None, CapSet::Permitted, &keep).map_err(|e| fail("permitted set", &e))?;
    caps::set(None, CapSet::Effective, &keep).map_err(|e| fail("effective set", &e))?;
    sys::set_parent_death_signal(death_signal).map_err(|e| fail("death signal", &e))?;
    // A supervisor that died before the line above would never send the signal.
    if std::os::unix::process::parent_id() != parent {
        return Err("the supervisor is gone".into());
    }
    sys::set_no_new_privileges().map_err(|e| fail("no_new_privs", &e))?;
    sys::set_not_dumpable().map_err(|e| fail("dumpable", &e))?;
    let mut held: Vec<Capability> = caps::read(None, CapSet::Effective)
        .map_err(|e| fail("capabilities", &e))?
        .into_iter()
        .collect();
    held.sort_by_key(|c| c.index());
    let landlock = restrict_files(role, writable).map_err(|e| fail("landlock", &e))?;
    install_seccomp(role).map_err(|e| fail("seccomp", &e))?;
    Ok(Report {
        role,
        uid: jail.user.uid,
        gid: jail.user.gid,
        root: jail.state_dir.clone(),
        requested,
        held,
        landlock,
    })
}

/// Landlock, best effort (it is an extra layer over the chroot): the engine reads its
/// jail and writes only `writable`, binds no TCP port (its listeners are inherited),
/// signals no process outside itself and reaches no abstract Unix socket outside
/// itself (Landlock ABI 6, Linux 6.12: the host's D-Bus, X11, systemd notify or any
/// other `@name` socket, which chroot does not hide); the clock process touches no
/// file at all.
fn restrict_files(role: Role, writable: &[PathBuf]) -> Result<String, String> {
    let abi = ABI::V6;
    let err = |e: landlock::RulesetError| e.to_string();
    let ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(abi))
        .map_err(err)?
        .handle_access(AccessNet::BindTcp)
        .map_err(err)?
        .scope(Scope::Signal | Scope::AbstractUnixSocket)
        .map_err(err)?
        .create()
        .map_err(err)?;
    let ruleset = match role {
        Role::Clock => ruleset,
        Role::Engine => ruleset
            .add_rules(path_beneath_rules(["/"], AccessFs::from_read(abi)))
            .map_err(err)?
            .add_rules(path_beneath_rules(writable, AccessFs::from_all(abi)))
            .map_err(err)?,
    };
    let status = ruleset.restrict_self().map_err(err)?;
    let kernel = ABI::from(status.landlock);
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => {
            "enforced (abstract Unix sockets and signals scoped)".to_string()
        }
        RulesetStatus::PartiallyEnforced if kernel >= ABI::V6 => {
            "partly enforced (older kernel)".to_string()
        }
        RulesetStatus::PartiallyEnforced => format!(
            "partly enforced (kernel Landlock ABI {kernel}: abstract Unix sockets and \
             signals are not scoped before ABI 6, Linux 6.12)"
        ),
        RulesetStatus::NotEnforced => "not supported by the kernel".to_string(),
    })
}

/// The one `socketpair` type the engine may ask for: what mio passes for tokio's
/// signal driver (`mio::net::UnixStream::pair`).
pub const ENGINE_SOCKETPAIR_TYPE: i32 =
    libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;

/// The system calls each role may make. Anything else kills the clock process, and
/// fails with EPERM in the engine (whose libraries may probe for optional calls).
fn allowed_syscalls(role: Role) -> Vec<i64> {
    // Both: memory, exit, signals, time, logging to stderr, the IPC socket.
    let mut calls = vec![
        libc::SYS_read,
        libc::SYS_write,
        libc::SYS_close,
        libc::SYS_recvfrom,
        libc::SYS_sendto,
        libc::SYS_recvmsg,
        libc::SYS_sendmsg,
        libc::SYS_setsockopt,
        libc::SYS_mmap,
        libc::SYS_munmap,
        libc::SYS_mremap,
        libc::SYS_brk,
        libc::SYS_madvise,
        libc::SYS_futex,
        libc::SYS_clock_gettime,
        libc::SYS_gettimeofday,
        libc::SYS_getrandom,
        libc::SYS_rt_sigreturn,
        libc::SYS_rt_sigprocmask,
        libc::SYS_sigaltstack,
        libc::SYS_exit,
        libc::SYS_exit_group,
        libc::SYS_getpid,
        libc::SYS_gettid,
    ];
    match role {
        // std checks a descriptor is still open before closing it (debug builds).
        Role::Clock => calls.extend([
            libc::SYS_fcntl,
            libc::SYS_adjtimex,
            // The drift file, through the descriptor opened before the drop.
            libc::SYS_pwrite64,
            libc::SYS_ftruncate,
            libc::SYS_fdatasync,
        ]),
        Role::Engine => calls.extend([
            // Read-only adjtimex (the kernel refuses changes without CAP_SYS_TIME).
            libc::SYS_adjtimex,
            // Threads and the runtime.
            libc::SYS_clone,
            // Allowed here, answered ENOSYS by a second filter (see install_seccomp).
            libc::SYS_clone3,
            libc::SYS_set_robust_list,
            libc::SYS_rseq,
            libc::SYS_sched_yield,
            libc::SYS_sched_getaffinity,
            libc::SYS_mprotect,
            libc::SYS_epoll_create1,
            libc::SYS_epoll_ctl,
            libc::SYS_epoll_pwait,
            libc::SYS_eventfd2,
            libc::SYS_ppoll,
            libc::SYS_nanosleep,
            libc::SYS_clock_nanosleep,
            libc::SYS_rt_sigaction,
            libc::SYS_prctl,
            libc::SYS_ioctl,
            // Descriptor flags only (the commands are checked below).
            libc::SYS_fcntl,
            libc::SYS_pipe2,
            // tokio's signal driver wakes itself through a local stream pair (the
            // arguments are checked below).
            libc::SYS_socketpair,
            // Sockets (the domain is checked below).
            libc::SYS_socket,
            libc::SYS_connect,
            libc::SYS_bind,
            libc::SYS_accept4,
            libc::SYS_getsockname,
            libc::SYS_getpeername,
            libc::SYS_getsockopt,
            libc::SYS_shutdown,
            libc::SYS_sendmmsg,
            libc::SYS_recvmmsg,
            libc::SYS_writev,
            libc::SYS_readv,
            // Its state files (cookie keys) and the resolver's copies in the jail.
            libc::SYS_openat,
            libc::SYS_newfstatat,
            libc::SYS_fstat,
            libc::SYS_statx,
            libc::SYS_lseek,
            libc::SYS_fsync,
            libc::SYS_fdatasync,
            libc::SYS_renameat,
            libc::SYS_unlinkat,
            libc::SYS_getdents64,
            libc::SYS_getcwd,
            libc::SYS_uname,
        ]),
    }
    #[cfg(target_arch = "x86_64")]
    if role == Role::Engine {
        calls.extend([
            libc::SYS_epoll_wait,
            libc::SYS_poll,
            libc::SYS_open,
            libc::SYS_stat,
            libc::SYS_rename,
            libc::SYS_unlink,
            libc::SYS_arch_prctl,
        ]);
    }
    calls
}

fn install_seccomp(role: Role) -> Result<(), String> {
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(|e| e.to_string())?;
    let err = |e: seccompiler::BackendError| e.to_string();
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = allowed_syscalls(role)
        .into_iter()
        .map(|call| (call, Vec::new()))
        .collect();
    if role == Role::Engine {
        // New threads only: clone without CLONE_THREAD would be a fork.
        let thread = SeccompCondition::new(
            0,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(libc::CLONE_THREAD as u64),
            libc::CLONE_THREAD as u64,
        )
        .map_err(err)?;
        rules.insert(
            libc::SYS_clone,
            vec![SeccompRule::new(vec![thread]).map_err(err)?],
        );
        // Calls allowed only with a given argument (by index).
        let arg_is = |index: u8, value: u64| -> Result<SeccompRule, String> {
            SeccompRule::new(vec![
                SeccompCondition::new(index, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
                    .map_err(err)?,
            ])
            .map_err(err)
        };
        let unsigned = |n: i32| u64::try_from(n).map_err(|e| e.to_string());
        // Internet sockets, and netlink for the resolver's interface check.
        rules.insert(
            libc::SYS_socket,
            vec![
                arg_is(0, unsigned(libc::AF_INET)?)?,
                arg_is(0, unsigned(libc::AF_INET6)?)?,
                arg_is(0, unsigned(libc::AF_NETLINK)?)?,
            ],
        );
        // Only the pair tokio's signal driver makes (mio's `UnixStream::pair`): a
        // connected AF_UNIX stream can neither send to nor connect to another socket.
        // A datagram pair could send to any abstract `@name` socket on the host.
        rules.insert(
            libc::SYS_socketpair,
            vec![
                SeccompRule::new(vec![
                    SeccompCondition::new(
                        0,
                        SeccompCmpArgLen::Dword,
                        SeccompCmpOp::Eq,
                        unsigned(libc::AF_UNIX)?,
                    )
                    .map_err(err)?,
                    SeccompCondition::new(
                        1,
                        SeccompCmpArgLen::Dword,
                        SeccompCmpOp::Eq,
                        unsigned(ENGINE_SOCKETPAIR_TYPE)?,
                    )
                    .map_err(err)?,
                    SeccompCondition::new(2, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, 0)
                        .map_err(err)?,
                ])
                .map_err(err)?,
            ],
        );
        // Naming threads, and nothing else prctl can do.
        rules.insert(
            libc::SYS_prctl,
            vec![arg_is(0, unsigned(libc::PR_SET_NAME)?)?],
        );
        // Descriptor flags, but never O_ASYNC with F_SETOWN/F_SETSIG: that would let
        // the engine have the kernel signal another process of its user.
        let no_async = SeccompRule::new(vec![
            SeccompCondition::new(
                1,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                unsigned(libc::F_SETFL)?,
            )
            .map_err(err)?,
            SeccompCondition::new(
                2,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::MaskedEq(unsigned(libc::O_ASYNC)?),
                0,
            )
            .map_err(err)?,
        ])
        .map_err(err)?;
        rules.insert(
            libc::SYS_fcntl,
            vec![
                arg_is(1, unsigned(libc::F_GETFD)?)?,
                arg_is(1, unsigned(libc::F_SETFD)?)?,
                arg_is(1, unsigned(libc::F_GETFL)?)?,
                arg_is(1, unsigned(libc::F_DUPFD_CLOEXEC)?)?,
                no_async,
            ],
        );
        // Non-blocking and close-on-exec switches, and the PHC and PPS refclocks'
        // read-only queries on the devices opened before the drop (setting a PPS edge
        // is done then too, so PPS_SETPARAMS stays out).
        rules.insert(
            libc::SYS_ioctl,
            vec![
                arg_is(1, libc::FIONBIO)?,
                arg_is(1, libc::FIOCLEX)?,
                arg_is(1, u64::from(crate::sys::PTP_SYS_OFFSET))?,
                arg_is(1, u64::from(crate::sys::PTP_SYS_OFFSET_EXTENDED))?,
                arg_is(1, u64::from(crate::sys::PTP_SYS_OFFSET_PRECISE))?,
                arg_is(1, u64::from(crate::sys::PPS_FETCH))?,
            ],
        );
    }
    let mismatch = match role {
        Role::Clock => SeccompAction::KillProcess,
        Role::Engine => SeccompAction::Errno(libc::EPERM as u32),
    };
    let allowlist: BpfProgram = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, arch)
        .map_err(err)?
        .try_into()
        .map_err(err)?;
    // glibc starts threads with clone3 and falls back to clone only on ENOSYS; clone3's
    // flags sit behind a pointer that seccomp cannot read, so it gets ENOSYS. Of two
    // filters' verdicts the stricter wins, so ENOSYS beats the allowlist's Allow; this
    // one goes first because the allowlist forbids installing more filters.
    let no_clone3: BpfProgram = SeccompFilter::new(
        [(libc::SYS_clone3, Vec::new())].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )
    .map_err(err)?
    .try_into()
    .map_err(err)?;
    seccompiler::apply_filter_all_threads(&no_clone3).map_err(|e| e.to_string())?;
    seccompiler::apply_filter_all_threads(&allowlist).map_err(|e| e.to_string())?;
    Ok(())
}

//! Privilege separation. `ntimed run` started as root splits in three:
//!
//! ```text
//! supervisor (root, no network input): reads the config, binds the sockets, starts
//!  │   the two children by re-executing itself, waits; stops both if either dies
//!  ├─ clock process: CAP_SYS_TIME only, its own user, chrooted, seccomp (the clock
//!  │      calls and its IPC socket); applies what [`policy`] allows
//!  └─ engine: no capabilities, its own user, chrooted to the state directory,
//!         Landlock and seccomp; runs tokio and every protocol
//! ```
//!
//! * [`ipc`]: the fixed 32-byte frames between engine and clock process.
//! * [`policy`]: what the clock process lets the engine do (sans-IO).
//! * [`clock_process`]: the privileged loop.
//! * [`reload_link`]: the supervisor's end of the reload link (SIGHUP, `ctl reload`).
//! * [`remote`]: the engine's [`crate::clock::Clock`] that forwards commands.
//! * [`sandbox`]: chroot, user, capabilities, no_new_privs, Landlock, seccomp.
//!
//! The children are started with `exec`, not just `fork`, so each begins as a fresh
//! single-threaded program with none of the supervisor's memory; they take their
//! descriptors by the numbers given on the command line. Without root, `ntimed run`
//! stays one process and accepts only the `observe` and `simulated` clocks.

pub mod clock_process;
pub mod ipc;
pub mod policy;
pub mod reload_link;
pub mod remote;
pub mod sandbox;

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, ExitStatus};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::clock::SoftwareClock;
use crate::clock::system::SystemClock;
use crate::config::{ClockMode, Config, Loaded};
use crate::daemon::reload;
use crate::daemon::run::{self, Listeners};
use crate::sys;
use clock_process::{DriftFile, HeldClock, PolicyRecord};
use policy::{Policy, PolicyConfig};
use remote::{LocalView, RemoteClock};
use sandbox::{Jail, Role};

/// The hidden subcommands the supervisor runs its children as.
pub const CLOCK_COMMAND: &str = "privsep-clock";
pub const ENGINE_COMMAND: &str = "privsep-engine";

/// Signals the supervisor takes synchronously (and its children unblock at once).
const SUPERVISOR_SIGNALS: [libc::c_int; 4] =
    [libc::SIGTERM, libc::SIGINT, libc::SIGCHLD, libc::SIGHUP];
/// How long children get to stop before they are killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// What a child needs from the supervisor, as its command line carries it.
#[derive(Debug, Clone, clap::Args)]
pub struct ChildArgs {
    #[arg(long)]
    pub config: PathBuf,
    /// The supervisor's pid: a child whose parent is already someone else exits.
    #[arg(long)]
    pub parent: u32,
    /// Its end of the engine–clock socket pair.
    #[arg(long)]
    pub ipc_fd: i32,
    /// Nanoseconds since 1970 that the simulated clock's model counts from, shared by
    /// the clock process and the engine's mirror.
    #[arg(long)]
    pub epoch_ns: u64,
    /// Engine: the bound `[[server]]` sockets, in config order.
    #[arg(long, value_delimiter = ',')]
    pub udp_fds: Vec<i32>,
    /// Engine: the bound `[[nts-ke-server]]` listeners, in config order.
    #[arg(long, value_delimiter = ',')]
    pub tcp_fds: Vec<i32>,
    /// Engine: the bound control socket.
    #[arg(long)]
    pub control_fd: Option<i32>,
    /// Engine: its end of the reload link to the supervisor.
    #[arg(long)]
    pub reload_fd: Option<i32>,
    /// Engine: the bound `[metrics]` listener.
    #[arg(long)]
    pub metrics_fd: Option<i32>,
    /// Engine: the SOCK `[[refclock]]` sockets, in config order (made by the
    /// supervisor at their paths, outside the chroot).
    #[arg(long, value_delimiter = ',')]
    pub refclock_fds: Vec<i32>,
    /// Engine: a pipe to write one byte to once serving.
    #[arg(long)]
    pub ready_fd: Option<i32>,
}

/// Starts `command` with `fds` inherited (at their current numbers): each is made
/// inheritable just for the spawn. The caller must be single-threaded, or another
/// thread's spawn could inherit them too.
pub fn spawn_with_fds(command: &mut Command, fds: &[BorrowedFd<'_>]) -> std::io::Result<Child> {
    for fd in fds {
        sys::set_inheritable(*fd, true)?;
    }
    let child = command.spawn();
    for fd in fds {
        sys::set_inheritable(*fd, false)?;
    }
    child
}

fn sandbox_jail(loaded: &Loaded, create: bool) -> Result<Jail, String> {
    let section = loaded.config.sandbox.clone().unwrap_or_default();
    Jail::new(&section.user, &loaded.path(&section.state_dir), create)
}

/// What `ntimed run` as root checks of `[sandbox]` before it starts, changing nothing
/// (for `ntimed check`): the user, the state directory, and `[nts] key-dir` inside it.
pub fn check_sandbox(loaded: &Loaded, problems: &mut crate::util::Problems) {
    let section = loaded.config.sandbox.clone().unwrap_or_default();
    let user = problems.take(sandbox::sandbox_user(&section.user));
    let state_dir = sandbox::checked_state_dir(&loaded.path(&section.state_dir), false);
    let Some(state_dir) = problems.take(state_dir) else {
        return;
    };
    let Some(dir) = loaded.config.nts.as_ref().and_then(|n| n.key_dir.as_ref()) else {
        return;
    };
    let dir = loaded.path(dir);
    match user {
        Some(_) => problems.take(sandbox_jail(loaded, false).and_then(|j| j.check_user_dir(&dir))),
        // Without the user, at least where it is.
        None => problems.take(sandbox::place_in_jail(&state_dir, &dir)),
    };
}

/// The software clock `[clock]` asks for (`None` for the kernel clock), counting from
/// the epoch both children were given, so that the engine's mirror and the clock
/// process's clock are the same clock. (The config allows a simulated offset and
/// frequency only with `mode = "simulated"`; they are zero for `observe`.)
fn software_clock(
    section: &crate::config::ClockSection,
    args: &ChildArgs,
) -> Option<SoftwareClock> {
    let epoch = SystemTime::UNIX_EPOCH + Duration::from_nanos(args.epoch_ns);
    match section.mode {
        ClockMode::System => None,
        ClockMode::Observe | ClockMode::Simulated => Some(SoftwareClock::with_epoch(
            epoch,
            section.simulated_offset,
            section.simulated_frequency,
        )),
    }
}

fn child_command(subcommand: &str, config: &std::path::Path, log: &str) -> Command {
    // /proc/self/exe is this very binary even if its path was replaced meanwhile.
    let mut command = Command::new("/proc/self/exe");
    command
        .arg("--log-level")
        .arg(log)
        .arg(subcommand)
        .arg("--config")
        .arg(config)
        .arg("--parent")
        .arg(std::process::id().to_string());
    command
}

fn fd_list(fds: &[BorrowedFd<'_>]) -> String {
    fds.iter()
        .map(|fd| fd.as_raw_fd().to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// `ntimed run` as root: check, bind, start both children, and wait. Exits non-zero if
/// either child fails or dies on its own.
pub fn supervise(config: &std::path::Path, log_level: tracing::Level) -> Result<ExitCode, String> {
    // Whatever started us may have leaked descriptors (a directory outside the jail,
    // say); none of them may reach the children.
    sys::close_on_exec_from(3).map_err(|e| format!("close_range: {e}"))?;
    let config = std::fs::canonicalize(config).map_err(|e| format!("{}: {e}", config.display()))?;
    let loaded = Config::load(&config).map_err(|e| e.to_string())?;
    // Checked here too, so that a bad user or state directory stops the start at once.
    sandbox_jail(&loaded, true)?;
    let listeners = Listeners::bind(&loaded, true)?;
    fn io(what: &'static str) -> impl Fn(std::io::Error) -> String {
        move |e| format!("{what}: {e}")
    }
    let (engine_end, clock_end) = sys::seqpacket_pair().map_err(io("socketpair"))?;
    let (mut ready_reader, ready_writer) = std::io::pipe().map_err(io("pipe"))?;
    let epoch_ns = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    let log = log_level.to_string();
    let (reload_link, engine_reload_end) =
        std::os::unix::net::UnixStream::pair().map_err(io("socketpair"))?;
    sys::block_signals(&SUPERVISOR_SIGNALS, true).map_err(io("blocking signals"))?;
    // Ignored as well as blocked: a blocked signal is never discarded, so sigtimedwait
    // still takes it here, while the children (whose mask is cleared at exec) inherit
    // the ignoring and cannot be stopped by a SIGHUP before they set up their own.
    sys::ignore_signal(libc::SIGHUP).map_err(io("ignoring SIGHUP"))?;

    let mut clock = spawn_with_fds(
        child_command(CLOCK_COMMAND, &config, &log)
            .arg("--ipc-fd")
            .arg(clock_end.as_raw_fd().to_string())
            .arg("--epoch-ns")
            .arg(epoch_ns.to_string()),
        &[clock_end.as_fd()],
    )
    .map_err(io("starting the clock process"))?;
    drop(clock_end);
    let udp: Vec<BorrowedFd<'_>> = listeners.udp.iter().flatten().map(|s| s.as_fd()).collect();
    let tcp: Vec<BorrowedFd<'_>> = listeners.tcp.iter().map(|s| s.as_fd()).collect();
    let mut engine_command = child_command(ENGINE_COMMAND, &config, &log);
    engine_command
        .arg("--ipc-fd")
        .arg(engine_end.as_raw_fd().to_string())
        .arg("--epoch-ns")
        .arg(epoch_ns.to_string())
        .arg("--ready-fd")
        .arg(ready_writer.as_raw_fd().to_string())
        .arg("--reload-fd")
        .arg(engine_reload_end.as_raw_fd().to_string());
    if !udp.is_empty() {
        engine_command.arg("--udp-fds").arg(fd_list(&udp));
    }
    if !tcp.is_empty() {
        engine_command.arg("--tcp-fds").arg(fd_list(&tcp));
    }
    let control = listeners.control.as_ref().map(|l| l.as_fd());
    if let Some(fd) = control {
        engine_command
            .arg("--control-fd")
            .arg(fd.as_raw_fd().to_string());
    }
    let metrics = listeners.metrics.as_ref().map(|l| l.as_fd());
    if let Some(fd) = metrics {
        engine_command
            .arg("--metrics-fd")
            .arg(fd.as_raw_fd().to_string());
    }
    let refclocks: Vec<BorrowedFd<'_>> = listeners.refclocks.iter().map(|s| s.as_fd()).collect();
    if !refclocks.is_empty() {
        engine_command
            .arg("--refclock-fds")
            .arg(fd_list(&refclocks));
    }
    let fds: Vec<BorrowedFd<'_>> = [
        engine_end.as_fd(),
        ready_writer.as_fd(),
        engine_reload_end.as_fd(),
    ]
    .into_iter()
    .chain(udp.iter().copied())
    .chain(tcp.iter().copied())
    .chain(control)
    .chain(metrics)
    .chain(refclocks.iter().copied())
    .collect();
    let engine = spawn_with_fds(&mut engine_command, &fds);
    drop((fds, refclocks));
    drop((engine_end, ready_writer, engine_reload_end, listeners));
    let mut engine = match engine {
        Ok(engine) => engine,
        Err(e) => {
            let _ = clock.kill();
            let _ = clock.wait();
            return Err(format!("starting the engine: {e}"));
        }
    };
    tracing::info!(
        "privilege separation: clock process {}, engine {}",
        clock.id(),
        engine.id()
    );
    std::thread::spawn(move || {
        let mut byte = [0u8; 1];
        if matches!(ready_reader.read(&mut byte), Ok(1)) {
            notify_systemd("READY=1");
        }
    });
    // Only now, with both children started: a second thread during a spawn could
    // leak the descriptors made inheritable for it.
    let (hangups, hangups_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || reload_link::serve(reload_link, &loaded, &hangups_rx));
    Ok(wait_for_children(&mut clock, &mut engine, &hangups))
}

/// Waits until both children have exited, stopping the engine on SIGTERM/SIGINT and
/// both when either dies first. Success only for a requested, clean stop.
fn wait_for_children(
    clock: &mut Child,
    engine: &mut Child,
    hangups: &std::sync::mpsc::Sender<()>,
) -> ExitCode {
    let mut clock_status: Option<ExitStatus> = None;
    let mut engine_status: Option<ExitStatus> = None;
    let mut requested = false;
    let mut kill_at: Option<Instant> = None;
    loop {
        let signal =
            sys::wait_for_signal(&SUPERVISOR_SIGNALS, Duration::from_millis(200)).unwrap_or(None);
        // Reap first: a pid is signalled only while its process is known to be ours.
        engine_status = engine_status.or_else(|| engine.try_wait().ok().flatten());
        clock_status = clock_status.or_else(|| clock.try_wait().ok().flatten());
        if signal == Some(libc::SIGHUP) && !requested {
            let _ = hangups.send(());
        }
        if matches!(signal, Some(libc::SIGTERM | libc::SIGINT)) && !requested {
            tracing::info!("stopping");
            requested = true;
            if engine_status.is_none() {
                let _ = sys::send_signal(engine.id(), libc::SIGTERM);
            }
            kill_at.get_or_insert(Instant::now() + STOP_GRACE);
        }
        match (engine_status, clock_status) {
            (Some(_), Some(_)) => break,
            // The engine's end of the link closed with it: the clock process follows.
            (Some(status), None) if kill_at.is_none() => {
                if !requested {
                    tracing::error!("the engine exited ({status}); stopping the clock process");
                }
                kill_at = Some(Instant::now() + STOP_GRACE);
            }
            // A clean exit means the engine closed the link: it is on its way out
            // (perhaps still printing why), so it is only waited for.
            (None, Some(status)) if kill_at.is_none() => {
                if !status.success() {
                    tracing::error!("the clock process exited ({status}); stopping the engine");
                    let _ = sys::send_signal(engine.id(), libc::SIGTERM);
                }
                kill_at = Some(Instant::now() + STOP_GRACE);
            }
            _ => {}
        }
        if kill_at.is_some_and(|t| Instant::now() >= t) {
            if engine_status.is_none() {
                let _ = engine.kill();
            }
            if clock_status.is_none() {
                let _ = clock.kill();
            }
        }
    }
    let clean = |s: Option<ExitStatus>| s.is_some_and(|s| s.success());
    if requested && clean(engine_status) && clean(clock_status) {
        return ExitCode::SUCCESS;
    }
    // The engine's own code says most (2: it could not load the configuration).
    match engine_status.and_then(|s| s.code()) {
        Some(code) if code != 0 => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        _ => ExitCode::FAILURE,
    }
}

/// Tells systemd (`Type=notify`) something, if it is listening.
pub fn notify_systemd(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = (|| -> std::io::Result<()> {
        let socket = UnixDatagram::unbound()?;
        let bytes = path.as_encoded_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            let address = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.send_to_addr(state.as_bytes(), &address)?;
        } else {
            socket.send_to(state.as_bytes(), &path)?;
        }
        Ok(())
    })();
    if let Err(e) = sent {
        tracing::warn!("cannot notify systemd: {e}");
    }
}

/// Before anything else in a child: undo the supervisor's signal mask (inherited
/// across exec).
fn child_start() -> Result<(), String> {
    sys::block_signals(&SUPERVISOR_SIGNALS, false).map_err(|e| format!("signal mask: {e}"))
}

/// The clock process: takes its link, opens the drift file, drops everything but
/// CAP_SYS_TIME, and serves the engine until it goes.
pub fn clock_main(args: ChildArgs) -> Result<ExitCode, String> {
    child_start()?;
    // It leaves when the engine's end of the link closes (saving the drift file), not
    // on the SIGTERM systemd sends the whole group; the supervisor's death kills it.
    // A SIGHUP to the group is the supervisor's to act on.
    for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        sys::ignore_signal(signal).map_err(|e| format!("signals: {e}"))?;
    }
    let loaded = Config::load(&args.config).map_err(|e| e.to_string())?;
    let jail = sandbox_jail(&loaded, true)?;
    let link = UnixDatagram::from(
        sys::take_inherited_fd(args.ipc_fd).map_err(|e| format!("IPC socket: {e}"))?,
    );
    let section = loaded.config.clock.as_ref().map(|c| c.get_ref());
    let held = match section {
        None => HeldClock::None,
        Some(c) => software_clock(c, &args).map_or_else(
            || HeldClock::System(SystemClock::new()),
            HeldClock::Software,
        ),
    };
    let mut drift = match section.and_then(|c| c.drift_file.as_ref()) {
        Some(path) => Some(DriftFile::new(open_drift_file(&loaded.path(path))?)),
        None => None,
    };
    // What earlier clock processes of this boot stepped counts against this one.
    let record = open_policy_record(&jail)?;
    let state = record.load();
    // Written at its full size now, as root, so that rewriting it in place later
    // needs no free space: the engine can fill the state directory (key-dir), and a
    // record that cannot be written refuses every step.
    if let Err(e) = record.prepare(&state) {
        tracing::warn!("cannot write the policy record ({e}); steps are refused until it can be");
    }
    let mut policy = Policy::resume(PolicyConfig::from_config(section), 0.0, state);
    let report = sandbox::enter(&jail, Role::Clock, &[], libc::SIGKILL, args.parent)?;
    tracing::info!("{report}");
    match clock_process::serve(&link, &held, &mut policy, Some(&record), drift.as_mut()) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            tracing::error!("{e}; the clock process exits and the clock stays as it is");
            Ok(ExitCode::from(3))
        }
    }
}

/// The file where the policy's per-boot state is kept (`STATE/clock-policy`, root's
/// alone, so the engine can neither read nor reset it), with this boot's id.
fn open_policy_record(jail: &Jail) -> Result<PolicyRecord, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map_err(|e| format!("reading the boot id: {e}"))?
        .trim()
        .to_string();
    let path = jail.state_dir.join("clock-policy");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(PolicyRecord::new(file, boot_id))
}

/// Opens (creating, mode 0644) the drift file for writing in place, never through a
/// symbolic link.
fn open_drift_file(path: &std::path::Path) -> Result<std::fs::File, String> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| format!("drift file {}: {e}", path.display()))
}

/// The engine: loads everything as root, takes its sockets, enters the sandbox, and
/// only then starts the runtime and serves.
pub fn engine_main(args: ChildArgs) -> Result<ExitCode, String> {
    child_start()?;
    // Until the reloader takes it: a SIGHUP to the group must not stop the engine.
    sys::ignore_signal(libc::SIGHUP).map_err(|e| format!("signals: {e}"))?;
    let loaded = Config::load(&args.config).map_err(|e| e.to_string())?;
    let jail = sandbox_jail(&loaded, true)?;
    jail.copy_resolver_files()?;
    let key_dir = loaded
        .config
        .nts
        .as_ref()
        .and_then(|n| n.key_dir.as_ref())
        .map(|dir| jail.user_dir(&loaded.path(dir)))
        .transpose()?;
    let take = |fd: i32, what: &str| sys::take_inherited_fd(fd).map_err(|e| format!("{what}: {e}"));
    let link = UnixDatagram::from(take(args.ipc_fd, "IPC socket")?);
    let listeners = Listeners {
        udp: crate::daemon::net::group_by_address(
            args.udp_fds
                .iter()
                .map(|&fd| take(fd, "NTP socket").map(std::net::UdpSocket::from))
                .collect::<Result<_, _>>()?,
        ),
        tcp: args
            .tcp_fds
            .iter()
            .map(|&fd| take(fd, "NTS-KE socket").map(std::net::TcpListener::from))
            .collect::<Result<_, _>>()?,
        control: args
            .control_fd
            .map(|fd| take(fd, "control socket").map(std::os::unix::net::UnixListener::from))
            .transpose()?,
        metrics: args
            .metrics_fd
            .map(|fd| take(fd, "metrics socket").map(std::net::TcpListener::from))
            .transpose()?,
        refclocks: args
            .refclock_fds
            .iter()
            .map(|&fd| take(fd, "refclock socket").map(std::os::unix::net::UnixDatagram::from))
            .collect::<Result<_, _>>()?,
    };
    listeners.check(&loaded)?;
    let reload_link = args
        .reload_fd
        .map(|fd| take(fd, "reload link").map(std::os::unix::net::UnixStream::from))
        .transpose()?;
    let mut ready = args
        .ready_fd
        .map(|fd| take(fd, "readiness pipe").map(std::fs::File::from))
        .transpose()?;
    let section = loaded.config.clock.as_ref().map(|c| c.get_ref()).cloned();
    let mut prepared = run::prepare(loaded)?;
    // Inside the jail the cookie keys are saved under the directory's inside name; the
    // clock process keeps the drift file.
    if let (Some((_, persist_to)), Some(dir)) = (&mut prepared.cookie_keys, &key_dir) {
        *persist_to = persist_to
            .as_ref()
            .and_then(|p| p.file_name())
            .map(|name| dir.join(name));
    }
    if let Some(client) = &mut prepared.client {
        client.drift_file = None;
    }
    let view = match section.as_ref().and_then(|c| software_clock(c, &args)) {
        Some(mirror) => LocalView::Mirror(mirror),
        None => LocalView::System(SystemClock::new()),
    };
    let clock = Arc::new(RemoteClock::new(link, view).map_err(|e| format!("IPC socket: {e}"))?);
    let writable: Vec<PathBuf> = key_dir.into_iter().collect();
    let report = sandbox::enter(&jail, Role::Engine, &writable, libc::SIGTERM, args.parent)?;
    tracing::info!("{report}");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let reload_from = match reload_link {
        Some(link) => reload::Origin::Supervisor(link),
        None => reload::Origin::Files,
    };
    runtime.block_on(run::serve(
        prepared,
        listeners,
        clock,
        reload_from,
        move || {
            if let Some(pipe) = ready.as_mut() {
                let _ = pipe.write_all(b"1");
            }
        },
    ))?;
    Ok(ExitCode::SUCCESS)
}

//! The privilege boundary, end to end (ADVERSARIAL 27–29): `ntimed run` started as root
//! splits into an engine and a clock process, each sandboxed as /proc shows; a forged
//! engine cannot get a malformed frame or a step beyond policy through the real clock
//! process; and without root `ntimed run` refuses the system clock.
//!
//! Every daemon runs with CAP_SYS_TIME out of its bounding set and a simulated clock, so
//! nothing here can change this machine's clock; the clock process then holds no
//! capability at all, and its start-up report says what it asked for.

mod common;

use common::require::require_root;

use std::fs;
use std::os::fd::AsFd;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use common::files::tempdir;
use common::net::{free_port, loopback};
use common::ntimed_cli::{QueryArgs, ntimed_command, ntimed_query};
use common::ntimed_run::{NtimedRun, SANDBOX_TOML};
use common::process::{children_of, run_with_deadline, safe_command, wait_until};
use ntimed::clock::ClockCommand;
use ntimed::privsep::ipc::{self, Refusal, Reply};
use serde_json::Value;

/// Descriptors are passed by making them inheritable for one spawn; no other spawn in
/// this binary may run meanwhile, or it would inherit them too.
static SPAWN: Mutex<()> = Mutex::new(());

const CAP_SYS_TIME: u32 = 25;
/// The id the forged engine puts on every request.
const REQUEST_ID: u32 = 42;

/// The fields of /proc/PID/status this test reads.
#[derive(Debug)]
struct ProcStatus {
    uids: Vec<u32>,
    gids: Vec<u32>,
    cap_eff: u64,
    cap_prm: u64,
    cap_bnd: u64,
    no_new_privs: bool,
    seccomp: u32,
    root: PathBuf,
}

fn proc_status(pid: u32) -> ProcStatus {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
            .trim()
            .to_string()
    };
    let ids = |name: &str| -> Vec<u32> {
        field(name)
            .split_whitespace()
            .map(|n| n.parse().unwrap())
            .collect()
    };
    let hex = |name: &str| u64::from_str_radix(&field(name), 16).unwrap();
    ProcStatus {
        uids: ids("Uid:"),
        gids: ids("Gid:"),
        cap_eff: hex("CapEff:"),
        cap_prm: hex("CapPrm:"),
        cap_bnd: hex("CapBnd:"),
        no_new_privs: field("NoNewPrivs:") == "1",
        seccomp: field("Seccomp:").parse().unwrap(),
        root: fs::read_link(format!("/proc/{pid}/root")).expect("read /proc root"),
    }
}

/// The child of `parent` whose command line contains `marker`.
fn child_with(parent: u32, marker: &str) -> Option<u32> {
    children_of(parent).into_iter().find(|pid| {
        fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(marker))
    })
}

fn client_toml(upstream_port: u16, port: u16) -> String {
    format!(
        "[clock]\nmode = \"simulated\"\nsimulated-offset = 0.4\nsimulated-frequency = 30\n\
         drift-file = \"drift\"\n\n\
         [[source]]\naddress = \"127.0.0.1:{upstream_port}\"\ninsecure = true\niburst = true\n\
         min-poll = 0\nmax-poll = 1\n\n\
         [[server]]\nlisten = \"127.0.0.1:{port}\"\n"
    )
}

fn query(port: u16) -> Option<Value> {
    ntimed_query(&QueryArgs::new(format!("127.0.0.1:{port}")))
        .ok()?
        .into_iter()
        .next()
}

/// ADVERSARIAL 29, and the mirror: the engine steers a simulated clock held by the
/// clock process and serves it within 2 ms of the truth.
#[test]
fn run_as_root_splits_into_a_sandboxed_engine_and_clock_process() {
    if !require_root("the privilege-separation tests") {
        return;
    }
    let _spawning = SPAWN.lock().unwrap_or_else(|p| p.into_inner());
    let upstream = NtimedRun::local_server(loopback(free_port()), None).start();
    let port = free_port();
    let run = NtimedRun::config(client_toml(upstream.ntp_port(), port))
        .wait_for_ntp_answer(port)
        .start();
    drop(_spawning);
    let jail = fs::canonicalize(run.dir()).unwrap();
    let supervisor = run.pid();
    let engine = child_with(supervisor, "privsep-engine").expect("an engine process");
    let clock = child_with(supervisor, "privsep-clock").expect("a clock process");

    let e = proc_status(engine);
    assert!(e.uids.iter().all(|&u| u != 0), "engine uids {e:?}");
    assert!(e.gids.iter().all(|&g| g != 0), "engine gids {e:?}");
    assert_eq!((e.cap_eff, e.cap_prm, e.cap_bnd), (0, 0, 0), "engine {e:?}");
    assert!(e.no_new_privs && e.seccomp == 2, "engine {e:?}");
    assert_eq!(e.root, jail, "engine {e:?}");

    let c = proc_status(clock);
    assert!(c.uids.iter().all(|&u| u != 0), "clock uids {c:?}");
    // Only CAP_SYS_TIME may be left anywhere; here it was never in the bounding set.
    assert_eq!(c.cap_bnd & !(1 << CAP_SYS_TIME), 0, "clock {c:?}");
    assert_eq!((c.cap_eff, c.cap_prm), (0, 0), "clock {c:?}");
    assert!(c.no_new_privs && c.seccomp == 2, "clock {c:?}");
    assert_eq!(c.root, jail, "clock {c:?}");
    // What the clock process asked for, in its own report.
    let log = run.log();
    assert!(
        log.contains("sandboxed Clock process")
            && log.contains("capabilities requested cap_sys_time held none"),
        "{log}"
    );
    assert!(log.contains("sandboxed Engine process"), "{log}");
    // A log file is for reading as text: no colour codes when stderr is no terminal.
    assert!(!log.contains('\u{1b}'), "escape codes in the log: {log:?}");

    // The start-up step crossed the boundary, and the engine serves the clock the
    // clock process holds: within 2 ms of the system clock once pulled in.
    let mut last = None;
    let synced = wait_until(Duration::from_secs(30), || {
        last = query(port);
        last.as_ref().is_some_and(|r| {
            r["stratum"] == 2 && r["offset"].as_f64().is_some_and(|o| o.abs() < 0.002)
        })
    });
    assert!(synced, "last reply {last:?}\n{}", run.log());
    assert!(run.log().contains("applied step by"), "{}", run.log());
}

/// If a child dies, the daemon stops, with a failure for systemd to restart on; a
/// SIGTERM stops it cleanly.
#[test]
fn a_dead_child_stops_the_daemon_and_sigterm_stops_it_cleanly() {
    if !require_root("the privilege-separation tests") {
        return;
    }
    for victim in ["privsep-engine", "privsep-clock"] {
        let (mut run, port) = start_local_server("privsep-death", None);
        let pid = run.pid();
        assert!(
            wait_until(Duration::from_secs(10), || child_with(pid, victim)
                .is_some()
                && query(port).is_some()),
            "never served: {}",
            run.log()
        );
        let target = child_with(pid, victim).unwrap();
        Command::new("kill")
            .args(["-KILL", &target.to_string()])
            .status()
            .unwrap();
        let status = wait_exit(&mut run, Duration::from_secs(15));
        assert_eq!(status.code(), Some(1), "killing the {victim}");
        assert!(
            child_with(pid, "privsep-").is_none(),
            "a child outlived {victim}"
        );
    }
    // Started by systemd (Type=notify): READY=1 once the engine serves.
    let notify_dir = tempdir("privsep-notify");
    let notify_path = notify_dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (mut run, port) = start_local_server("privsep-term", Some(&notify_path));
    let mut buf = [0u8; 64];
    let n = notify.recv(&mut buf).expect("READY=1 from ntimed");
    assert_eq!(&buf[..n], b"READY=1");
    assert!(query(port).is_some(), "READY=1 before serving");
    Command::new("kill")
        .args(["-TERM", &run.pid().to_string()])
        .status()
        .unwrap();
    let status = wait_exit(&mut run, Duration::from_secs(15));
    assert!(status.success(), "SIGTERM: {status}");
}

/// `ntimed run` as a stratum-1 server on a free port, with `NOTIFY_SOCKET` set if
/// `notify` is; not waited for (the tests wait for what they need).
fn start_local_server(what: &str, notify: Option<&Path>) -> (NtimedRun, u16) {
    let port = free_port();
    let mut ntimed = NtimedRun::config(format!(
        "[local]\nstratum = 1\n[[server]]\nlisten = \"127.0.0.1:{port}\"\n"
    ))
    .in_dir(tempdir(what));
    if let Some(socket) = notify {
        ntimed = ntimed.env("NOTIFY_SOCKET", socket);
    }
    let _spawning = SPAWN.lock().unwrap_or_else(|p| p.into_inner());
    (ntimed.start(), port)
}

/// Waits for `ntimed run` to exit on its own; panics (and kills it) after `limit`.
fn wait_exit(run: &mut NtimedRun, limit: Duration) -> std::process::ExitStatus {
    run.wait_exit(limit)
        .unwrap_or_else(|| panic!("did not exit within {limit:?}"))
}

/// Waits for a child to exit on its own; kills it and panics after `limit`.
fn wait_child_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let mut status = None;
    let exited = wait_until(limit, || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    if !exited {
        let _ = child.kill();
        panic!("did not exit within {limit:?}");
    }
    status.unwrap()
}

/// A clock process started by the test, which plays the engine on the other end.
struct ForgedEngine {
    link: UnixDatagram,
    child: Child,
    log: PathBuf,
    /// Its state directory, when the engine owns it.
    dir: Option<tempfile::TempDir>,
    /// The log lives apart from the state directory, which a test may fill.
    _log_dir: tempfile::TempDir,
}

impl ForgedEngine {
    fn start() -> ForgedEngine {
        Self::start_in(tempdir("privsep-forged"))
    }

    /// A clock process jailed in `dir` (where it keeps its per-boot policy record).
    fn start_in(dir: tempfile::TempDir) -> ForgedEngine {
        let mut engine = Self::start_at(dir.path());
        engine.dir = Some(dir);
        engine
    }

    /// Writes the clock process's configuration into `state`, its state directory.
    fn write_config(state: &Path) {
        fs::write(
            state.join("ntimed.toml"),
            format!(
                "[clock]\nmode = \"simulated\"\nsimulated-offset = 2.0\n\
                 [[server]]\nlisten = \"127.0.0.1:{}\"\n{SANDBOX_TOML}",
                free_port()
            ),
        )
        .unwrap();
    }

    /// A clock process jailed in `state` (configured there unless it already is),
    /// which the caller keeps.
    fn start_at(state: &Path) -> ForgedEngine {
        let conf = state.join("ntimed.toml");
        if !conf.exists() {
            Self::write_config(state);
        }
        let log_dir = tempdir("privsep-forged-log");
        let (ours, theirs) = ntimed::sys::seqpacket_pair().unwrap();
        let log = log_dir.path().join("clock.log");
        let mut cmd = ntimed_command(None);
        cmd.args(["--log-level", "debug", "privsep-clock", "--config"])
            .arg(&conf)
            .args(["--parent", &std::process::id().to_string()])
            .args([
                "--ipc-fd",
                &std::os::fd::AsRawFd::as_raw_fd(&theirs).to_string(),
            ])
            .args(["--epoch-ns", "0"]);
        let file = fs::File::create(&log).unwrap();
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        let child = {
            let _spawning = SPAWN.lock().unwrap_or_else(|p| p.into_inner());
            ntimed::privsep::spawn_with_fds(&mut cmd, &[theirs.as_fd()]).expect("spawn")
        };
        drop(theirs);
        let link = UnixDatagram::from(ours);
        link.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let engine = ForgedEngine {
            link,
            child,
            log,
            dir: None,
            _log_dir: log_dir,
        };
        // Up and sandboxed before the first frame.
        assert!(
            wait_until(Duration::from_secs(10), || engine
                .log()
                .contains("sandboxed Clock")),
            "{}",
            engine.log()
        );
        engine
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills the clock process (a crash, nothing saved on the way out) and returns its
    /// directory for the next one, if it owned it.
    fn crash(mut self) -> Option<tempfile::TempDir> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.dir.take()
    }

    /// Sends `frame` and returns the reply, or `None` if the process closed the link.
    fn send(&self, frame: &[u8]) -> Option<Reply> {
        self.link.send(frame).ok()?;
        let mut buf = [0u8; 64];
        match self.link.recv(&mut buf) {
            Ok(0) | Err(_) => None,
            Ok(n) => {
                let (id, reply) = ipc::decode_reply(&buf[..n]).expect("a well-formed reply");
                assert_eq!(id, REQUEST_ID, "the reply echoes the request's id");
                Some(reply)
            }
        }
    }

    fn command(&self, command: ClockCommand) -> Option<Reply> {
        self.send(&ipc::encode_command(REQUEST_ID, &command))
    }
}

impl Drop for ForgedEngine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// ADVERSARIAL 27: a malformed frame (short, long, unknown kind, NaN, out of range)
/// makes the real clock process exit at once, and nothing is applied.
#[test]
fn a_forged_engine_cannot_get_a_malformed_frame_through() {
    if !require_root("the privilege-separation tests") {
        return;
    }
    let step = ipc::encode_command(REQUEST_ID, &ClockCommand::Step { offset: 0.5 });
    let mut unknown = step;
    unknown[0] = 0x7f;
    let mut nan = step;
    nan[8..16].copy_from_slice(&f64::NAN.to_be_bytes());
    let mut infinite = ipc::encode_command(REQUEST_ID, &ClockCommand::SetFrequency { ppm: 1.0 });
    infinite[8..16].copy_from_slice(&f64::INFINITY.to_be_bytes());
    let far = ipc::encode_command(
        REQUEST_ID,
        &ClockCommand::Slew {
            offset: 1e12,
            duration: 1.0,
        },
    );
    let cases: [(&str, Vec<u8>); 7] = [
        ("empty", Vec::new()),
        ("short", step[..20].to_vec()),
        ("long", [step.as_slice(), &[0; 8]].concat()),
        ("unknown kind", unknown.to_vec()),
        ("NaN", nan.to_vec()),
        ("infinity", infinite.to_vec()),
        ("out of range", far.to_vec()),
    ];
    for (what, frame) in cases {
        let mut engine = ForgedEngine::start();
        assert_eq!(engine.send(&frame), None, "{what}: answered");
        // Anything after it goes nowhere.
        assert_eq!(engine.send(&step), None, "{what}: still listening");
        let status = wait_child_exit(&mut engine.child, Duration::from_secs(10));
        assert_eq!(status.code(), Some(3), "{what}: {}", engine.log());
        let log = engine.log();
        assert!(
            log.contains("malformed frame") || log.contains("empty frame"),
            "{what}: {log}"
        );
        assert!(!log.contains("applied"), "{what}: {log}");
    }
}

/// ADVERSARIAL 28: steps beyond policy are refused and logged, the process carries on,
/// and a 1 h step is refused before and after start-up.
#[test]
fn a_forged_engine_cannot_step_the_clock_beyond_policy() {
    if !require_root("the privilege-separation tests") {
        return;
    }
    let engine = ForgedEngine::start();
    let hour = ClockCommand::Step { offset: 3600.0 };
    assert_eq!(
        engine.command(hour),
        Some(Reply::Refused(Refusal::StepTooLarge))
    );
    assert!(matches!(
        engine.command(ClockCommand::Step { offset: -2.0 }),
        Some(Reply::Applied { .. })
    ));
    assert!(matches!(
        engine.command(ClockCommand::Slew {
            offset: 0.001,
            duration: 16.0
        }),
        Some(Reply::Applied { .. })
    ));
    assert_eq!(
        engine.command(hour),
        Some(Reply::Refused(Refusal::StartupOver))
    );
    assert_eq!(
        engine.command(ClockCommand::Step { offset: 0.2 }),
        Some(Reply::Refused(Refusal::StartupOver))
    );
    assert_eq!(
        engine.command(ClockCommand::Slew {
            offset: 5.0,
            duration: 1.0
        }),
        Some(Reply::Refused(Refusal::SlewTooLarge))
    );
    assert_eq!(
        engine.command(ClockCommand::SetFrequency { ppm: 900.0 }),
        Some(Reply::Refused(Refusal::FrequencyTooLarge))
    );
    // A flood of refusable commands is refused without flooding the log.
    for _ in 0..200 {
        assert!(matches!(
            engine.command(ClockCommand::SetFrequency { ppm: 900.0 }),
            Some(Reply::Refused(_))
        ));
    }
    let log = engine.log();
    assert_eq!(log.matches("applied step by").count(), 1, "{log}");
    assert!(log.contains("refused step by +3600.000000 s"), "{log}");
    assert!(log.matches("refused").count() <= 3, "{log}");

    // A crashed and restarted daemon gets no second start-up step in the same boot.
    let dir = engine.crash().unwrap();
    let mut engine = ForgedEngine::start_in(dir);
    assert_eq!(
        engine.command(ClockCommand::Step { offset: 0.2 }),
        Some(Reply::Refused(Refusal::StartupOver)),
        "{}",
        engine.log()
    );
    // Closing the link is the one clean way out.
    engine.link.shutdown(std::net::Shutdown::Both).unwrap();
    let status = wait_child_exit(&mut engine.child, Duration::from_secs(10));
    assert!(status.success(), "{status}: {}", engine.log());
}

/// Without root there is nothing to separate: one process, and no system clock.
#[test]
fn without_root_run_is_one_process_and_refuses_the_system_clock() {
    let dir = tempdir("privsep-unprivileged");
    let conf = dir.path().join("ntimed.toml");
    let port = free_port();
    if ntimed::sys::effective_uid() != 0 {
        eprintln!("SKIPPING: needs root to become nobody");
        return;
    }
    fs::write(
        &conf,
        format!("[clock]\nmode = \"system\"\n[[server]]\nlisten = \"127.0.0.1:{port}\"\n"),
    )
    .unwrap();
    fs::set_permissions(&conf, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let out = NtimedRun::config_file(&conf)
        .run_as_nobody()
        .run_to_exit(Duration::from_secs(10))
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", out.describe());
    assert!(
        out.stderr.contains("needs ntimed started as root"),
        "{}",
        out.describe()
    );

    fs::write(
        &conf,
        format!(
            "[clock]\nmode = \"simulated\"\n[local]\nstratum = 1\n\
             [[server]]\nlisten = \"127.0.0.1:{port}\"\n"
        ),
    )
    .unwrap();
    let mut run = {
        let _spawning = SPAWN.lock().unwrap_or_else(|p| p.into_inner());
        NtimedRun::config_file(&conf).run_as_nobody().start()
    };
    let served = wait_until(Duration::from_secs(10), || query(port).is_some());
    let pid = run.pid();
    run.stop();
    let log = run.log();
    assert!(served, "{log}");
    assert!(log.contains("running unprivileged in one process"), "{log}");
    assert!(child_with(pid, "privsep-").is_none());
}

/// A tmpfs mounted (as root) on a test directory for the test's length.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=755")])
            .arg("tmpfs")
            .arg(dir)
            .status()
            .expect("run mount");
        assert!(status.success(), "mount -t tmpfs on {}", dir.display());
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount").arg(&self.0).status();
        if !unmounted.is_ok_and(|s| s.success()) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// Fills the filesystem holding `dir` to the last byte, as a compromised engine can
/// through `key-dir`.
fn fill(dir: &Path) {
    use std::io::Write;
    let mut filler = fs::File::create(dir.join("filler")).unwrap();
    while filler.write_all(&[0u8; 4096]).is_ok() {}
    while filler.write_all(&[0u8]).is_ok() {}
    let _ = filler.sync_all();
    assert!(
        fs::write(dir.join("one-more-byte"), b"x").is_err(),
        "{} is not full",
        dir.display()
    );
}

/// A compromised engine fills the state directory (`key-dir` is in it), then asks for
/// the start-up step. The clock process records a step on disk before it applies it,
/// in a record root wrote at its full size before the split: on a full filesystem the
/// step is still recorded, so no restart of this boot gets a second one; and where the
/// record cannot be written at all, the step is refused and the process carries on.
#[test]
fn a_full_disk_neither_resets_the_step_budget_nor_stops_the_clock_process() {
    if !require_root("the privilege-separation tests") {
        return;
    }
    // Full after the clock process started: the record is rewritten in place.
    let dir = tempdir("privsep-full");
    let mount = Tmpfs::mount(dir.path(), "64k");
    let engine = ForgedEngine::start_at(dir.path());
    fill(dir.path());
    let reply = engine.command(ClockCommand::Step { offset: -1.5 });
    assert!(
        matches!(reply, Some(Reply::Applied { .. })),
        "{reply:?}: {}",
        engine.log()
    );
    let record = fs::read_to_string(dir.path().join("clock-policy")).unwrap();
    assert!(record.contains(" 1.5 1"), "the record says {record:?}");
    engine.crash();
    let engine = ForgedEngine::start_at(dir.path());
    assert_eq!(
        engine.command(ClockCommand::Step { offset: 0.5 }),
        Some(Reply::Refused(Refusal::StartupOver)),
        "a restart in the same boot got the start-up step again: {}",
        engine.log()
    );
    drop(engine);
    drop(mount);

    // Full before the record could be written: no step, and the process serves on.
    let dir = tempdir("privsep-full-early");
    let _mount = Tmpfs::mount(dir.path(), "64k");
    ForgedEngine::write_config(dir.path());
    fill(dir.path());
    let mut engine = ForgedEngine::start_at(dir.path());
    assert_eq!(
        engine.command(ClockCommand::Step { offset: -1.5 }),
        Some(Reply::Refused(Refusal::NotRecorded)),
        "{}",
        engine.log()
    );
    assert!(matches!(
        engine.command(ClockCommand::SetFrequency { ppm: 3.0 }),
        Some(Reply::Applied { .. })
    ));
    assert!(
        engine.child.try_wait().unwrap().is_none(),
        "{}",
        engine.log()
    );
    let log = engine.log();
    assert!(!log.contains("applied step by"), "{log}");
    assert!(log.contains("cannot write the policy record"), "{log}");
}

/// Set in the copy of this test binary that plays the engine for
/// [`the_sandboxed_engine_reaches_no_abstract_unix_socket`]: the abstract name to try.
const PROBE_NAME: &str = "NTIMED_TEST_ABSTRACT_NAME";
const PROBE_JAIL: &str = "NTIMED_TEST_JAIL";

/// The engine's sandbox, entered by a copy of this test binary, leaves no way to an
/// abstract Unix socket of the host (D-Bus, X11, systemd's notify socket...), which the
/// chroot does not hide: seccomp allows socketpair only for tokio's stream pair (a
/// datagram pair could send anywhere), and Landlock (ABI 6) scopes abstract sockets,
/// so even a datagram socket the engine held already cannot send out.
#[test]
fn the_sandboxed_engine_reaches_no_abstract_unix_socket() {
    if let Ok(name) = std::env::var(PROBE_NAME) {
        engine_probe(&name);
        return;
    }
    if !require_root("the privilege-separation tests") {
        return;
    }
    use std::os::linux::net::SocketAddrExt;
    let name = format!("ntimed-test-probe-{}", std::process::id());
    let address = std::os::unix::net::SocketAddr::from_abstract_name(&name).unwrap();
    let target = UnixDatagram::bind_addr(&address).unwrap();
    target.set_nonblocking(true).unwrap();
    let jail = tempdir("privsep-probe");
    let mut cmd = safe_command(None, std::env::current_exe().unwrap().to_str().unwrap());
    cmd.args([
        "--exact",
        "the_sandboxed_engine_reaches_no_abstract_unix_socket",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(PROBE_NAME, &name)
    .env(PROBE_JAIL, jail.path());
    let out = run_with_deadline(cmd, Duration::from_secs(60)).unwrap();
    assert!(out.status.success(), "{}", out.describe());
    assert!(out.stdout.contains("probe: done"), "{}", out.describe());
    eprintln!("{}", out.stdout);
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while let Ok(n) = target.recv(&mut buf) {
        got.push(String::from_utf8_lossy(&buf[..n]).to_string());
    }
    // Only what was sent before the sandbox arrived.
    assert_eq!(got, ["before"], "{}", out.describe());
}

/// The engine's half of the test above: enter the engine's sandbox, then try.
fn engine_probe(name: &str) {
    use ntimed::privsep::sandbox::{self, Jail, Role};
    use std::os::linux::net::SocketAddrExt;
    let jail_dir = std::env::var(PROBE_JAIL).unwrap();
    let jail = Jail::new("nobody", Path::new(&jail_dir), false).unwrap();
    let address = std::os::unix::net::SocketAddr::from_abstract_name(name).unwrap();
    let held = UnixDatagram::unbound().unwrap();
    held.send_to_addr(b"before", &address).unwrap();
    let report = sandbox::enter(
        &jail,
        Role::Engine,
        &[],
        libc::SIGKILL,
        std::os::unix::process::parent_id(),
    )
    .unwrap();
    println!("probe: {report}");
    let denied = |what: &str, result: std::io::Result<()>| {
        let error = result.expect_err(what);
        assert!(
            matches!(error.raw_os_error(), Some(libc::EPERM | libc::EACCES)),
            "{what}: {error}"
        );
    };
    // seccomp: no datagram (or seqpacket) pair, which could send to any abstract name.
    denied(
        "socketpair(AF_UNIX, SOCK_DGRAM)",
        UnixDatagram::pair().map(|_| ()),
    );
    denied(
        "socketpair(AF_UNIX, SOCK_SEQPACKET)",
        ntimed::sys::seqpacket_pair().map(|_| ()),
    );
    // ...but tokio's runtime, whose signal driver makes a stream pair, still starts.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio in the sandbox");
    runtime.block_on(async {
        let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .expect("a signal stream in the sandbox");
        drop(hangup);
    });
    // Landlock: a datagram socket held from before cannot send to the host's name.
    // (Fully enforced means ABI 6 or later, which has the abstract-socket scope.)
    if report.landlock.starts_with("enforced") {
        denied(
            "sendto an abstract name outside the sandbox",
            held.send_to_addr(b"after", &address).map(|_| ()),
        );
    } else {
        println!("SKIPPING the Landlock check: landlock {}", report.landlock);
    }
    println!("probe: done");
}

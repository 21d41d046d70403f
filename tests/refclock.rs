//! The master role: a stratum-1 `ntimed run` fed by a reference clock, serving NTS
//! and keyed clients with the refclock's refid.
//!
//! * SHM: the test is gpsd, writing a private segment (unit ≥ 16, so no real gpsd's
//!   0–7, removed at the end) four times a second, after two kinds of garbage (a
//!   wrong mode, microseconds out of range), each counted once in `ntimed ctl
//!   sources`. chronyd (`-x`, never touching the clock) is one of the clients:
//!   `chronyc ntpdata` shows it sees stratum 1 and reference id GPS.
//! * SOCK: the test is gpsd again, sending chrony's 40-byte samples to the socket
//!   ntimed made (by the root supervisor when run as root), after a wrong-sized and a
//!   wrong-magic datagram, both counted.
//!
//! * Under clknetsim (one process, `NTIMED_CLKNETSIM=1`): the simulator's own SHM
//!   refclock, 1 µs of jitter, steers the simulated clock to within a few µs, where
//!   the network source alone leaves tens of µs.
//!
//! Under root (as in CI) ntimed separates privileges: the SHM segment, root's and mode
//! 0600 like units 0 and 1, is attached by the engine before it drops to `nobody`; the
//! socket is made by the supervisor and passed to the engine.

mod common;

use std::fs;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::chrony::spawn_chronyd_x;
use common::files::tempdir;
use common::keys::{KEY_SHA1, TestKeys};
use common::net::free_port;
use common::ntimed_cli::{QueryArgs, ntimed_command, ntimed_query};
use common::ntimed_run::{NtimedRun, give_to_sandbox_user, nts_server_toml, toml_path};
use common::nts::TestCerts;
use common::process::{run_with_deadline, wait_until};
use common::require::{require_chrony, require_clknetsim};
use ntimed::refclock::{shm, sock};
use ntimed::sys::ShmSegment;
use serde_json::Value;
use tempfile::TempDir;

/// Refclock poll: 2 s, so that the two samples selection needs come within seconds.
const POLL: i8 = 1;
/// How long the daemon gets to synchronize to the refclock.
const SYNC_WAIT: Duration = Duration::from_secs(40);

/// A writer thread, stopped (and joined) on drop.
struct Writer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn spawn(mut write: impl FnMut(u32) + Send + 'static) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut n = 0;
            while !flag.load(Ordering::Relaxed) {
                write(n);
                n = n.wrapping_add(1);
                std::thread::sleep(Duration::from_millis(250));
            }
        });
        Writer {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The system clock now, as (seconds, microseconds, nanoseconds) since 1970.
fn now_parts() -> (i64, i32, i32) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970");
    let nanos = now.subsec_nanos() as i32;
    (now.as_secs() as i64, nanos / 1000, nanos)
}

/// The server, NTS-KE and key sections, a `[clock]` that never touches the system
/// clock, and `refclock` (a `[[refclock]]` body).
struct Master {
    run: NtimedRun,
    ntp_port: u16,
    ke_port: u16,
    keys: TestKeys,
    certs: TestCerts,
}

fn start_master(dir: TempDir, refclock: &str) -> Master {
    let keys = TestKeys::new();
    let certs = TestCerts::new();
    let (ntp_port, ke_port) = (free_port(), free_port());
    let state = dir.path().join("state");
    fs::create_dir(&state).expect("mkdir state");
    give_to_sandbox_user(&state);
    let toml = format!(
        "{}\n[keys]\nfile = {}\n\n[clock]\nmode = \"observe\"\n\n\
         [[refclock]]\n{refclock}refid = \"GPS\"\npoll = {POLL}\ndelay = 1e-4\nauthenticated = true\n",
        // Not `[local]`: a stratum-1 answer must come from the refclock.
        nts_server_toml(&certs, ntp_port, ke_port, &state).replace("[local]\nstratum = 1\n", ""),
        toml_path(&keys.chrony),
    );
    let run = NtimedRun::config(toml)
        .in_dir(dir)
        .wait_for_ntp(ntp_port)
        .wait_for_ke(ke_port)
        .start();
    Master {
        run,
        ntp_port,
        ke_port,
        keys,
        certs,
    }
}

impl Master {
    fn server(&self) -> String {
        format!("127.0.0.1:{}", self.ntp_port)
    }

    /// `ntimed ctl sources --json`: the refclock's row.
    fn refclock_row(&self) -> Value {
        let mut command = ntimed_command(None);
        command
            .arg("ctl")
            .arg("--socket")
            .arg(self.run.dir().join("control.sock"))
            .args(["sources", "--json"]);
        let out = run_with_deadline(command, Duration::from_secs(10)).expect("ntimed ctl ran");
        assert!(out.status.success(), "{}", out.describe());
        let all: Value = serde_json::from_str(&out.stdout).expect("JSON");
        all["sources"]
            .as_array()
            .and_then(|rows| rows.first().cloned())
            .unwrap_or(Value::Null)
    }

    /// Waits until a keyed query gets stratum 1, then checks keyed and NTS replies:
    /// stratum 1, refid GPS, root delay the configured 1e-4 s, offset near 0 (the
    /// refclock is this machine's own clock).
    fn assert_serves_stratum_one(&self) {
        let keyed = || {
            ntimed_query(&QueryArgs::new(self.server()).key(&self.keys.chrony, KEY_SHA1))
                .ok()
                .and_then(|r| r.into_iter().next())
        };
        let synced = wait_until(SYNC_WAIT, || keyed().is_some_and(|r| r["stratum"] == 1));
        assert!(synced, "never served stratum 1:\n{}", self.run.log());
        let ca = self.certs.ca();
        let nts =
            ntimed_query(&QueryArgs::new(format!("localhost:{}", self.ke_port)).nts(Some(&ca)))
                .unwrap_or_else(|e| panic!("NTS query: {e}\n{}", self.run.log()));
        for (what, reply) in [
            ("keyed", keyed().expect("a keyed reply")),
            ("NTS", nts[0].clone()),
        ] {
            assert_eq!(reply["stratum"], Value::from(1), "{what}: {reply}");
            assert_eq!(reply["refid"], Value::from("GPS"), "{what}: {reply}");
            assert_eq!(reply["authenticated"], Value::Bool(true), "{what}: {reply}");
            let offset = reply["offset"].as_f64().expect("offset");
            assert!(offset.abs() < 10e-3, "{what}: offset {offset}: {reply}");
            let distance = reply["root_distance"].as_f64().expect("root distance");
            assert!((5e-5..0.1).contains(&distance), "{what}: {reply}");
        }
        let row = self.refclock_row();
        assert_eq!(row["state"], Value::from("reference"), "{row}");
        assert_eq!(row["auth"], Value::from("trusted"), "{row}");
    }
}

/// chronyd as a client of `master` (keyed), with a command socket for chronyc.
struct ChronyClient {
    _daemon: common::process::Daemon,
    socket: PathBuf,
    _dir: TempDir,
}

impl ChronyClient {
    fn start(master: &Master) -> ChronyClient {
        let dir = tempdir("chrony-client");
        let d = dir.path().display();
        let cmd_dir = dir.path().join("cmd");
        fs::create_dir(&cmd_dir).expect("mkdir cmd");
        fs::set_permissions(
            &cmd_dir,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .expect("chmod cmd");
        let socket = cmd_dir.join("chronyd.sock");
        let conf = format!(
            "server 127.0.0.1 port {} key {KEY_SHA1} iburst minpoll -2 maxpoll -2\n\
             keyfile {}\nport 0\ncmdport 0\nbindcmdaddress {}\n\
             pidfile {d}/chronyd.pid\ndriftfile {d}/drift\n",
            master.ntp_port,
            master.keys.chrony.display(),
            socket.display(),
        );
        let mut daemon = spawn_chronyd_x("chronyd client", dir.path(), &conf);
        let up = wait_until(Duration::from_secs(15), || {
            daemon.assert_running();
            socket.exists()
        });
        assert!(
            up,
            "chronyd never opened its command socket:\n{}",
            daemon.log()
        );
        daemon.assert_cannot_set_clock();
        ChronyClient {
            _daemon: daemon,
            socket,
            _dir: dir,
        }
    }

    /// What `chronyc ntpdata` says of the server: (stratum, reference id line, valid RX).
    fn ntpdata(&self) -> Option<(u32, String, u64)> {
        let out = std::process::Command::new("chronyc")
            .arg("-h")
            .arg(&self.socket)
            .args(["-n", "ntpdata", "127.0.0.1"])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|rest| rest.trim_start_matches([' ', ':']).trim().to_string())
        };
        Some((
            field("Stratum")?.parse().ok()?,
            field("Reference ID")?,
            field("Total valid RX")?.parse().ok()?,
        ))
    }
}

/// A private SHM unit for this test run: above gpsd's 0–7, different per process.
fn private_unit() -> u32 {
    16 + std::process::id() % 200
}

/// Removes the segment at the end, even when the test fails.
struct RemoveSegment(i32);

impl Drop for RemoveSegment {
    fn drop(&mut self) {
        let _ = ShmSegment::remove(self.0);
    }
}

#[test]
fn shm_refclock_makes_a_stratum_one_server_for_nts_keyed_and_chronyd_clients() {
    if !require_chrony() {
        return;
    }
    let unit = private_unit();
    let key = shm::KEY_BASE + unit as i32;
    let _ = ShmSegment::remove(key);
    let _cleanup = RemoveSegment(key);
    // Mode 0600, as units 0 and 1 are: as root, only an engine that attaches before
    // it drops to `nobody` can read it.
    let segment = ShmSegment::attach(key, shm::SEGMENT_LEN, 0o600, true).expect("shmget/shmat");
    // gpsd's writes: first garbage (a mode no writer uses), then good mode-1 samples
    // with the reference exactly on this machine's clock.
    let garbage = shm::ShmFields {
        mode: 7,
        valid: 1,
        ..Default::default()
    };
    segment.write(0, &garbage.to_bytes());
    let dir = tempdir("refclock-shm");
    let master = start_master(dir, &format!("driver = \"shm\"\nunit = {unit}\n"));
    let dropped = |count: u64| {
        wait_until(Duration::from_secs(15), || {
            master.refclock_row()["drops"].as_u64() == Some(count)
        })
    };
    let row = master.refclock_row();
    assert!(
        dropped(1),
        "garbage not counted: {row}\n{}",
        master.run.log()
    );
    let row = master.refclock_row();
    assert_eq!(
        row["last_drop"],
        Value::from("SHM: mode 7 (only 0 and 1 exist)"),
        "{row}"
    );
    assert_eq!(
        row["name"],
        Value::from(format!("refclock GPS shm:{unit}")),
        "{row}"
    );
    // Read once and cleared, so counted once; then garbage of another kind.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(master.refclock_row()["drops"].as_u64(), Some(1));
    let time = now_parts();
    let garbage = shm::ShmFields {
        mode: 1,
        clock: (time.0, 1_000_000, 0),
        receive: time,
        valid: 1,
        ..Default::default()
    };
    segment.write(0, &garbage.to_bytes());
    assert!(dropped(2), "garbage not counted: {}", master.run.log());
    assert_eq!(
        master.refclock_row()["last_drop"],
        Value::from("SHM: clock time: microseconds not in 0..1000000")
    );
    let _writer = Writer::spawn(move |n| {
        let time = now_parts();
        let count = n as i32 * 2;
        // Mode 1: count bumped before and after the fields change.
        segment.write(4, &(count + 1).to_ne_bytes());
        let fields = shm::ShmFields {
            mode: 1,
            count: count + 2,
            clock: time,
            receive: time,
            leap: 0,
            precision: -20,
            valid: 1,
        };
        segment.write(0, &fields.to_bytes());
    });
    master.assert_serves_stratum_one();
    assert_eq!(master.refclock_row()["drops"].as_u64(), Some(2));

    let chrony = ChronyClient::start(&master);
    let mut last = None;
    let seen = wait_until(Duration::from_secs(30), || {
        last = chrony.ntpdata();
        last.as_ref().is_some_and(|(_, _, valid)| *valid >= 2)
    });
    assert!(
        seen,
        "chronyd got no valid replies: {last:?}\n{}",
        master.run.log()
    );
    let (stratum, refid, _) = last.expect("ntpdata");
    assert_eq!(stratum, 1, "chronyd's view");
    assert!(
        refid.contains("47505300") && refid.contains("GPS"),
        "chronyd sees refid {refid:?}"
    );
}

#[test]
fn sock_refclock_makes_a_stratum_one_server_and_counts_bad_datagrams() {
    let dir = tempdir("refclock-sock");
    let path = dir.path().join("gps.sock");
    let master = start_master(
        dir,
        &format!("driver = \"sock\"\npath = {}\n", toml_path(&path)),
    );
    let mode = fs::metadata(&path)
        .expect("the socket exists")
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o660
    );
    let sender = UnixDatagram::unbound().expect("socket");
    let send = |bytes: &[u8]| {
        sender
            .send_to(bytes, &path)
            .expect("send to the refclock socket")
    };
    send(&[0u8; 39]);
    let mut wrong_magic = sock::encode((1, 0), 0.0, 0, 0);
    wrong_magic[36] ^= 1;
    send(&wrong_magic);
    let counted = wait_until(Duration::from_secs(10), || {
        master.refclock_row()["drops"].as_u64() == Some(2)
    });
    let row = master.refclock_row();
    assert!(counted, "{row}\n{}", master.run.log());
    assert!(
        row["last_drop"]
            .as_str()
            .is_some_and(|l| l.starts_with("SOCK: magic")),
        "{row}"
    );
    let path_for_writer = path.clone();
    let _writer = Writer::spawn(move |_| {
        let (seconds, micros, _) = now_parts();
        let sample = sock::encode((seconds, i64::from(micros)), 0.0, 0, 0);
        let _ = sender.send_to(&sample, &path_for_writer);
    });
    master.assert_serves_stratum_one();
    assert_eq!(master.refclock_row()["drops"].as_u64(), Some(2));
    assert!(Path::new(&path).exists());
}

/// A result row of the shared `run.sh` (scenario daemon runs sync_s max_off rms_off
/// rms_freq poll_s ss_rms, from sync_s on) and ntimed's log, for one seed of
/// `scenario` (its settings, as shell lines) with `conf` appended to ntimed's TOML.
/// `None` when clknetsim or chronyd is missing (and not required).
fn run_under_clknetsim(name: &str, settings: &str, conf: &str) -> Option<(Vec<f64>, String)> {
    let shared = require_clknetsim()?;
    if !require_chrony() {
        return None;
    }
    let dir = tempdir(name);
    let copy = dir.path().join("clknetsim");
    let out = run_with_deadline(
        {
            let mut cp = std::process::Command::new("cp");
            cp.arg("-r").arg(&shared).arg(&copy);
            cp
        },
        Duration::from_secs(30),
    )
    .expect("cp -r");
    assert!(out.status.success(), "cp: {}", out.describe());
    let scenarios = copy.join("scenarios");
    fs::set_permissions(
        &scenarios,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod scenarios");
    let scenario = format!(
        "#!/usr/bin/env bash\n. ./test.common\ntest_start \"{name}\"\n{settings}\n\
         run_test || test_fail\ncheck_sync || true\ntest_pass\n"
    );
    fs::write(scenarios.join(name), scenario).expect("write scenario");
    let work = dir.path().join("work");
    let mut cmd = common::process::safe_command(None, "bash");
    cmd.arg(copy.join("run.sh"))
        .arg(common::ntimed_cli::ntimed_bin())
        .args(["-n", "1", "--ntimed-only", name])
        .env("CLKNETSIM_WORK", &work)
        // Appended to the node's TOML by harness/ntimed.common (`printf %b`: `\\n`).
        .env("NTIMED_EXTRA_CONF", conf.replace('\n', "\\n"));
    let out = run_with_deadline(cmd, Duration::from_secs(300)).expect("run.sh");
    // The client is the node after the servers: log.1 without any, log.2 with one.
    let log = ["log.1", "log.2"]
        .map(|file| fs::read_to_string(work.join("test/simulation/tmp").join(file)))
        .map(Result::unwrap_or_default)
        .join("\n");
    let context = format!("{}\n--- ntimed ---\n{log}", out.describe());
    assert!(out.status.success(), "{context}");
    let row: Vec<f64> = out
        .stdout
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no result row: {context}"))
        .split_whitespace()
        .skip(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    assert_eq!(row.len(), 7, "{context}");
    Some((row, context))
}

#[test]
fn shm_refclock_steers_the_clock_under_clknetsim() {
    let conf = "[[refclock]]\ndriver = \"shm\"\nunit = 0\nrefid = \"GPS\"\nauthenticated = true";
    let Some((row, context)) = run_under_clknetsim("ntimed-refclock", "refclock_jitter=1e-6", conf)
    else {
        return;
    };
    assert!(row[1] < 300.0, "sync time {} s: {context}", row[1]);
    assert!(
        row[6] < 5e-6,
        "steady-state RMS offset {} s: {context}",
        row[6]
    );
    assert!(
        context.contains("refclock GPS shm:0: reachable"),
        "{context}"
    );
}

/// clknetsim's reference clock as `/dev/ptp0` (1 µs read delay, 0.1 µs jitter), the
/// only source: read with the precise cross-timestamp ioctl each second, it steers the
/// clock to well under a microsecond.
#[test]
fn phc_refclock_steers_the_clock_under_clknetsim() {
    let settings = "export CLKNETSIM_PHC_DELAY=1e-6\nexport CLKNETSIM_PHC_JITTER=1e-7\n\
                    servers=0\nlimit=1000\nrefclock_jitter=1e-7";
    let conf = "[[refclock]]\ndriver = \"phc\"\ndevice = \"/dev/ptp0\"\nrefid = \"PHC\"\n\
                authenticated = true";
    let Some((row, context)) = run_under_clknetsim("ntimed-phc", settings, conf) else {
        return;
    };
    assert!(row[1] < 200.0, "sync time {} s: {context}", row[1]);
    assert!(
        row[6] < 1e-6,
        "steady-state RMS offset {} s: {context}",
        row[6]
    );
    assert!(
        context.contains("refclock PHC phc:/dev/ptp0: reachable"),
        "{context}"
    );
}

/// clknetsim's pulses on `/dev/pps0`, locked to its SHM segment (unit 0, `noselect`)
/// whose time is 0.35 s off with 50 ms of jitter, as NMEA is (chrony's test 106): the
/// lock only names the second, the pulses steer the clock, and the noselect lock never
/// does. (How close they steer it is the engine's: its first frequency estimate, from
/// two samples, stays some 20 ppm off, a 1 ms sawtooth; chronyd gets 0.2 µs.)
#[test]
fn pps_refclock_locked_to_shm_steers_the_clock_under_clknetsim() {
    let settings = "servers=0\nlimit=1000\nrefclock_offset=0.35\nrefclock_jitter=0.05";
    let conf = "[[refclock]]\ndriver = \"shm\"\nunit = 0\nrefid = \"NMEA\"\nnoselect = true\n\
                authenticated = true\n[[refclock]]\ndriver = \"pps\"\ndevice = \"/dev/pps0\"\n\
                refid = \"PPS\"\nlock = \"NMEA\"\nauthenticated = true";
    let Some((row, context)) = run_under_clknetsim("ntimed-pps", settings, conf) else {
        return;
    };
    assert!(
        row[6] < 2e-3,
        "steady-state RMS offset {} s: {context}",
        row[6]
    );
    assert!(
        context.contains("refclock PPS pps:/dev/pps0: reachable, selected"),
        "{context}"
    );
    assert!(
        !context.contains("refclock NMEA shm:0: reachable, selected"),
        "{context}"
    );
}

/// A PPS without `lock` next to a network server: the system clock names the second
/// once the server has synchronized it, and the pulses (1 µs of jitter) then steer the
/// clock to about a microsecond, where the server alone leaves some 50 µs.
#[test]
fn pps_refclock_without_lock_takes_over_once_synchronized_under_clknetsim() {
    let settings = "limit=1000\nrefclock_jitter=1e-6";
    let conf = "[[refclock]]\ndriver = \"pps\"\ndevice = \"/dev/pps0\"\nrefid = \"PPS\"\n\
                authenticated = true";
    let Some((row, context)) = run_under_clknetsim("ntimed-pps-nolock", settings, conf) else {
        return;
    };
    assert!(
        row[6] < 1e-5,
        "steady-state RMS offset {} s: {context}",
        row[6]
    );
    let synchronized = context
        .find("192.168.123.1:123: reachable, selected")
        .expect("the server is selected first");
    let pps = context
        .find("refclock PPS pps:/dev/pps0: reachable, selected")
        .expect("then the PPS");
    assert!(synchronized < pps, "{context}");
}

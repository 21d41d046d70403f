//! Shared harness for the interoperability tests against real peers
//! (chrony 4.3 and NTPsec 1.2.2), following /work/shared/LAB.md.
//!
//! Safety rules enforced here for every process the tests start:
//! * it runs under `setpriv --pdeathsig KILL --bounding-set -sys_time -- …`, so it can
//!   never set the clock and dies with the test thread that spawned it;
//! * chronyd always runs with `-x` (server) or `-Q` (one-shot client);
//! * ntpd's configuration always contains `disable ntp`;
//! * traffic stays on 127.0.0.1 or inside network namespaces created here, which are
//!   deleted by a Drop guard (also when a test panics).
//!
//! Each test binary uses a different subset of this module.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::fs;
use std::io::Read;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tempfile::TempDir;

// ---------------------------------------------------------------------------
// Peer locations and install hints
// ---------------------------------------------------------------------------

pub const CHRONYD: &str = "/usr/sbin/chronyd";
pub const NTPD: &str = "/opt/ntpsec/usr/sbin/ntpd";
pub const NTPDIG: &str = "/opt/ntpsec/usr/bin/ntpdig";
pub const NTPSEC_LD_LIBRARY_PATH: &str = "/opt/ntpsec/usr/lib/x86_64-linux-gnu/ntp";
pub const NTPSEC_PYTHONPATH: &str = "/opt/ntpsec/usr/lib/python3/dist-packages";
/// ntpdig's own shebang (not whatever `python3` is first on PATH, e.g. a pyenv shim).
const SYSTEM_PYTHON3: &str = "/usr/bin/python3";

pub const CHRONY_INSTALL_HINT: &str = "chrony 4.3 is needed for this interop test: \
     `apt-get update && apt-get install -y --no-install-recommends chrony` \
     (no service is started in a container)";

pub const NTPSEC_INSTALL_HINT: &str = "NTPsec 1.2.2 is needed for this interop test; it \
     conflicts with chrony as a package, so unpack it into /opt/ntpsec: \
     `cd $(mktemp -d) && apt-get download ntpsec ntpsec-ntpdig python3-ntp && \
     for f in *.deb; do dpkg -x \"$f\" /opt/ntpsec; done && \
     ln -sf /opt/ntpsec/usr/lib/x86_64-linux-gnu/ntp/libntpc.so.1 \
     /opt/ntpsec/usr/lib/python3/dist-packages/ntp/libntpc.so` \
     (ntpsec-ntpdig needs python3 installed)";

pub const NETNS_HINT: &str = "this interop test needs root and iproute2 (`ip netns`, `ss`) \
     to create a private network namespace: run the tests as root and \
     `apt-get install -y --no-install-recommends iproute2`";

fn on_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Skip (or, under `CI=true`, fail) a test whose prerequisite is missing.
fn missing(what: &str, install_hint: &str) -> bool {
    let msg = format!("{what} is missing. {install_hint}");
    if on_ci() {
        panic!("{msg}");
    }
    eprintln!("SKIPPING interop test: {msg}");
    false
}

/// Returns true when `bin_path` exists. Otherwise fails under `CI=true` (with the install
/// instructions) and prints a skip message and returns false elsewhere, so the test can
/// `return` early.
pub fn require_peer(bin_path: &str, install_hint: &str) -> bool {
    if Path::new(bin_path).exists() {
        true
    } else {
        missing(bin_path, install_hint)
    }
}

/// chronyd (which refuses to start unless run as root) and setpriv.
pub fn require_chrony() -> bool {
    require_peer(CHRONYD, CHRONY_INSTALL_HINT)
        && require_setpriv()
        && (is_root() || missing("root privileges", "chronyd only runs as root"))
}

/// ntpd, ntpdig, the python `ntp` package and its libntpc.so link, plus netns support
/// (ntpd only ever binds port 123).
pub fn require_ntpsec() -> bool {
    require_peer(NTPD, NTPSEC_INSTALL_HINT)
        && require_peer(NTPDIG, NTPSEC_INSTALL_HINT)
        && require_peer(
            &format!("{NTPSEC_PYTHONPATH}/ntp/libntpc.so"),
            NTPSEC_INSTALL_HINT,
        )
        && require_peer(
            SYSTEM_PYTHON3,
            "ntpdig is a python3 script: `apt-get install -y --no-install-recommends python3`",
        )
        && require_setpriv()
        && require_netns()
}

pub fn require_setpriv() -> bool {
    require_peer(
        "/usr/bin/setpriv",
        "setpriv (util-linux) is needed to drop CAP_SYS_TIME: `apt-get install -y util-linux`",
    )
}

/// Root and `ip`/`ss` are needed to create network namespaces.
pub fn require_netns() -> bool {
    if !is_root() {
        return missing("root privileges", NETNS_HINT);
    }
    for tool in ["ip", "ss"] {
        let found = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
            .iter()
            .any(|d| Path::new(d).join(tool).exists());
        if !found {
            return missing(tool, NETNS_HINT);
        }
    }
    true
}

fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

// ---------------------------------------------------------------------------
// Ports
// ---------------------------------------------------------------------------

const PORT_LOW: u32 = 10_000;
/// Stay below the Linux ephemeral range (32768–60999) used by the clients' source ports.
const PORT_SPAN: u32 = 22_000;
static PORT_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A loopback port that is currently free for both UDP and TCP and that no other caller in
/// this process gets. The starting point depends on the process id, so concurrently running
/// test binaries start far apart; the bind check catches the rest.
pub fn free_port() -> u16 {
    let base = (std::process::id() % 1_000) * 20;
    for _ in 0..PORT_SPAN {
        let n = PORT_COUNTER.fetch_add(1, Ordering::Relaxed);
        let port = u16::try_from(PORT_LOW + (base + n) % PORT_SPAN).expect("port fits in u16");
        let udp = UdpSocket::bind(("127.0.0.1", port));
        let tcp = TcpListener::bind(("127.0.0.1", port));
        if udp.is_ok() && tcp.is_ok() {
            return port;
        }
    }
    panic!("no free loopback port found");
}

fn unique_suffix() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

// ---------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------

/// Key ids shared by all peers in these tests.
pub const KEY_SHA256: u32 = 1;
pub const KEY_AES128: u32 = 2;
pub const KEY_SHA1: u32 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyType {
    Sha256,
    Aes128,
    Sha1,
}

impl KeyType {
    /// Type name in chrony's keyfile.
    pub fn chrony_name(self) -> &'static str {
        match self {
            KeyType::Sha256 => "SHA256",
            KeyType::Aes128 => "AES128",
            KeyType::Sha1 => "SHA1",
        }
    }

    /// Type name in ntp.keys. NTPsec 1.2.2 accepts `AES`, `AES-128` and `aes-128` for
    /// AES-128-CMAC (ntpkeygen writes `AES`) and rejects `AES128` ("unknown auth type").
    pub fn ntp_keys_name(self) -> &'static str {
        match self {
            KeyType::Sha256 => "SHA256",
            KeyType::Aes128 => "AES",
            KeyType::Sha1 => "SHA1",
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct TestKey {
    pub id: u32,
    pub kind: KeyType,
    /// Secret as hex. These are obviously fake test secrets.
    pub hex: &'static str,
}

/// The keys every peer shares in these tests.
pub const GOOD_KEYS: [TestKey; 3] = [
    TestKey {
        id: KEY_SHA256,
        kind: KeyType::Sha256,
        hex: "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
    },
    TestKey {
        id: KEY_AES128,
        kind: KeyType::Aes128,
        hex: "000102030405060708090a0b0c0d0e0f",
    },
    TestKey {
        id: KEY_SHA1,
        kind: KeyType::Sha1,
        hex: "0123456789abcdef0123456789abcdef01234567",
    },
];

/// Same ids and types as [`GOOD_KEYS`], different secrets.
pub const WRONG_KEYS: [TestKey; 3] = [
    TestKey {
        id: KEY_SHA256,
        kind: KeyType::Sha256,
        hex: "deadbeefdeadbeefdeadbeefdeadbeefdeadbeefdeadbeefdeadbeefdeadbeef",
    },
    TestKey {
        id: KEY_AES128,
        kind: KeyType::Aes128,
        hex: "deadbeefdeadbeefdeadbeefdeadbeef",
    },
    TestKey {
        id: KEY_SHA1,
        kind: KeyType::Sha1,
        hex: "deadbeefdeadbeefdeadbeefdeadbeefdeadbeef",
    },
];

fn write_secret_file(path: &Path, contents: &str) {
    fs::write(path, contents).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .unwrap_or_else(|e| panic!("chmod 0600 {}: {e}", path.display()));
}

/// chrony keyfile: `ID TYPE HEX:<hex>`.
pub fn write_chrony_keys(path: &Path, keys: &[TestKey]) {
    let mut s = String::from("# ntimed interop test keys (fake secrets)\n");
    for k in keys {
        writeln!(s, "{} {} HEX:{}", k.id, k.kind.chrony_name(), k.hex).expect("write to String");
    }
    write_secret_file(path, &s);
}

/// ntp.keys: `ID TYPE <hex>` (keys longer than 20 characters are hex for NTPsec).
pub fn write_ntp_keys(path: &Path, keys: &[TestKey]) {
    let mut s = String::from("# ntimed interop test keys (fake secrets)\n");
    for k in keys {
        writeln!(s, "{} {} {}", k.id, k.kind.ntp_keys_name(), k.hex).expect("write to String");
    }
    write_secret_file(path, &s);
}

/// Keys other than SHA-256: NTPsec truncates digests longer than 20 bytes (its SHA256 MAC
/// is not chrony's), so ntp.keys files for NTPsec hold only SHA1 and AES keys.
pub fn ntpsec_compatible(keys: &[TestKey]) -> Vec<TestKey> {
    keys.iter()
        .copied()
        .filter(|k| k.kind != KeyType::Sha256)
        .collect()
}

/// The shared test keys in both formats, good and wrong, in a private tempdir.
pub struct TestKeys {
    /// chrony format, all three keys.
    pub chrony: PathBuf,
    /// chrony format, same ids/types, different secrets.
    pub chrony_wrong: PathBuf,
    /// ntp.keys format, SHA1 (3) and AES (2) only.
    pub ntp: PathBuf,
    /// ntp.keys format, same ids/types, different secrets.
    pub ntp_wrong: PathBuf,
    _dir: TempDir,
}

impl TestKeys {
    pub fn new() -> TestKeys {
        let dir = tempdir("keys");
        let p = |n: &str| dir.path().join(n);
        let keys = TestKeys {
            chrony: p("chrony.keys"),
            chrony_wrong: p("chrony-wrong.keys"),
            ntp: p("ntp.keys"),
            ntp_wrong: p("ntp-wrong.keys"),
            _dir: dir,
        };
        write_chrony_keys(&keys.chrony, &GOOD_KEYS);
        write_chrony_keys(&keys.chrony_wrong, &WRONG_KEYS);
        write_ntp_keys(&keys.ntp, &ntpsec_compatible(&GOOD_KEYS));
        write_ntp_keys(&keys.ntp_wrong, &ntpsec_compatible(&WRONG_KEYS));
        keys
    }
}

impl Default for TestKeys {
    fn default() -> Self {
        Self::new()
    }
}

pub fn tempdir(what: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(&format!("ntimed-interop-{what}-"))
        .tempdir()
        .expect("create tempdir")
}

// ---------------------------------------------------------------------------
// Process helpers
// ---------------------------------------------------------------------------

/// `[ip netns exec NS] setpriv --pdeathsig KILL --bounding-set -sys_time -- PROGRAM`.
/// `ip netns exec` and `setpriv` both exec, so the child's pid is PROGRAM's.
pub fn safe_command(netns: Option<&NetNs>, program: &str) -> Command {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns.name(), "setpriv"]);
            c
        }
        None => Command::new("setpriv"),
    };
    cmd.args(["--pdeathsig", "KILL", "--bounding-set", "-sys_time", "--"])
        .arg(program);
    cmd
}

fn with_ntpsec_env(cmd: &mut Command) -> &mut Command {
    cmd.env("LD_LIBRARY_PATH", NTPSEC_LD_LIBRARY_PATH)
        .env("PYTHONPATH", NTPSEC_PYTHONPATH)
}

#[derive(Debug)]
pub struct RunOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl RunOutput {
    pub fn describe(&self) -> String {
        format!(
            "{}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs a one-shot command with captured output, killing it after `limit`.
pub fn run_with_deadline(mut cmd: Command, limit: Duration) -> Result<RunOutput, String> {
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot spawn {desc}: {e}"))?;
    let reader = |pipe: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = reader(child.stdout.take().map(|p| Box::new(p) as _));
    let err = reader(child.stderr.take().map(|p| Box::new(p) as _));
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if start.elapsed() > limit => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{desc} did not finish within {limit:?}"));
            }
            Ok(None) => thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(format!("waiting for {desc}: {e}")),
        }
    };
    Ok(RunOutput {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// A long-running child process whose output goes to a log file; killed on Drop.
pub struct Daemon {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Daemon {
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Daemon {
        let file = fs::File::create(&log).expect("create daemon log");
        let file2 = file.try_clone().expect("clone log handle");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(file2)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        Daemon {
            name: name.to_string(),
            child,
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics unless the running process has CAP_SYS_TIME out of its bounding set (call
    /// once it is up: before setpriv has exec'd the daemon the check would be meaningless).
    pub fn assert_cannot_set_clock(&self) {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap_or_else(|e| panic!("reading /proc status of {}: {e}", self.name));
        let bnd = status
            .lines()
            .find_map(|l| l.strip_prefix("CapBnd:"))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no CapBnd for {}", self.name));
        let mask = u64::from_str_radix(bnd, 16).expect("CapBnd is hex");
        const CAP_SYS_TIME: u32 = 25;
        assert_eq!(
            mask & (1 << CAP_SYS_TIME),
            0,
            "{} (pid {}) still has CAP_SYS_TIME in its bounding set ({bnd})",
            self.name,
            self.pid()
        );
    }

    /// Panics with the log if the process has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(st)) = self.child.try_wait() {
            panic!(
                "{} exited early ({st}); log {}:\n{}",
                self.name,
                self.log.display(),
                self.log()
            );
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!(
                "--- log of {} ({}) ---\n{}",
                self.name,
                self.log.display(),
                self.log()
            );
        }
    }
}

/// Polls `check` every 100 ms until it returns true or `limit` passes.
pub fn wait_until(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if check() {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Is some socket bound to UDP `port` (in the namespace, if given)?
pub fn udp_port_bound(netns: Option<&NetNs>, port: u16) -> bool {
    let mut cmd = match netns {
        Some(ns) => ns.command("ss"),
        None => Command::new("ss"),
    };
    cmd.args(["-Hlun", &format!("sport = :{port}")]);
    match run_with_deadline(cmd, Duration::from_secs(5)) {
        Ok(o) => o.status.success() && !o.stdout.trim().is_empty(),
        Err(_) => false,
    }
}

/// Minimal unauthenticated SNTP request on the host's loopback: returns (leap, stratum) of a
/// valid mode-4 answer that echoes our transmit timestamp.
pub fn sntp_probe(addr: SocketAddr, timeout: Duration) -> Option<(u8, u8)> {
    let sock = UdpSocket::bind("127.0.0.1:0").ok()?;
    sock.set_read_timeout(Some(timeout)).ok()?;
    let mut req = [0u8; 48];
    req[0] = 0x23; // LI 0, VN 4, mode 3
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(1);
    let xmt = (nanos as u64) | 1;
    req[40..48].copy_from_slice(&xmt.to_be_bytes());
    sock.send_to(&req, addr).ok()?;
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let (n, from) = sock.recv_from(&mut buf).ok()?;
        if from == addr && n >= 48 && buf[0] & 7 == 4 && buf[24..32] == req[40..48] {
            return Some((buf[0] >> 6, buf[1]));
        }
    }
    None
}

// ---------------------------------------------------------------------------
// Network namespaces
// ---------------------------------------------------------------------------

const NETNS_PREFIX: &str = "ntimed-t-";

/// A private network namespace with `lo` up; deleted on Drop. Drop every process running in
/// it first (the server structs below do that by field order).
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    pub fn new() -> NetNs {
        remove_stale_netns();
        let name = format!("{NETNS_PREFIX}{}", unique_suffix());
        ip(&["netns", "add", &name]).unwrap_or_else(|e| panic!("ip netns add {name}: {e}"));
        let ns = NetNs { name };
        let mut up = ns.command("ip");
        up.args(["link", "set", "lo", "up"]);
        match run_with_deadline(up, Duration::from_secs(10)) {
            Ok(o) if o.status.success() => {}
            Ok(o) => panic!("ip link set lo up in {}: {}", ns.name, o.describe()),
            Err(e) => panic!("ip link set lo up in {}: {e}", ns.name),
        }
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip netns exec NAME program` (no privilege dropping: use [`safe_command`] for
    /// anything NTP-related).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs `args[0] args[1..]` inside the namespace and returns its output.
    pub fn exec(&self, args: &[&str]) -> Result<RunOutput, String> {
        let (program, rest) = args.split_first().ok_or("empty command")?;
        let mut c = self.command(program);
        c.args(rest);
        run_with_deadline(c, Duration::from_secs(30))
    }
}

impl Default for NetNs {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("warning: ip netns del {}: {e}", self.name);
        }
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let mut c = Command::new("ip");
    c.args(args);
    let o = run_with_deadline(c, Duration::from_secs(10))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(o.describe())
    }
}

/// Deletes namespaces left behind by test processes that were killed (name carries the pid).
fn remove_stale_netns() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let Ok(entries) = fs::read_dir("/run/netns") else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(NETNS_PREFIX) else {
                continue;
            };
            let Some(pid) = rest.split('-').next() else {
                continue;
            };
            if !Path::new("/proc").join(pid).exists() {
                let _ = ip(&["netns", "del", &name]);
            }
        }
    });
}

// ---------------------------------------------------------------------------
// chrony
// ---------------------------------------------------------------------------

/// `chronyd -x -d` serving time on 127.0.0.1:port as `local stratum 1`, with a keyfile.
pub struct ChronyServer {
    daemon: Daemon,
    port: u16,
    dir: TempDir,
}

impl ChronyServer {
    /// Starts the server and waits until it answers a plain SNTP request with a
    /// synchronised reply.
    pub fn start(keyfile: &Path) -> ChronyServer {
        let dir = tempdir("chronyd");
        let port = free_port();
        let d = dir.path().display();
        let conf = format!(
            "port {port}\n\
             bindaddress 127.0.0.1\n\
             keyfile {keyfile}\n\
             local stratum 1\n\
             allow 127.0.0.1\n\
             cmdport 0\n\
             bindcmdaddress /\n\
             pidfile {d}/chronyd.pid\n\
             driftfile {d}/drift\n",
            keyfile = keyfile.display(),
        );
        let conf_path = dir.path().join("chronyd.conf");
        fs::write(&conf_path, conf).expect("write chronyd.conf");
        let mut cmd = safe_command(None, CHRONYD);
        cmd.args(["-x", "-d", "-u", "root", "-L", "0", "-f"])
            .arg(&conf_path);
        let daemon = Daemon::spawn("chronyd server", cmd, dir.path().join("chronyd.log"));
        let mut server = ChronyServer { daemon, port, dir };
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let ready = wait_until(Duration::from_secs(15), || {
            server.daemon.assert_running();
            matches!(sntp_probe(addr, Duration::from_millis(300)),
                     Some((leap, stratum)) if leap != 3 && (1..16).contains(&stratum))
        });
        assert!(
            ready,
            "chronyd server on port {port} never answered; log:\n{}",
            server.daemon.log()
        );
        server.daemon.assert_cannot_set_clock();
        server
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn log(&self) -> String {
        self.daemon.log()
    }
}

/// `chronyd -Q` one-shot measurement against 127.0.0.1:`port` with `key_id` from the
/// chrony-format `keyfile`. Returns chrony's offset (seconds, "System clock wrong by").
pub fn chrony_query(port: u16, key_id: Option<u32>, keyfile: &Path) -> Result<f64, String> {
    chrony_query_with(None, port, key_id, keyfile, 10)
}

/// Like [`chrony_query`], optionally inside a network namespace, with chronyd's `-t`
/// timeout in seconds (keep it short, e.g. 3, when no valid answer is expected: four
/// samples normally take ~0.3 s with the fast polling used here).
pub fn chrony_query_with(
    netns: Option<&NetNs>,
    port: u16,
    key_id: Option<u32>,
    keyfile: &Path,
    timeout_secs: u32,
) -> Result<f64, String> {
    let dir = tempdir("chronyq");
    let d = dir.path().display();
    let key = key_id.map(|k| format!(" key {k}")).unwrap_or_default();
    // minpoll/maxpoll -4: a sample every 1/16 s instead of iburst's 2 s spacing.
    let conf = format!(
        "server 127.0.0.1 port {port}{key} minpoll -4 maxpoll -4 iburst maxsamples 4\n\
         keyfile {keyfile}\n\
         cmdport 0\n\
         bindcmdaddress /\n\
         pidfile {d}/client.pid\n",
        keyfile = keyfile.display(),
    );
    let conf_path = dir.path().join("client.conf");
    fs::write(&conf_path, &conf).map_err(|e| format!("write client.conf: {e}"))?;
    let mut cmd = safe_command(netns, CHRONYD);
    cmd.args(["-u", "root", "-Q", "-t", &timeout_secs.to_string(), "-f"])
        .arg(&conf_path);
    let out = run_with_deadline(cmd, Duration::from_secs(u64::from(timeout_secs) + 10))?;
    let all = format!("{}{}", out.stdout, out.stderr);
    for line in all.lines() {
        if let Some(rest) = line.split("System clock wrong by ").nth(1) {
            let num = rest.split_whitespace().next().unwrap_or("");
            return num
                .parse::<f64>()
                .map_err(|e| format!("cannot parse chronyd offset {num:?}: {e}\n{all}"));
        }
    }
    let reason = if all.contains("No suitable source") {
        "no suitable source"
    } else if all.contains("Timeout reached") {
        "timeout reached"
    } else {
        "no measurement"
    };
    Err(format!(
        "chronyd -Q: {reason} (config:\n{conf}){}",
        out.describe()
    ))
}

// ---------------------------------------------------------------------------
// NTPsec
// ---------------------------------------------------------------------------

/// NTPsec's ntpd in its own network namespace on 127.0.0.1:123 (orphan mode, stratum 5).
///
/// NTPsec's built-in `restrict default` has `limited` (rate limiting: after a few quick
/// chronyd -Q runs ntpd silently drops 127.0.0.1's requests) and `noquery`; the test
/// configuration turns both off with `unrestrict default noquery limited`.
pub struct NtpsecServer {
    // Field order matters: the daemon is killed before the namespace is deleted.
    daemon: Daemon,
    netns: NetNs,
    dir: TempDir,
}

impl NtpsecServer {
    /// Starts ntpd with `ntp_keys` trusting `trusted_keys`, and waits until it serves
    /// synchronised time (ntpdig gets an answer; ~2 s for orphan mode).
    pub fn start(ntp_keys: &Path, trusted_keys: &[u32]) -> NtpsecServer {
        let netns = NetNs::new();
        let dir = tempdir("ntpd");
        let d = dir.path().display();
        let trusted: Vec<String> = trusted_keys.iter().map(u32::to_string).collect();
        let conf = format!(
            "tos orphan 5 orphanwait 1\n\
             keys {keys}\n\
             trustedkey {trusted}\n\
             disable ntp\n\
             unrestrict default noquery limited\n\
             statsdir {d}/\n\
             logfile {d}/ntpd.log\n\
             driftfile {d}/ntp.drift\n",
            keys = ntp_keys.display(),
            trusted = trusted.join(" "),
        );
        assert!(conf.contains("disable ntp"));
        let conf_path = dir.path().join("ntp.conf");
        fs::write(&conf_path, conf).expect("write ntp.conf");
        let mut cmd = safe_command(Some(&netns), NTPD);
        with_ntpsec_env(&mut cmd)
            .args(["-n", "-c"])
            .arg(&conf_path)
            .arg("-p")
            .arg(dir.path().join("ntpd.pid"));
        let daemon = Daemon::spawn("ntpd", cmd, dir.path().join("ntpd.out"));
        let mut server = NtpsecServer { daemon, netns, dir };
        let ready = {
            let NtpsecServer { daemon, netns, .. } = &mut server;
            wait_until(Duration::from_secs(20), || {
                daemon.assert_running();
                ntpdig_with(netns, None, None, 1, 1).is_ok()
            })
        };
        assert!(ready, "ntpd never served time; log:\n{}", server.log());
        server.daemon.assert_cannot_set_clock();
        server
    }

    pub fn netns(&self) -> &NetNs {
        &self.netns
    }

    pub fn log(&self) -> String {
        let file = fs::read_to_string(self.dir.path().join("ntpd.log")).unwrap_or_default();
        format!("{}{}", self.daemon.log(), file)
    }
}

#[derive(Clone, Debug)]
pub struct NtpdigReply {
    /// Offset in seconds (ntpdig prints microsecond resolution).
    pub offset: f64,
    /// ntpdig's "+/-" error bound (synchronisation distance) in seconds.
    pub error: f64,
    pub stratum: u8,
    /// "no-leap", "add-leap", "del-leap" or "unsync".
    pub leap: String,
}

/// Keyed ntpdig query (key id `key_id` from ntp.keys-format `keyfile`) of 127.0.0.1:123
/// inside `netns`: 4 samples, ntpdig reports the best one.
pub fn ntpdig(netns: &NetNs, key_id: u32, keyfile: &Path) -> Result<NtpdigReply, String> {
    ntpdig_with(netns, Some(key_id), Some(keyfile), 2, 4)
}

/// `python3 ntpdig -j [-a K -k FILE] -t TIMEOUT -p SAMPLES -g 10 127.0.0.1` in `netns`.
/// A run without a valid answer takes about `samples * timeout_secs`.
///
/// ntpdig -j prints one line like
/// `{"time":"2026-11-21T12:18:51.789651+0000","offset":0.000178,"precision":0.000337,
///   "host":"127.0.0.1","ip":"127.0.0.1","stratum":5,"leap":"no-leap","adjusted":false}`
/// (plain output: `2026-11-21 12:18:43.426169 (+0000) +0.000228 +/- 0.000513 127.0.0.1 s5
/// no-leap`) and exits 0; without a valid answer it prints `ntpdig: no eligible servers`
/// on stderr and exits 1.
pub fn ntpdig_with(
    netns: &NetNs,
    key_id: Option<u32>,
    keyfile: Option<&Path>,
    timeout_secs: u32,
    samples: u32,
) -> Result<NtpdigReply, String> {
    let mut cmd = safe_command(Some(netns), SYSTEM_PYTHON3);
    with_ntpsec_env(&mut cmd).arg(NTPDIG).arg("-j");
    if let Some(k) = key_id {
        cmd.args(["-a", &k.to_string()]);
    }
    if let Some(f) = keyfile {
        cmd.arg("-k").arg(f);
    }
    cmd.args(["-t", &timeout_secs.to_string()])
        .args(["-p", &samples.to_string(), "-g", "10"])
        .arg("127.0.0.1");
    let limit = Duration::from_secs(u64::from(timeout_secs * samples) + 15);
    let out = run_with_deadline(cmd, limit)?;
    if !out.status.success() {
        return Err(format!("ntpdig failed: {}", out.describe()));
    }
    let line = out
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with('{'))
        .ok_or_else(|| format!("ntpdig printed no JSON: {}", out.describe()))?;
    let v: Value = serde_json::from_str(line)
        .map_err(|e| format!("ntpdig JSON {line:?}: {e}\n{}", out.describe()))?;
    let field = |name: &str| {
        v.get(name)
            .and_then(Value::as_f64)
            .ok_or_else(|| format!("ntpdig JSON lacks numeric {name}: {line}"))
    };
    let stratum = field("stratum")?;
    Ok(NtpdigReply {
        offset: field("offset")?,
        error: field("precision")?,
        stratum: u8::try_from(stratum as u64).map_err(|e| format!("stratum {stratum}: {e}"))?,
        leap: v
            .get("leap")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
    })
}

// ---------------------------------------------------------------------------
// ntimed
// ---------------------------------------------------------------------------

pub fn ntimed_bin() -> &'static str {
    env!("CARGO_BIN_EXE_ntimed")
}

fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `ntimed run --config FILE` as a local stratum-1 server; killed on Drop.
pub struct NtimedServer {
    // Field order matters: the daemon is killed before the namespace is deleted.
    daemon: Daemon,
    netns: Option<NetNs>,
    listen: SocketAddr,
    dir: TempDir,
}

impl NtimedServer {
    /// On the host's loopback, on a fresh port.
    pub fn start(keys_file: Option<&Path>) -> NtimedServer {
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        Self::start_with(None, addr, keys_file, "")
    }

    /// In a new network namespace on 127.0.0.1:123 (for ntpdig, which has no port option).
    pub fn start_in_netns(keys_file: Option<&Path>) -> NtimedServer {
        let ns = NetNs::new();
        Self::start_with(Some(ns), ([127, 0, 0, 1], 123).into(), keys_file, "")
    }

    /// General form; `extra_toml` is appended to the generated configuration.
    pub fn start_with(
        netns: Option<NetNs>,
        listen: SocketAddr,
        keys_file: Option<&Path>,
        extra_toml: &str,
    ) -> NtimedServer {
        let dir = tempdir("ntimed");
        let mut conf = String::new();
        if let Some(k) = keys_file {
            let k = k.to_str().expect("UTF-8 key path");
            writeln!(conf, "[keys]\nfile = {}\n", toml_string(k)).expect("write to String");
        }
        writeln!(
            conf,
            "[local]\nstratum = 1\n\n[[server]]\nlisten = {}\n",
            toml_string(&listen.to_string())
        )
        .expect("write to String");
        conf.push_str(extra_toml);
        let conf_path = dir.path().join("ntimed.toml");
        fs::write(&conf_path, &conf).expect("write ntimed.toml");
        let mut cmd = safe_command(netns.as_ref(), ntimed_bin());
        cmd.arg("run").arg("--config").arg(&conf_path);
        let daemon = Daemon::spawn("ntimed run", cmd, dir.path().join("ntimed.log"));
        let mut server = NtimedServer {
            daemon,
            netns,
            listen,
            dir,
        };
        let ready = {
            let NtimedServer { daemon, netns, .. } = &mut server;
            wait_until(Duration::from_secs(15), || {
                daemon.assert_running();
                udp_port_bound(netns.as_ref(), listen.port())
            })
        };
        assert!(
            ready,
            "ntimed run never bound {listen}; config:\n{conf}\nlog:\n{}",
            server.daemon.log()
        );
        server.daemon.assert_cannot_set_clock();
        server
    }

    pub fn addr(&self) -> SocketAddr {
        self.listen
    }

    pub fn port(&self) -> u16 {
        self.listen.port()
    }

    pub fn netns(&self) -> Option<&NetNs> {
        self.netns.as_ref()
    }

    pub fn log(&self) -> String {
        self.daemon.log()
    }

    pub fn config_dir(&self) -> &Path {
        self.dir.path()
    }
}

/// Arguments of `ntimed query`.
#[derive(Clone, Debug, Default)]
pub struct QueryArgs<'a> {
    /// HOST:PORT
    pub server: String,
    pub key: Option<(&'a Path, u32)>,
    pub count: Option<u32>,
    /// `--timeout`: seconds to wait for each reply (ntimed's default is 2).
    pub timeout_secs: Option<f64>,
    /// `--interval`: seconds between exchanges (ntimed's default is 1).
    pub interval_secs: Option<f64>,
    pub netns: Option<&'a NetNs>,
}

impl<'a> QueryArgs<'a> {
    pub fn new(server: impl Into<String>) -> Self {
        QueryArgs {
            server: server.into(),
            ..Default::default()
        }
    }

    pub fn key(mut self, file: &'a Path, id: u32) -> Self {
        self.key = Some((file, id));
        self
    }

    pub fn count(mut self, n: u32) -> Self {
        self.count = Some(n);
        self
    }

    pub fn timeout(mut self, secs: f64) -> Self {
        self.timeout_secs = Some(secs);
        self
    }

    pub fn interval(mut self, secs: f64) -> Self {
        self.interval_secs = Some(secs);
        self
    }

    pub fn netns(mut self, ns: &'a NetNs) -> Self {
        self.netns = Some(ns);
        self
    }
}

/// Runs `ntimed query SERVER [--key-file F --key-id N] [--count N] [--timeout S]
/// [--interval S] --json`
/// and returns one JSON object per reply line. Err (with stderr) on a non-zero exit.
pub fn ntimed_query(args: &QueryArgs) -> Result<Vec<Value>, String> {
    let mut cmd = safe_command(args.netns, ntimed_bin());
    cmd.arg("query").arg(&args.server);
    if let Some((file, id)) = args.key {
        cmd.arg("--key-file").arg(file);
        cmd.args(["--key-id", &id.to_string()]);
    }
    if let Some(n) = args.count {
        cmd.args(["--count", &n.to_string()]);
    }
    if let Some(t) = args.timeout_secs {
        cmd.args(["--timeout", &t.to_string()]);
    }
    if let Some(i) = args.interval_secs {
        cmd.args(["--interval", &i.to_string()]);
    }
    cmd.arg("--json");
    let count = f64::from(args.count.unwrap_or(1));
    let budget = (args.timeout_secs.unwrap_or(2.0) + args.interval_secs.unwrap_or(1.0)) * count;
    let out = run_with_deadline(cmd, Duration::from_secs_f64(budget + 15.0))?;
    if !out.status.success() {
        return Err(format!("ntimed query failed: {}", out.describe()));
    }
    let mut replies = Vec::new();
    for line in out.stdout.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line)
            .map_err(|e| format!("ntimed query JSON {line:?}: {e}\n{}", out.describe()))?;
        replies.push(v);
    }
    if replies.is_empty() {
        return Err(format!(
            "ntimed query exited 0 without output: {}",
            out.describe()
        ));
    }
    Ok(replies)
}

/// The reply with the smallest round-trip delay (least disturbed by scheduling).
pub fn best_reply(replies: &[Value]) -> &Value {
    replies
        .iter()
        .min_by(|a, b| {
            let d = |v: &Value| v.get("delay").and_then(Value::as_f64).unwrap_or(f64::MAX);
            d(a).total_cmp(&d(b))
        })
        .expect("at least one reply")
}

pub fn json_f64(v: &Value, field: &str) -> f64 {
    v.get(field)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("reply lacks numeric {field:?}: {v}"))
}

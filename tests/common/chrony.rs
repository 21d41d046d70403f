//! chrony 4.3: `chronyd -x` as a server (symmetric keys or NTS), and `chronyd -Q` as a
//! one-shot client ([`ChronydQuery`], the one way the tests run it). chronyd never runs
//! without `-x` or `-Q`, and always under [`safe_command`].

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tempfile::TempDir;

use super::files::tempdir;
use super::net::{free_port, sntp_probe, tcp_port_listening};
use super::netns::NetNs;
use super::nts::TestCerts;
use super::process::{Daemon, run_with_deadline, safe_command, wait_until};

pub const CHRONYD: &str = "/usr/sbin/chronyd";

/// Writes `conf` to `dir`/chronyd.conf and starts `chronyd -x -d -u root -L 0 -f` with it
/// on the host (`-x`: never touches the clock), logging to `dir`/chronyd.log.
pub fn spawn_chronyd_x(name: &str, dir: &Path, conf: &str) -> Daemon {
    let conf_path = dir.join("chronyd.conf");
    fs::write(&conf_path, conf).expect("write chronyd.conf");
    let mut cmd = safe_command(None, CHRONYD);
    cmd.args(["-x", "-d", "-u", "root", "-L", "0", "-f"])
        .arg(&conf_path);
    Daemon::spawn(name, cmd, dir.join("chronyd.log"))
}

/// `chronyd -x -d` serving time on 127.0.0.1 as `local stratum 1`: with a keyfile
/// ([`ChronyServer::start`]) or as an NTS server ([`ChronyServer::start_nts`]).
pub struct ChronyServer {
    daemon: Daemon,
    port: u16,
    ke_port: Option<u16>,
    dir: TempDir,
}

impl ChronyServer {
    /// Serves on a fresh port with `keyfile`; waits until it answers a plain SNTP request
    /// with a synchronised reply.
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
        let daemon = spawn_chronyd_x("chronyd server", dir.path(), &conf);
        let mut server = ChronyServer {
            daemon,
            port,
            ke_port: None,
            dir,
        };
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

    /// An NTS server: NTP and NTS-KE on fresh ports, with srv-chain.pem / srv.key from
    /// `certs`; `ntsprocesses 0` keeps NTS-KE in the one process the Drop guard kills.
    /// Waits until NTS-KE listens and NTP answers with a synchronised reply.
    pub fn start_nts(certs: &TestCerts) -> ChronyServer {
        let dir = tempdir("chronyd-nts");
        let (ntp_port, ke_port) = (free_port(), free_port());
        let d = dir.path().display();
        fs::create_dir(dir.path().join("dump")).expect("mkdir dump");
        let conf = format!(
            "port {ntp_port}\n\
             ntsport {ke_port}\n\
             bindaddress 127.0.0.1\n\
             ntsservercert {chain}\n\
             ntsserverkey {key}\n\
             ntsdumpdir {d}/dump\n\
             ntsprocesses 0\n\
             local stratum 1\n\
             allow 127.0.0.1\n\
             cmdport 0\n\
             bindcmdaddress /\n\
             pidfile {d}/chronyd.pid\n\
             driftfile {d}/drift\n",
            chain = certs.path("srv-chain.pem").display(),
            key = certs.path("srv.key").display(),
        );
        let daemon = spawn_chronyd_x("chronyd NTS server", dir.path(), &conf);
        let mut server = ChronyServer {
            daemon,
            port: ntp_port,
            ke_port: Some(ke_port),
            dir,
        };
        let addr: SocketAddr = ([127, 0, 0, 1], ntp_port).into();
        let ready = wait_until(Duration::from_secs(15), || {
            server.daemon.assert_running();
            tcp_port_listening(None, ke_port)
                && matches!(sntp_probe(addr, Duration::from_millis(300)),
                            Some((leap, stratum)) if leap != 3 && (1..16).contains(&stratum))
        });
        assert!(
            ready,
            "chronyd NTS server (NTP {ntp_port}, NTS-KE {ke_port}) never served; config:\n{conf}\nlog:\n{}",
            server.daemon.log()
        );
        server.daemon.assert_cannot_set_clock();
        server
    }

    /// The NTP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The NTS-KE port (NTS servers only).
    pub fn ke_port(&self) -> u16 {
        self.ke_port.expect("an NTS server")
    }

    pub fn log(&self) -> String {
        self.daemon.log()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// What a `chronyd -Q` run measured.
#[derive(Debug)]
pub struct ChronyQ {
    /// "System clock wrong by X seconds": positive when the server is ahead of us.
    pub offset: f64,
    pub output: String,
}

/// One `chronyd -Q` measurement of one server: the only way the tests run chronyd as a
/// client. Four samples 1/16 s apart (`minpoll -4 maxpoll -4 iburst maxsamples 4`),
/// `-t 10` unless [`timeout`](Self::timeout) says otherwise, on the host unless
/// [`netns`](Self::netns) says otherwise.
///
/// ```ignore
/// ChronydQuery::new("127.0.0.1", port).key(&keys.chrony, KEY_SHA1).run()
/// ChronydQuery::new("localhost", ntp_port).nts(ke_port, &certs.ca()).timeout(3).run()
/// ```
#[derive(Clone, Debug)]
pub struct ChronydQuery<'a> {
    host: String,
    port: u16,
    key: Option<(&'a Path, u32)>,
    nts: Option<(u16, &'a Path)>,
    netns: Option<&'a NetNs>,
    timeout_secs: u32,
}

impl<'a> ChronydQuery<'a> {
    /// `server HOST port PORT …`.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        ChronydQuery {
            host: host.into(),
            port,
            key: None,
            nts: None,
            netns: None,
            timeout_secs: 10,
        }
    }

    /// `key ID` on the server line, and `keyfile FILE` (chrony's format).
    pub fn key(mut self, keyfile: &'a Path, id: u32) -> Self {
        self.key = Some((keyfile, id));
        self
    }

    /// `nts ntsport KE_PORT` on the server line, trusting only `ca` (`ntstrustedcerts`).
    pub fn nts(mut self, ke_port: u16, ca: &'a Path) -> Self {
        self.nts = Some((ke_port, ca));
        self
    }

    /// Runs chronyd inside `ns`.
    pub fn netns(mut self, ns: &'a NetNs) -> Self {
        self.netns = Some(ns);
        self
    }

    /// chronyd's `-t` timeout in seconds (keep it short, e.g. 2 or 3, when no valid
    /// answer is expected: four samples normally take ~0.3 s with this fast polling).
    pub fn timeout(mut self, secs: u32) -> Self {
        self.timeout_secs = secs;
        self
    }

    /// The configuration chronyd gets (pidfile, cmdport 0 and bindcmdaddress / are added
    /// by [`run`](Self::run)).
    pub fn config(&self) -> String {
        let key = self
            .key
            .map(|(_, id)| format!(" key {id}"))
            .unwrap_or_default();
        let nts = self
            .nts
            .map(|(ke_port, _)| format!(" nts ntsport {ke_port}"))
            .unwrap_or_default();
        let mut conf = format!(
            "server {host} port {port}{key}{nts} minpoll -4 maxpoll -4 iburst maxsamples 4\n",
            host = self.host,
            port = self.port,
        );
        if let Some((keyfile, _)) = self.key {
            conf += &format!("keyfile {}\n", keyfile.display());
        }
        if let Some((_, ca)) = self.nts {
            conf += &format!("ntstrustedcerts {}\n", ca.display());
        }
        conf
    }

    /// `chronyd -Q -t TIMEOUT -f FILE`; chrony's offset, or Err with the output when it
    /// measured nothing (the message says "no suitable source" or "timeout reached"
    /// when chronyd ran but got no valid sample).
    pub fn run(&self) -> Result<ChronyQ, String> {
        let dir = tempdir("chronyd-q");
        let conf = format!(
            "{}cmdport 0\nbindcmdaddress /\npidfile {}/client.pid\n",
            self.config(),
            dir.path().display()
        );
        let conf_path = dir.path().join("client.conf");
        fs::write(&conf_path, &conf).map_err(|e| format!("write client.conf: {e}"))?;
        let mut cmd = safe_command(self.netns, CHRONYD);
        cmd.args([
            "-u",
            "root",
            "-Q",
            "-t",
            &self.timeout_secs.to_string(),
            "-f",
        ])
        .arg(&conf_path);
        let limit = Duration::from_secs(u64::from(self.timeout_secs) + 10);
        let out = run_with_deadline(cmd, limit)?;
        let all = format!("{}{}", out.stdout, out.stderr);
        for line in all.lines() {
            if let Some(rest) = line.split("System clock wrong by ").nth(1) {
                let num = rest.split_whitespace().next().unwrap_or("");
                let offset = num
                    .parse::<f64>()
                    .map_err(|e| format!("cannot parse chronyd offset {num:?}: {e}\n{all}"))?;
                return Ok(ChronyQ {
                    offset,
                    output: all,
                });
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
}

//! Server CPU time per completed NTS-KE exchange (TLS 1.3 handshake, records, close),
//! ntimed against chronyd in the same run: `cargo bench --bench ke_cpu`.
//!
//! Each server runs as its own process (chronyd with `ntsprocesses 1`), without
//! CAP_SYS_TIME; its CPU time (all threads and helper processes, from /proc) is read
//! before and after a burst of key exchanges from this process on loopback.
//! Environment: `KE_EXCHANGES` (default 2000), `KE_PARALLEL` (default 8), and
//! `KE_SERVER_CPUS` (a `taskset` CPU list for the servers, e.g. `0`; run the bench
//! itself under `taskset -c 1` so client and servers do not share cores).
//!
//! Each exchange comes from a loopback address of its own (127.1.x.y), since ntimed
//! limits the handshake rate of each address (16/s after a burst of 64); with
//! `KE_ONE_ADDRESS` set, all come from 127.1.0.1 (clients behind one NAT).
//!
//! `KE_BASELINE` names another ntimed binary (an older build, say) to measure in the
//! same run, after this one: runs drift by a tenth on this machine, so only figures
//! from one run compare.
//!
//! Run as root, ntimed would separate privileges and do its work in a child; the bench
//! starts it as `nobody` instead (one process, as measured), in a directory it owns.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ntimed::daemon::nts;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU seconds used so far by `pid`, its threads and its child processes: the
/// scheduler's run time of each thread (`/proc/*/task/*/schedstat`, in nanoseconds),
/// where utime and stime are sampled at each clock tick and scatter by a tenth over a
/// few thousand exchanges.
fn cpu_seconds(pid: u32) -> f64 {
    let mut pids = vec![pid];
    if let Ok(children) = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) {
        pids.extend(
            children
                .split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    let mut nanos = 0u64;
    for p in pids {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let ran = std::fs::read_to_string(task.path().join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok());
            nanos += ran.unwrap_or(0);
        }
    }
    nanos as f64 * 1e-9
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn copy_private(from: &Path, to: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::copy(from, to).expect("copy");
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

/// `setpriv`, under `taskset` when `KE_SERVER_CPUS` is set; both exec, so the child's
/// pid is the server's.
fn server_command() -> Command {
    match std::env::var("KE_SERVER_CPUS") {
        Ok(cpus) => {
            let mut cmd = Command::new("taskset");
            cmd.args(["-c", &cpus, "setpriv"]);
            cmd
        }
        Err(_) => Command::new("setpriv"),
    }
}

const NOBODY: u32 = 65534;

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|v| v.split_whitespace().next())
            == Some("0")
    })
}

fn start_ntimed(binary: &Path, dir: &Path, ke_port: u16, threads: usize) -> Proc {
    let config = dir.join("ntimed.toml");
    std::fs::write(
        &config,
        format!(
            "[local]\nstratum = 1\n[[server]]\nlisten = \"127.0.0.1:{}\"\n[[nts-ke-server]]\nlisten = \"127.0.0.1:{ke_port}\"\ncertificate-chain = \"srv-chain.pem\"\nprivate-key = \"srv.key\"\n[nts]\nkey-dir = \"state\"\n",
            free_port()
        ),
    )
    .expect("config");
    let mut cmd = server_command();
    if is_root() {
        cmd.args(["--reuid", "65534", "--regid", "65534", "--clear-groups"]);
    }
    let child = cmd
        .args(["--bounding-set", "-sys_time", "--"])
        .arg(binary)
        .args(["run", "--config"])
        .arg(&config)
        .env("TOKIO_WORKER_THREADS", threads.to_string())
        .stderr(Stdio::null())
        .spawn()
        .expect("ntimed run");
    Proc(child)
}

fn start_chronyd(dir: &Path, ke_port: u16) -> Option<(Proc, u32)> {
    if !Path::new("/usr/sbin/chronyd").exists() {
        eprintln!("chronyd not installed: skipping it (apt-get install chrony)");
        return None;
    }
    let config = dir.join("chrony.conf");
    std::fs::write(
        &config,
        format!(
            "port {}\nntsport {ke_port}\nbindaddress 127.0.0.1\nntsservercert {d}/srv-chain.pem\nntsserverkey {d}/srv.key\nntsprocesses 1\nntsdumpdir {d}\nlocal stratum 1\nallow 127.0.0.0/8\ncmdport 0\nbindcmdaddress /\npidfile {d}/chronyd.pid\n",
            free_port(),
            d = dir.display()
        ),
    )
    .expect("chrony config");
    let child = server_command()
        .args([
            "--bounding-set",
            "-sys_time",
            "--",
            "/usr/sbin/chronyd",
            "-x",
            "-d",
            "-u",
            "root",
            "-f",
        ])
        .arg(&config)
        .stderr(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("chronyd");
    let pid = child.id();
    Some((Proc(child), pid))
}

/// One NTS-KE exchange with `localhost` at 127.0.0.1:`port`, from the next loopback
/// address 127.1.x.y; Ok if the server answered.
async fn key_exchange(port: u16, tls: Arc<rustls::ClientConfig>) -> Result<(), String> {
    static NEXT_SOURCE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = match std::env::var_os("KE_ONE_ADDRESS") {
        Some(_) => 1,
        None => NEXT_SOURCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
    };
    let from = Ipv4Addr::from(0x7f01_0000 | (n & 0xffff));
    let socket = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
    socket
        .bind(SocketAddr::from((from, 0)))
        .map_err(|e| format!("bind {from}: {e}"))?;
    let tcp = socket
        .connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    let mut tls = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let mut request = Vec::new();
    ntimed::auth::nts::ke::write_request(&mut request);
    tls.write_all(&request).await.map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    tls.read_to_end(&mut response)
        .await
        .map_err(|e| e.to_string())?;
    if response.is_empty() {
        return Err("no answer".into());
    }
    Ok(())
}

/// Runs `total` key exchanges, `parallel` at a time; returns (completed, seconds).
fn hammer(port: u16, ca: &Path, total: usize, parallel: usize) -> (usize, f64) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let tls = nts::client_config(Some(ca)).expect("client config");
        // Wait for the server to come up.
        for _ in 0..100 {
            if tokio::time::timeout(Duration::from_secs(2), key_exchange(port, tls.clone()))
                .await
                .is_ok_and(|r| r.is_ok())
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let left = Arc::new(std::sync::atomic::AtomicUsize::new(total));
        let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let start = Instant::now();
        let tasks: Vec<_> = (0..parallel)
            .map(|_| {
                let (tls, left, done) = (tls.clone(), left.clone(), done.clone());
                tokio::spawn(async move {
                    use std::sync::atomic::Ordering::Relaxed;
                    while left
                        .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1))
                        .is_ok()
                    {
                        if tokio::time::timeout(
                            Duration::from_secs(5),
                            key_exchange(port, tls.clone()),
                        )
                        .await
                        .is_ok_and(|r| r.is_ok())
                        {
                            done.fetch_add(1, Relaxed);
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            let _ = t.await;
        }
        (
            done.load(std::sync::atomic::Ordering::Relaxed),
            start.elapsed().as_secs_f64(),
        )
    })
}

fn measure(name: &str, pid: u32, port: u16, ca: &Path, total: usize, parallel: usize) {
    let _ = hammer(port, ca, 50, 4); // warm up
    let before = cpu_seconds(pid);
    let (done, secs) = hammer(port, ca, total, parallel);
    let cpu = cpu_seconds(pid) - before;
    assert!(
        done > 0,
        "{name}: no key exchange completed (did the server start?)"
    );
    println!(
        "{name:<28} {done:>6} exchanges  {:>7.0} µs server CPU each  {:>7.0} exchanges/s",
        cpu / done.max(1) as f64 * 1e6,
        done as f64 / secs
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let total = env_usize("KE_EXCHANGES", 2000);
    let parallel = env_usize("KE_PARALLEL", 8);
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("certs");
    std::fs::copy(
        certs.join("srv-chain.pem"),
        dir.path().join("srv-chain.pem"),
    )
    .expect("chain");
    copy_private(&certs.join("srv.key"), &dir.path().join("srv.key"));
    let ca = certs.join("ca.pem");
    if is_root() {
        // ntimed runs as nobody: its directory, key, and key-dir are nobody's.
        let state = dir.path().join("state");
        std::fs::create_dir(&state).expect("state dir");
        for path in [
            dir.path(),
            &state,
            &dir.path().join("srv-chain.pem"),
            &dir.path().join("srv.key"),
        ] {
            std::os::unix::fs::chown(path, Some(NOBODY), Some(NOBODY)).expect("chown to nobody");
        }
    }
    println!("NTS-KE server CPU per exchange, {total} exchanges, {parallel} in parallel, loopback");
    let cores = match std::env::var("KE_SERVER_CPUS") {
        // One worker per CPU the servers may use.
        Ok(cpus) => cpus.split(',').count(),
        Err(_) => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let mut binaries = vec![("ntimed", PathBuf::from(env!("CARGO_BIN_EXE_ntimed")))];
    if let Some(baseline) = std::env::var_os("KE_BASELINE") {
        binaries.push(("baseline", PathBuf::from(baseline)));
    }
    for threads in 1..=cores {
        for (name, binary) in &binaries {
            let port = free_port();
            let server = start_ntimed(binary, dir.path(), port, threads);
            measure(
                &format!("{name} ({threads} worker threads)"),
                server.0.id(),
                port,
                &ca,
                total,
                parallel,
            );
        }
    }
    let port = free_port();
    if let Some((_server, pid)) = start_chronyd(dir.path(), port) {
        measure("chronyd (ntsprocesses 1)", pid, port, &ca, total, parallel);
    }
}

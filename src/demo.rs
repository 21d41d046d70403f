//! `ntimed demo`: the whole path on loopback, offline, with nothing to set up. It grows
//! as ntimed does; today: a keyed and NTS server, queried plainly, with keys, and with
//! NTS after a key exchange over TLS 1.3 with a throwaway CA; then the sync engine
//! pulling a simulated clock in from three NTS sources, and `ntimed ctl` asking it over
//! its control socket; the clock process's policy; two sites peering under a key,
//! one following the other while its upstream is down; and a stratum-1 server fed by a
//! reference clock on a SOCK socket.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::auth::nts::cookie::{CookieKeys, Rotation};
use crate::auth::nts::ke::NtpEndpoint;
use crate::auth::{KeyFileFormat, KeyStore, SymmetricKey};
use crate::clock::{Clock, SoftwareClock};
use crate::daemon::client::{ClientRole, SourceKind, SourceSpec};
use crate::daemon::nts::test_pki::ThrowawayPki;
use crate::daemon::nts::{self, KeLimits, RunningKeServer};
use crate::daemon::serve::RunningServer;
use crate::daemon::{query, serve};
use crate::proto::server::{Server, ServerOptions, SyncState};
use crate::proto::source::SourceOptions;
use crate::sync::SyncConfig;

/// The example keys shipped in keys/ (public, fake secrets).
const EXAMPLE_KEYS: &str = include_str!("../keys/example.keys");

pub async fn run() -> Result<ExitCode, String> {
    let keys = KeyStore::parse("keys/example.keys", EXAMPLE_KEYS, KeyFileFormat::Auto)
        .map_err(|e| e.to_string())?;
    println!("ntimed demo: everything stays on loopback; this machine's clock is not touched.\n");

    let mut cookie_keys = CookieKeys::random(Rotation::default(), vec![]);
    let unix_now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    cookie_keys.update(unix_now, &mut rand::rng());
    let cookie_keys = Arc::new(RwLock::new(cookie_keys));

    let servers = Servers {
        keys: keys.clone(),
        cookie_keys,
        pki: ThrowawayPki::new(&["localhost", "127.0.0.1"])?,
        clock: Arc::new(SoftwareClock::observe()),
    };
    let (running, ke) = servers.start_pair().await?;
    let addr = running.local_addr;
    println!("1. Servers on loopback: local stratum-1 reference");
    println!(
        "   NTP on {addr}, {} keys from keys/example.keys",
        keys.len()
    );
    println!(
        "   NTS-KE on localhost:{} (TLS 1.3, a CA made a moment ago)",
        ke.local_addr.port()
    );

    let key = |id| keys.get(id).cloned().map(query::QueryAuth::Key);
    let tls = servers.pki.client_config()?;
    let nts_auth = || query::QueryAuth::Nts {
        ke_port: ke.local_addr.port(),
        tls: tls.clone(),
    };
    let ntp = ("127.0.0.1", addr.port());
    let nts_host = ("localhost", ke.local_addr.port());
    let steps = [
        (
            "2. Plain NTP (anyone on the path could forge this)",
            ntp,
            Some(query::QueryAuth::None),
            1,
            true,
        ),
        (
            "3. Signed with key 1 (SHA256, RFC 5905 MAC)",
            ntp,
            key(1),
            1,
            true,
        ),
        (
            "4. Signed with key 2 (AES128-CMAC, RFC 8573)",
            ntp,
            key(2),
            1,
            true,
        ),
        (
            "5. Right key id, wrong secret: the server must stay silent",
            ntp,
            Some(query::QueryAuth::Key(forged_key().ok_or("no forged key")?)),
            1,
            false,
        ),
        (
            "6. NTS: key exchange over TLS, then 3 authenticated exchanges, each\n   spending one cookie and getting a fresh one back",
            nts_host,
            Some(nts_auth()),
            3,
            true,
        ),
    ];
    let mut failures = 0;
    for (title, (host, port), auth, count, should_answer) in steps {
        println!("\n{title}");
        let options = query::QueryOptions {
            auth: auth.ok_or("example key missing")?,
            count,
            timeout: Duration::from_millis(if should_answer { 2000 } else { 500 }),
            interval: Duration::from_millis(100),
        };
        for result in query::query(host, port, options).await {
            match (result, should_answer) {
                (Ok(report), true) => println!("   {report}"),
                (Err(_), false) => println!("   no reply accepted, as it should be"),
                (Ok(_), false) => {
                    failures += 1;
                    println!("   UNEXPECTED: a reply was accepted");
                }
                (Err(message), true) => {
                    failures += 1;
                    println!("   UNEXPECTED: {message}");
                }
            }
        }
    }

    failures += discipline_demo(&servers).await?;
    failures += privilege_boundary_demo()?;
    failures += peering_demo(&keys).await?;
    failures += master_demo().await?;

    let stats = &running.server.stats;
    println!(
        "\nServer counters: {} plain, {} keyed, {} NTS replies; {} rejected for failed authentication, without a reply.",
        stats.plain.load(Ordering::Relaxed),
        stats.keyed.load(Ordering::Relaxed),
        stats.nts.load(Ordering::Relaxed),
        stats.auth_failed.load(Ordering::Relaxed),
    );
    Ok(if failures == 0 {
        println!(
            "\nDemo complete. Next: `ntimed query --nts HOST` against an NTS server, or `ntimed run --config FILE`."
        );
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Step 7: a simulated clock, 0.3 s off and 80 ppm fast, pulled in by three NTS
/// sources (three servers, each with its own NTS-KE, sharing cookie keys). Returns the
/// number of failures.
async fn discipline_demo(servers: &Servers) -> Result<u32, String> {
    const OFFSET: f64 = 0.3;
    const PPM: f64 = 80.0;
    const SECONDS: u64 = 16;
    println!(
        "\n7. The sync engine: a simulated clock starts {OFFSET} s off and {PPM} ppm fast; three NTS\n   sources (polling every 2 s, for the demo) pull it in. The system clock is the truth."
    );
    let mut running = Vec::new();
    let mut specs = Vec::new();
    for _ in 0..3 {
        let (ntp, ke) = servers.start_pair().await?;
        specs.push(SourceSpec {
            host: "127.0.0.1".into(),
            port: ntp.local_addr.port(),
            kind: SourceKind::Nts {
                ke_host: "localhost".into(),
                ke_port: ke.local_addr.port(),
                tls: servers.pki.client_config()?,
            },
            options: SourceOptions {
                min_poll: 1,
                max_poll: 1,
                iburst: true,
                xleave: false,
            },
        });
        running.push((ntp, ke));
    }
    let simulated = Arc::new(SoftwareClock::simulated(OFFSET, PPM));
    let role = ClientRole {
        specs,
        peers: Vec::new(),
        config: SyncConfig {
            min_poll: 1,
            max_poll: 1,
            ..SyncConfig::default()
        },
        drift_file: None,
        state: Arc::new(RwLock::new(SyncState::unsynchronized(-20))),
        leap_file: Default::default(),
        own_addresses: Vec::new(),
        refclocks: Vec::new(),
        refclock_sockets: Vec::new(),
    };
    let state = role.state.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel();
    // The control socket `ntimed ctl` asks, answered by this client role's driver.
    let (snapshots, snapshot_requests) = tokio::sync::mpsc::channel(4);
    let task = tokio::spawn(role.run(
        simulated.clone(),
        None,
        -20,
        None,
        crate::daemon::client::ControlInputs {
            snapshots: Some(snapshot_requests),
            new_keys: None,
        },
        stopped,
    ));
    println!("   time   clock − truth   frequency correction   served as");
    for second in 0..=SECONDS {
        let s = *state.read().unwrap_or_else(|p| p.into_inner());
        let served = if s.stratum >= 16 {
            "unsynchronized".to_string()
        } else {
            format!("stratum {}", s.stratum)
        };
        println!(
            "   {second:>3} s  {:>+12.6} s   {:>+9.3} ppm          {served}",
            simulated.offset_from_system(),
            simulated.status().frequency_ppm,
        );
        if second < SECONDS {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    let error = simulated.offset_from_system().abs();
    let synced = state.read().map(|s| s.stratum == 2).unwrap_or(false);
    let mut failures = if error < 0.002 && synced {
        println!(
            "   pulled in: {:.0} µs from the truth, serving stratum 2",
            error * 1e6
        );
        0
    } else {
        println!("   UNEXPECTED: still {error:.6} s off (synchronized: {synced})");
        1
    };
    let servers = running.iter().map(|(ntp, _)| ntp.server.clone()).collect();
    failures += ctl_demo(snapshots, servers).await?;
    let _ = stop.send(());
    let _ = task.await;
    Ok(failures)
}

/// Step 8: `ntimed ctl status` and `ntimed ctl sources` asked of step 7's client role,
/// still running, over a control socket in a private temporary directory: the code
/// `ntimed ctl` runs, on both ends. Returns the number of failures.
async fn ctl_demo(
    snapshots: tokio::sync::mpsc::Sender<crate::daemon::control::SnapshotRequest>,
    servers: Vec<Arc<Server>>,
) -> Result<u32, String> {
    use crate::daemon::control::{self, Query};
    use std::os::unix::fs::DirBuilderExt;
    let dir = std::env::temp_dir().join(format!("ntimed-demo-{}", std::process::id()));
    // Owner-only: nobody else on the machine can connect while it exists.
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let socket = dir.join("ntimed.sock");
    let result = async {
        let listener = std::os::unix::net::UnixListener::bind(&socket)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|e| format!("{}: {e}", socket.display()))?;
        let control = control::Control {
            snapshots: Some(snapshots),
            local_stratum: None,
            servers,
            ke_servers: Vec::new(),
            cookie_keys: None,
            reloads: None,
        };
        let serving =
            control::spawn(listener, Arc::new(control)).map_err(|e| e.to_string())?;
        println!(
            "\n8. ntimed ctl: step 7's client role, still running, answers on a control socket (a\n   private one here; a packaged ntimed uses {}); ntimed ctl asks it:",
            control::DEFAULT_SOCKET
        );
        let mut failures = 0;
        for query in [Query::Status, Query::Sources] {
            let path = socket.clone();
            let answer =
                tokio::task::spawn_blocking(move || crate::ops::ctl::answer(&path, query, false))
                    .await
                    .map_err(|e| e.to_string())?;
            println!("   $ ntimed ctl {}", query.word());
            match answer {
                Ok(text) => text.lines().for_each(|line| println!("   {line}")),
                Err(message) => {
                    failures += 1;
                    println!("   UNEXPECTED: {message}");
                }
            }
        }
        serving.abort();
        Ok::<u32, String>(failures)
    }
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Step 9: the clock process's policy, which holds whatever the engine asks. Here both
/// ends run in this process (the demo needs no root); `ntimed run` started as root puts
/// the clock process in a sandboxed process of its own. Returns the number of failures.
fn privilege_boundary_demo() -> Result<u32, String> {
    use crate::clock::{ClockCommand, SoftwareClock};
    use crate::privsep::clock_process::{self, HeldClock};
    use crate::privsep::policy::{Policy, PolicyConfig};
    use crate::privsep::remote::{LocalView, RemoteClock};
    use crate::privsep::{ipc, policy};
    use std::os::unix::net::UnixDatagram;

    println!(
        "\n9. The privilege boundary: the engine (which parses everything from the network) can\n   only ask the clock process, which applies what its policy allows. As if compromised,\n   the engine asks for:"
    );
    let pair = || -> Result<(UnixDatagram, UnixDatagram), String> {
        let (a, b) = crate::sys::seqpacket_pair().map_err(|e| e.to_string())?;
        Ok((UnixDatagram::from(a), UnixDatagram::from(b)))
    };
    let serve_in_thread = |link: UnixDatagram| {
        std::thread::spawn(move || {
            let held = HeldClock::Software(SoftwareClock::simulated(0.3, 0.0));
            let config = PolicyConfig::default();
            let result =
                clock_process::serve(&link, &held, &mut Policy::new(config, 0.0), None, None);
            (result.map_err(|e| e.to_string()), held)
        })
    };
    let (engine_end, clock_end) = pair()?;
    let process = serve_in_thread(clock_end);
    let engine = RemoteClock::new(
        engine_end,
        LocalView::Mirror(SoftwareClock::simulated(0.3, 0.0)),
    )
    .map_err(|e| e.to_string())?;
    let asks = [
        (
            "the start-up step",
            ClockCommand::Step { offset: -0.3 },
            true,
        ),
        (
            "a 1 ms slew",
            ClockCommand::Slew {
                offset: 0.001,
                duration: 16.0,
            },
            true,
        ),
        ("a 1 h step", ClockCommand::Step { offset: 3600.0 }, false),
        (
            "a 2 s slew",
            ClockCommand::Slew {
                offset: 2.0,
                duration: 1.0,
            },
            false,
        ),
        ("900 ppm", ClockCommand::SetFrequency { ppm: 900.0 }, false),
    ];
    let mut failures = 0;
    for (what, command, allowed) in asks {
        let outcome = engine.apply(command);
        println!(
            "   {what:<18} {}",
            match &outcome {
                Ok(()) => "applied".to_string(),
                Err(e) => e.to_string(),
            }
        );
        if outcome.is_ok() != allowed {
            println!("   UNEXPECTED");
            failures += 1;
        }
    }
    drop(engine);
    let _ = process.join();
    // A frame no engine of ours would send: the clock process stops, the clock as it was.
    let (engine_end, clock_end) = pair()?;
    let process = serve_in_thread(clock_end);
    let mut frame = ipc::encode_command(1, &ClockCommand::Step { offset: 0.0 });
    frame[8..16].copy_from_slice(&f64::NAN.to_be_bytes());
    engine_end.send(&frame).map_err(|e| e.to_string())?;
    let (result, held) = process.join().map_err(|_| "the clock process panicked")?;
    let untouched = match held {
        HeldClock::Software(clock) => clock.status().steps == 0,
        _ => false,
    };
    match result {
        Err(e) if untouched => {
            println!("   a NaN step frame   {e}: the clock process exits, the clock untouched")
        }
        _ => {
            println!("   UNEXPECTED: a malformed frame was accepted");
            failures += 1;
        }
    }
    println!(
        "   (slews are capped at {} s per command, at most {:.0} ppm faster)",
        policy::MAX_SLEW,
        policy::MAX_SLEW_RATE * 1e6
    );
    Ok(failures)
}

/// One site of the peering demo: its NTP server (peer packets use its socket too), the
/// engine's task and what it serves.
struct Site {
    server: RunningServer,
    state: Arc<RwLock<SyncState>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), String>>,
}

impl Site {
    /// A site on `listen` with a simulated clock `offset` s off, following `upstream`
    /// (keyed) and peering with `peer` under `key`.
    async fn start(
        listen: SocketAddr,
        upstream: SocketAddr,
        peer: SocketAddr,
        key: &SymmetricKey,
        offset: f64,
    ) -> Result<Site, String> {
        use crate::daemon::peer::{PeerLink, PeerRoutes, PeerSpec};
        use crate::proto::peer::{PeerAuth, PeerOptions};
        let clock: Arc<dyn Clock> = Arc::new(SoftwareClock::simulated(offset, 20.0));
        let state = Arc::new(RwLock::new(SyncState::unsynchronized(-20)));
        let (routes, inbound) = PeerRoutes::new(1);
        let socket = std::net::UdpSocket::bind(listen)
            .map_err(|e| format!("cannot bind {listen} (a loopback address): {e}"))?;
        let server = serve::start_on(
            vec![socket],
            Server::new(KeyStore::default(), ServerOptions::default()).with_peer_keys([key.id()]),
            serve::Reference::Engine(state.clone()),
            serve::Admission::default(),
            clock.clone(),
            Some(routes.clone()),
        )
        .map_err(|e| format!("cannot serve on {listen}: {e}"))?;
        let fast = |min_poll, max_poll| SourceOptions {
            min_poll,
            max_poll,
            iburst: true,
            xleave: false,
        };
        let role = ClientRole {
            specs: vec![SourceSpec {
                host: upstream.ip().to_string(),
                port: upstream.port(),
                kind: SourceKind::Key(key.clone()),
                options: fast(0, 0),
            }],
            peers: vec![PeerSpec {
                host: peer.ip().to_string(),
                port: peer.port(),
                auth: PeerAuth::Key(key.clone()),
                options: PeerOptions {
                    min_poll: 0,
                    max_poll: 0,
                    ..PeerOptions::default()
                },
            }],
            config: SyncConfig {
                min_poll: 0,
                max_poll: 0,
                ..SyncConfig::default()
            },
            drift_file: None,
            state: state.clone(),
            leap_file: Default::default(),
            own_addresses: Vec::new(),
            refclocks: Vec::new(),
            refclock_sockets: Vec::new(),
        };
        let link = PeerLink {
            routes,
            inbound,
            sockets: server.socket.clone().into_iter().collect(),
        };
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let task =
            tokio::spawn(role.run(clock, None, -20, Some(link), Default::default(), stopped));
        Ok(Site {
            server,
            state,
            stop: Some(stop),
            task,
        })
    }

    /// "stratum N from A.B.C.D", or "unsynchronized".
    fn served(&self) -> String {
        let s = *self.state.read().unwrap_or_else(|p| p.into_inner());
        if s.stratum >= 16 {
            "unsynchronized".into()
        } else {
            let [a, b, c, d] = s.reference_id.0;
            format!("stratum {} from {a}.{b}.{c}.{d}", s.stratum)
        }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
        drop(self.server);
    }
}

/// Step 10: sites A (127.0.0.2) and B (127.0.0.3) each follow their own keyed upstream
/// and peer under key 2 (AES128-CMAC). A's upstream goes away: A follows B (whose log
/// would say A is "synchronized to us"), and returns when the upstream is back.
/// Distinct loopback addresses keep reference ids meaningful. Returns the number of
/// failures.
async fn peering_demo(keys: &KeyStore) -> Result<u32, String> {
    const WAIT: Duration = Duration::from_secs(30);
    println!(
        "\n10. Keyed peering: sites A (127.0.0.2) and B (127.0.0.3), simulated clocks, each with its\n   own upstream, peer under key 2 (AES128-CMAC), polling every second for the demo."
    );
    let key = keys.get(2).cloned().ok_or("example key 2 missing")?;
    let upstream = |listen: SocketAddr| async move {
        let server = Server::new(keys.clone(), ServerOptions::default());
        let local = serve::Reference::Local { stratum: 1 };
        let observe: Arc<dyn Clock> = Arc::new(SoftwareClock::observe());
        serve::start(listen, server, local, serve::Admission::default(), observe)
            .await
            .map_err(|e| format!("cannot start an upstream on {listen}: {e}"))
    };
    let free = |ip: [u8; 4]| {
        std::net::UdpSocket::bind(SocketAddr::from((ip, 0)))
            .and_then(|s| s.local_addr())
            .map_err(|e| format!("no free port on {ip:?}: {e}"))
    };
    let (a_addr, b_addr) = (free([127, 0, 0, 2])?, free([127, 0, 0, 3])?);
    let upstream_a = upstream(SocketAddr::from(([127, 0, 0, 4], 0))).await?;
    let upstream_b = upstream(SocketAddr::from(([127, 0, 0, 5], 0))).await?;
    let (ua, ub) = (upstream_a.local_addr, upstream_b.local_addr);
    let a = Site::start(a_addr, ua, b_addr, &key, 0.2).await?;
    let b = Site::start(b_addr, ub, a_addr, &key, -0.1).await?;
    let mut failures = 0;
    let mut expect = async |what: &str, wanted: &str| {
        let started = tokio::time::Instant::now();
        while a.served() != wanted && started.elapsed() < WAIT {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let t = started.elapsed().as_secs();
        if a.served() == wanted {
            println!(
                "   {what:<34} A serves {wanted} (after {t} s); B serves {}",
                b.served()
            );
        } else {
            failures += 1;
            println!(
                "   UNEXPECTED: {what}: A serves {}, not {wanted}",
                a.served()
            );
        }
    };
    expect(
        "both follow their own upstreams:",
        "stratum 2 from 127.0.0.4",
    )
    .await;
    drop(upstream_a);
    expect("A's upstream stops answering:", "stratum 3 from 127.0.0.3").await;
    let upstream_a = upstream(ua).await?;
    expect("A's upstream is back:", "stratum 2 from 127.0.0.4").await;
    drop(upstream_a);
    a.stop().await;
    b.stop().await;
    Ok(failures)
}

/// Step 11: the master role. A reference clock on a SOCK socket, fed as gpsd feeds
/// chronyd (a sample a second saying the system clock is right), steers a simulated
/// clock 0.25 s off; the server it runs then answers at stratum 1 with refid GPS.
async fn master_demo() -> Result<u32, String> {
    use crate::daemon::refclock::{RefclockSpec, bind_sock};
    use crate::refclock::{DriverKind, RefclockOptions, sock};
    const WAIT: Duration = Duration::from_secs(30);
    println!(
        "\n11. The master role: a GPS on a SOCK socket (chrony's refclock protocol, as gpsd\n    speaks it) steers a simulated clock 0.25 s off; the server then answers at stratum 1."
    );
    let path = std::env::temp_dir().join(format!("ntimed-demo-{}.sock", std::process::id()));
    let socket = bind_sock(&path)?;
    let clock: Arc<dyn Clock> = Arc::new(SoftwareClock::simulated(0.25, 0.0));
    let state = Arc::new(RwLock::new(SyncState::unsynchronized(-20)));
    let listen = std::net::UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .map_err(|e| format!("cannot bind a loopback port: {e}"))?;
    let server = serve::start_on(
        vec![listen],
        Server::new(KeyStore::default(), ServerOptions::default()),
        serve::Reference::Engine(state.clone()),
        serve::Admission::default(),
        clock.clone(),
        None,
    )
    .map_err(|e| format!("cannot serve: {e}"))?;
    let role = ClientRole {
        specs: Vec::new(),
        peers: Vec::new(),
        config: SyncConfig {
            min_poll: 0,
            max_poll: 0,
            ..SyncConfig::default()
        },
        drift_file: None,
        state: state.clone(),
        leap_file: Default::default(),
        own_addresses: Vec::new(),
        refclocks: vec![RefclockSpec {
            name: format!("refclock GPS sock:{}", path.display()),
            kind: DriverKind::Sock { path: path.clone() },
            options: RefclockOptions {
                refid: *b"GPS\0",
                poll: 0,
                ..RefclockOptions::default()
            },
            segment: None,
            device: None,
            phc: Default::default(),
            pps: Default::default(),
            lock: None,
        }],
        refclock_sockets: vec![socket],
    };
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(role.run(clock, None, -20, None, Default::default(), stopped));
    let gps = std::os::unix::net::UnixDatagram::unbound()
        .map_err(|e| format!("cannot make the GPS's socket: {e}"))?;
    let started = tokio::time::Instant::now();
    let synchronized = || state.read().is_ok_and(|s| s.stratum == 1);
    while !synchronized() && started.elapsed() < WAIT {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let receive = (now.as_secs() as i64, i64::from(now.subsec_micros()));
        let _ = gps.send_to(&sock::encode(receive, 0.0, 0, 0), &path);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let port = server.local_addr.port();
    let options = query::QueryOptions {
        auth: query::QueryAuth::None,
        count: 1,
        timeout: Duration::from_secs(2),
        interval: Duration::from_millis(100),
    };
    let mut failures = 0;
    for result in query::query("127.0.0.1", port, options).await {
        match result {
            Ok(report) if report.stratum == 1 && report.refid == "GPS" => {
                println!("   after {} s: {report}", started.elapsed().as_secs());
            }
            Ok(report) => {
                failures += 1;
                println!("   UNEXPECTED: {report}");
            }
            Err(message) => {
                failures += 1;
                println!("   UNEXPECTED: {message}");
            }
        }
    }
    let _ = stop.send(());
    let _ = task.await;
    drop(server);
    let _ = std::fs::remove_file(&path);
    Ok(failures)
}

/// What the demo's servers share: keys, cookie keys, a CA and the clock they serve.
struct Servers {
    keys: KeyStore,
    cookie_keys: Arc<RwLock<CookieKeys>>,
    pki: ThrowawayPki,
    clock: Arc<dyn Clock>,
}

impl Servers {
    /// A keyed and NTS stratum-1 NTP server on a loopback port, and an NTS-KE server
    /// that sends its clients there.
    async fn start_pair(&self) -> Result<(RunningServer, RunningKeServer), String> {
        let listen: SocketAddr = ([127, 0, 0, 1], 0).into();
        let server = Server::new(self.keys.clone(), ServerOptions::default())
            .with_nts(self.cookie_keys.clone());
        let stratum_1 = serve::Reference::Local { stratum: 1 };
        let ntp = serve::start(
            listen,
            server,
            stratum_1,
            serve::Admission::default(),
            self.clock.clone(),
        )
        .await
        .map_err(|e| format!("cannot start a demo NTP server: {e}"))?;
        let endpoint = NtpEndpoint {
            server: Some("127.0.0.1".into()),
            port: Some(ntp.local_addr.port()),
        };
        let ke = nts::start_ke_server(
            listen,
            self.pki.server_config()?,
            self.cookie_keys.clone(),
            endpoint,
            KeLimits::default(),
        )
        .await
        .map_err(|e| format!("cannot start a demo NTS-KE server: {e}"))?;
        Ok((ntp, ke))
    }
}

/// Key 1's id and type with a secret the server does not know.
fn forged_key() -> Option<SymmetricKey> {
    SymmetricKey::new(1, crate::auth::KeyType::Sha256, vec![0x5a; 32]).ok()
}

//! The composition root of `ntimed run`: binds the listeners (or checks inherited ones),
//! loads keys, certificates and the client role from the config, then starts the NTP
//! servers, the NTS-KE servers, key rotation and the client, and stops on a signal.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use arc_swap::ArcSwap;

use super::client::ControlInputs;
use super::control;
use super::nts::{self, KeLimits};
use super::peer::{PeerLink, PeerRoutes};
use super::reload;
use super::serve::{Admission, Reference, RunningServer, start_on};
use crate::auth::nts::cookie::Rotation;
use crate::auth::nts::ke::NtpEndpoint;
use crate::clock::system::SystemClock;
use crate::clock::{Clock, SoftwareClock};
use crate::config::{ClockMode, DenyAction, Loaded, UnknownPeers};
use crate::proto::ratelimit::RateLimit;
use crate::proto::server::{Server, ServerOptions, SharedCookieKeys};
use crate::util::{Problems, Severity};

/// Sockets bound before anything runs, by the supervisor when privileges are
/// separated: one per `[[server]]` and one per `[[nts-ke-server]]`, in config order,
/// the control socket, the `[metrics]` listener, and one Unix datagram socket per SOCK
/// `[[refclock]]` (in config order), made at its path outside any chroot.
pub struct Listeners {
    /// Per `[[server]]`, its sockets: one per worker thread, sharing the address.
    pub udp: Vec<Vec<std::net::UdpSocket>>,
    pub tcp: Vec<std::net::TcpListener>,
    pub control: Option<std::os::unix::net::UnixListener>,
    pub metrics: Option<std::net::TcpListener>,
    pub refclocks: Vec<std::os::unix::net::UnixDatagram>,
}

/// The socket paths of the SOCK refclocks, in config order, as the config means them.
fn refclock_socket_paths(loaded: &Loaded) -> Vec<std::path::PathBuf> {
    loaded
        .config
        .refclocks
        .iter()
        .map(|r| r.get_ref())
        .filter(|r| r.driver == crate::config::RefclockDriver::Sock)
        .filter_map(|r| r.path.as_ref())
        .map(|path| loaded.path(path))
        .collect()
}

impl Listeners {
    /// Binds every listen address in the config (IPv6 ones IPv6 only, so `[::]` and
    /// `0.0.0.0` can share a port) and the control socket (by default only if
    /// `control_default`: started as root); the first that fails stops the start.
    pub fn bind(loaded: &Loaded, control_default: bool) -> Result<Self, String> {
        let config = &loaded.config;
        let bind_err =
            |listen: &SocketAddr, e: std::io::Error| format!("cannot listen on {listen}: {e}");
        let udp = config
            .servers
            .iter()
            .map(|s| {
                let listen = s.listen.get_ref();
                let workers = s.workers().unwrap_or_else(super::serve::default_workers);
                super::net::bind_udp_group(*listen, workers).map_err(|e| bind_err(listen, e))
            })
            .collect::<Result<_, _>>()?;
        let tcp = config
            .nts_ke_servers
            .iter()
            .map(|s| s.listen.get_ref())
            .map(|listen| super::net::bind_tcp(*listen).map_err(|e| bind_err(listen, e)))
            .collect::<Result<_, _>>()?;
        let control = super::control::bind(loaded, control_default)?;
        let metrics = config
            .metrics
            .as_ref()
            .map(|m| m.listen.get_ref())
            .map(|listen| super::net::bind_tcp(*listen).map_err(|e| bind_err(listen, e)))
            .transpose()?;
        let refclocks = refclock_socket_paths(loaded)
            .iter()
            .map(|path| super::refclock::bind_sock(path))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            udp,
            tcp,
            control,
            metrics,
            refclocks,
        })
    }

    /// Checks that inherited sockets are the ones `loaded` asks for, in its order.
    pub fn check(&self, loaded: &Loaded) -> Result<(), String> {
        let wanted: Vec<std::path::PathBuf> = refclock_socket_paths(loaded);
        let got: Vec<Option<std::path::PathBuf>> = self
            .refclocks
            .iter()
            .map(|s| {
                s.local_addr()
                    .ok()
                    .and_then(|a| a.as_pathname().map(Path::to_path_buf))
            })
            .collect();
        let same = wanted.len() == got.len()
            && wanted
                .iter()
                .zip(&got)
                .all(|(w, g)| g.as_deref() == Some(w.as_path()));
        if !same {
            return Err(format!(
                "the inherited refclock sockets {got:?} are not the configured {wanted:?}"
            ));
        }
        self.check_network(&loaded.config)
    }

    /// The network listeners: `[[server]]`, `[[nts-ke-server]]` and `[metrics]`.
    fn check_network(&self, config: &crate::config::Config) -> Result<(), String> {
        let wanted_udp: Vec<SocketAddr> =
            config.servers.iter().map(|s| *s.listen.get_ref()).collect();
        let wanted_tcp: Vec<SocketAddr> = config
            .nts_ke_servers
            .iter()
            .map(|s| *s.listen.get_ref())
            .collect();
        let udp: Vec<_> = self
            .udp
            .iter()
            .filter_map(|group| group.first())
            .map(|s| s.local_addr())
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        let tcp: Vec<_> = self
            .tcp
            .iter()
            .map(|s| s.local_addr())
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        let matches = |wanted: &[SocketAddr], got: &[SocketAddr]| {
            wanted.len() == got.len()
                && wanted
                    .iter()
                    .zip(got)
                    .all(|(w, g)| w.ip() == g.ip() && (w.port() == 0 || w.port() == g.port()))
        };
        let wanted_metrics: Vec<SocketAddr> =
            config.metrics.iter().map(|m| *m.listen.get_ref()).collect();
        let metrics: Vec<_> = self
            .metrics
            .iter()
            .map(|s| s.local_addr())
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        if !matches(&wanted_metrics, &metrics) {
            return Err(format!(
                "the inherited metrics listener {metrics:?} is not the configured {wanted_metrics:?}"
            ));
        }
        if matches(&wanted_udp, &udp) && matches(&wanted_tcp, &tcp) {
            Ok(())
        } else {
            Err(format!(
                "inherited sockets {udp:?} / {tcp:?} are not the configured {wanted_udp:?} / {wanted_tcp:?}"
            ))
        }
    }
}

/// The clock `ntimed run` uses in one process: the system clock, read-only, without
/// `[clock]`; otherwise the configured one.
pub fn local_clock(section: Option<&crate::config::ClockSection>) -> Arc<dyn Clock> {
    match section {
        // Nothing steers it: read the system clock directly, without a lock per request.
        None => Arc::new(SystemClock::new()),
        Some(section) => match section.mode {
            ClockMode::Observe => Arc::new(SoftwareClock::observe()),
            ClockMode::Simulated => Arc::new(SoftwareClock::simulated(
                section.simulated_offset,
                section.simulated_frequency,
            )),
            ClockMode::System => Arc::new(SystemClock::new()),
        },
    }
}

/// Why `loaded` (read from `path`) cannot run in one unprivileged process, if it
/// cannot: the system clock needs the clock process only root can start.
pub fn unprivileged_refusal(path: &std::path::Path, loaded: &Loaded) -> Option<String> {
    let mode = loaded.config.clock.as_ref().map(|c| c.get_ref().mode);
    (mode == Some(ClockMode::System)).then(|| {
        format!(
            "{}: [clock] mode = \"system\" needs ntimed started as root (it then runs the \
             clock in a separate privileged process); without root, use \"observe\" or \
             \"simulated\"",
            path.display()
        )
    })
}

/// Everything `ntimed run` reads before it serves (TLS, cookie keys, the client role),
/// so that it can all happen before privileges are dropped.
pub struct Prepared {
    loaded: Loaded,
    /// The cookie master keys, and the file they are saved to when they rotate.
    pub cookie_keys: Option<(
        crate::proto::server::SharedCookieKeys,
        Option<std::path::PathBuf>,
    )>,
    ke_configs: Vec<(Arc<rustls::ServerConfig>, NtpEndpoint)>,
    leap_file: super::leap::SharedLeapFile,
    pub client: Option<super::client::ClientRole>,
}

/// What preparing is for: `ntimed run`, which may create `[nts] key-dir` and save new
/// cookie keys there, or `ntimed check`, which only reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Run,
    Check,
}

/// Loads and checks everything `[[server]]`, `[[nts-ke-server]]`, `[nts]` and
/// `[[source]]` need, stopping at the first error; warnings are logged.
///
/// SHM refclocks' segments are attached here, and PHC and PPS devices opened, so that
/// the privsep engine, which prepares as root, holds them once it drops to its own user.
pub fn prepare(loaded: Loaded) -> Result<Prepared, String> {
    let mut problems = Problems::default();
    let prepared = prepare_all(loaded, Purpose::Run, SystemTime::now(), &mut problems);
    problems.into_result(|warning| tracing::warn!("{warning}"))?;
    let mut prepared = prepared.ok_or_else(|| "cannot prepare the config".to_string())?;
    if let Some(client) = &mut prepared.client {
        // The simulator's segments are its own, not the kernel's: no owner to check.
        let simulated = crate::util::under_clknetsim();
        super::refclock::attach_shm(&mut client.refclocks, !simulated)?;
        super::refclock::open_devices(&mut client.refclocks)?;
    }
    Ok(prepared)
}

/// [`prepare`], recording every problem (and warning) rather than stopping at the
/// first: the client role, the cookie keys and each NTS-KE server's certificate are
/// checked whatever the others' fate. `None` if it recorded an error.
pub fn prepare_all(
    loaded: Loaded,
    purpose: Purpose,
    now: SystemTime,
    problems: &mut Problems,
) -> Option<Prepared> {
    let config = &loaded.config;
    let errors_before = problems.count(Severity::Error);
    let client = problems.take(super::client::prepare(&loaded));
    let cookie_keys = config.nts.as_ref().and_then(|section| {
        let defaults = Rotation::default();
        let period = section
            .rotation
            .as_ref()
            .map_or(defaults.period, |r| *r.get_ref());
        let rotation = Rotation {
            period,
            // By default a week, and never less than one rotation period.
            retention: section
                .retention
                .as_ref()
                .map_or(defaults.retention, |r| *r.get_ref())
                .max(period),
        };
        let fleet = section.fleet_secret.as_ref().map(|p| loaded.path(p));
        let dir = section.key_dir.as_ref().map(|p| loaded.path(p));
        let write = purpose == Purpose::Run;
        let loaded = nts::load_cookie_keys(fleet.as_deref(), dir.as_deref(), rotation, write);
        let (keys, persist_to) = problems.take(loaded)?;
        Some((Arc::new(RwLock::new(keys)), persist_to))
    });
    if !config.nts_ke_servers.is_empty() && config.nts.is_none() {
        problems.error("[[nts-ke-server]] needs [nts]");
    }
    let mut ke_configs = Vec::new();
    for section in &config.nts_ke_servers {
        let tls = nts::server_config(
            &loaded.path(&section.certificate_chain),
            &loaded.path(&section.private_key),
            section.name.as_deref(),
            now,
            problems,
        );
        let Some(tls) = tls else {
            continue;
        };
        // Clients go to the configured NTP port, else to the only server's if not 123.
        let only_port = match &config.servers[..] {
            [only] => Some(only.listen.get_ref().port()).filter(|&p| p != 123),
            _ => None,
        };
        let endpoint = NtpEndpoint {
            server: section.ntp_server.as_ref().map(|s| s.get_ref().clone()),
            port: section
                .ntp_port
                .as_ref()
                .map(|p| *p.get_ref())
                .or(only_port),
        };
        ke_configs.push((tls, endpoint));
    }
    let now_ntp = crate::wire::NtpTimestamp::from_system_time(now);
    let leap_file = config
        .leap_file()
        .and_then(|file| super::leap::load(&loaded.path(file), now_ntp, problems));
    if let Some(window) = config.smear_window() {
        problems.warning(format!(
            "leap seconds are smeared over {window} s in served time, up to 0.5 s from UTC: \
             never on a public server, nor where clients mix smearing and other servers"
        ));
    }
    if problems.count(Severity::Error) > errors_before {
        return None;
    }
    Some(Prepared {
        loaded,
        cookie_keys,
        ke_configs,
        leap_file: Arc::new(arc_swap::ArcSwapOption::from_pointee(leap_file)),
        client: client?,
    })
}

/// `ntimed run` in one process: serves every `[[server]]` and `[[nts-ke-server]]` until
/// SIGINT or SIGTERM. Keys, certificates and addresses are all checked before anything
/// serves.
pub async fn run(loaded: Loaded) -> Result<(), String> {
    let clock = local_clock(loaded.config.clock.as_ref().map(|c| c.get_ref()));
    let listeners = Listeners::bind(&loaded, false)?;
    let prepared = prepare(loaded)?;
    serve(prepared, listeners, clock, reload::Origin::Files, || {}).await
}

/// Serves on `listeners` with what `prepare` loaded until SIGINT or SIGTERM, calling
/// `ready` once everything is up; reloads take new files from `reload_from`.
pub async fn serve(
    prepared: Prepared,
    listeners: Listeners,
    clock: Arc<dyn Clock>,
    reload_from: reload::Origin,
    ready: impl FnOnce(),
) -> Result<(), String> {
    let Prepared {
        loaded,
        cookie_keys,
        ke_configs,
        leap_file,
        client,
    } = prepared;
    let config = &loaded.config;
    let local_stratum = config.local.as_ref().map(|l| *l.stratum.get_ref());
    let reference = match (&client, local_stratum) {
        (Some(client), _) => Reference::Engine(client.state.clone()),
        (None, Some(stratum)) => Reference::Local { stratum },
        (None, None) => Reference::Unsynchronized,
    };
    let (routes, inbound) = match &client {
        Some(client) if !client.peers.is_empty() => {
            let (routes, inbound) = PeerRoutes::new(client.peers.len());
            (Some(routes), Some(inbound))
        }
        _ => (None, None),
    };
    let running = start_servers(
        &loaded,
        listeners.udp,
        cookie_keys.as_ref().map(|(keys, _)| keys),
        &reference,
        &clock,
        &routes,
        &leap_file,
    )?;
    let ke_tls: Vec<nts::SharedTls> = ke_configs
        .iter()
        .map(|(tls, _)| Arc::new(ArcSwap::new(tls.clone())))
        .collect();
    let ke_running = start_ke_servers(
        ke_configs,
        &ke_tls,
        listeners.tcp,
        cookie_keys.as_ref().map(|(keys, _)| keys),
    )?;
    let (new_keys_tx, new_keys) = match &client {
        Some(_) => {
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            (Some(tx), Some(rx))
        }
        None => (None, None),
    };
    let (reload_requests, reload_rx) = tokio::sync::mpsc::channel(1);
    let targets = reload::Targets {
        servers: running.iter().map(|r| r.server.clone()).collect(),
        ke_tls,
        cookie_keys: cookie_keys.as_ref().map(|(keys, _)| keys.clone()),
        client_keys: new_keys_tx,
        leap_file: leap_file.clone(),
    };
    let _reloading = reload::spawn(reload_from, loaded.clone(), targets, reload_rx)
        .map_err(|e| format!("cannot serve reloads: {e}"))
        .map(AbortOnDrop)?;
    // `ctl` and `/metrics` read the same snapshots and counters.
    let observed = listeners.control.is_some() || listeners.metrics.is_some();
    let (snapshots, control_requests) = match &client {
        Some(_) if observed => {
            // Room for every connection both may serve at once: scrapes never crowd
            // `ctl` out (nor the reverse).
            let room = control::MAX_CONNECTIONS + super::metrics::MAX_CONNECTIONS;
            let (tx, rx) = tokio::sync::mpsc::channel(room);
            (Some(tx), Some(rx))
        }
        _ => (None, None),
    };
    let observer = Arc::new(control::Control {
        snapshots,
        local_stratum,
        servers: running.iter().map(|r| r.server.clone()).collect(),
        ke_servers: ke_running.iter().map(|r| r.stats.clone()).collect(),
        cookie_keys: cookie_keys.as_ref().map(|(keys, _)| keys.clone()),
        reloads: Some(reload_requests),
    });
    let rotation = cookie_keys.map(|(keys, persist_to)| nts::spawn_rotation(keys, persist_to));
    let _control_running = listeners
        .control
        .map(|listener| control::spawn(listener, observer.clone()))
        .transpose()
        .map_err(|e| format!("cannot serve the control socket: {e}"))?
        .map(AbortOnDrop);
    let _metrics_running = listeners
        .metrics
        .map(|listener| super::metrics::spawn(listener, observer.clone()))
        .transpose()
        .map_err(|e| format!("cannot serve metrics: {e}"))?
        .map(AbortOnDrop);
    let (stop_client, stopped) = tokio::sync::oneshot::channel();
    let link = routes.zip(inbound).map(|(routes, inbound)| PeerLink {
        routes,
        inbound,
        sockets: running.iter().filter_map(|r| r.socket.clone()).collect(),
    });
    let mut refclock_sockets = Some(listeners.refclocks);
    let mut client_task = client.map(|mut client| {
        client.leap_file = leap_file.clone();
        client.refclock_sockets = refclock_sockets.take().unwrap_or_default();
        let precision = super::measure_precision();
        tokio::spawn(client.run(
            clock.clone(),
            config.local.as_ref().map(|l| l.reference()),
            precision,
            link,
            ControlInputs {
                snapshots: control_requests,
                new_keys,
            },
            stopped,
        ))
    });
    ready();
    let client_ended = async {
        match client_task.as_mut() {
            Some(task) => task.await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = shutdown_signal() => {}
        // The client role ends on its own only when the clock process is lost: what
        // the clock did is unknown, so the engine stops and the supervisor with it.
        ended = client_ended => {
            if let Ok(Err(e)) = ended {
                return Err(format!("lost the clock process ({e}); stopping"));
            }
        }
    }
    let _ = stop_client.send(());
    if let Some(task) = client_task {
        let _ = task.await;
    }
    if let Some(task) = rotation {
        task.abort();
    }
    tracing::info!("stopping");
    Ok(())
}

/// Starts one UDP server per `[[server]]` on its bound socket.
fn start_servers(
    loaded: &Loaded,
    sockets: Vec<Vec<std::net::UdpSocket>>,
    cookie_keys: Option<&SharedCookieKeys>,
    reference: &Reference,
    clock: &Arc<dyn Clock>,
    routes: &Option<Arc<PeerRoutes>>,
    leap_file: &super::leap::SharedLeapFile,
) -> Result<Vec<RunningServer>, String> {
    let config = &loaded.config;
    let mut running = Vec::new();
    for (section, socket) in config.servers.iter().zip(sockets) {
        let mut server = Server::new(
            loaded.keys.clone(),
            ServerOptions {
                crypto_nak: section.crypto_nak,
                answer_unknown_peers: section.unknown_peers == UnknownPeers::Reply,
                require_auth: section.require_auth,
            },
        );
        if let Some(keys) = cookie_keys {
            server = server.with_nts(keys.clone());
        }
        server = server.with_peer_keys(config.peers.iter().filter_map(|p| p.get_ref().key));
        let rate_limit = section
            .rate_limit
            .as_ref()
            .map(|r| r.get_ref())
            .map(|r| RateLimit {
                interval: r.interval,
                burst: r.burst,
                kiss_one_in: r.kiss_one_in,
            });
        let listen = *section.listen.get_ref();
        let access = section
            .access()
            .map_err(|(_, e)| format!("{listen}: {e}"))?;
        let admission = Admission {
            access,
            deny_kiss: section.deny_action == DenyAction::Kiss,
            rate_limit,
            clients: section.clients(),
            leap_file: leap_file.clone(),
            smear_window: loaded.config.smear_window(),
        };
        let r = start_on(
            socket,
            server,
            reference.clone(),
            admission,
            clock.clone(),
            routes.clone(),
        )
        .map_err(|e| format!("cannot serve on {listen}: {e}"))?;
        tracing::info!(
            "serving NTP on {} ({} threads; {}, {} keys, NTS {})",
            r.local_addr,
            r.workers(),
            reference.describe(),
            loaded.keys.len(),
            if cookie_keys.is_some() { "on" } else { "off" }
        );
        running.push(r);
    }
    Ok(running)
}

/// Starts one NTS-KE server per `[[nts-ke-server]]` on its bound listener.
fn start_ke_servers(
    configs: Vec<(Arc<rustls::ServerConfig>, NtpEndpoint)>,
    tls: &[nts::SharedTls],
    listeners: Vec<std::net::TcpListener>,
    cookie_keys: Option<&SharedCookieKeys>,
) -> Result<Vec<nts::RunningKeServer>, String> {
    let mut running = Vec::new();
    for (((_, endpoint), tls), listener) in configs.into_iter().zip(tls).zip(listeners) {
        let Some(keys) = cookie_keys else {
            return Err("[[nts-ke-server]] needs [nts]".into());
        };
        let r = nts::start_ke_server_on(
            listener,
            tls.clone(),
            keys.clone(),
            endpoint.clone(),
            KeLimits::default(),
        )
        .map_err(|e| format!("cannot serve NTS-KE: {e}"))?;
        tracing::info!(
            "serving NTS-KE on {} (clients sent to {endpoint})",
            r.local_addr
        );
        running.push(r);
    }
    Ok(running)
}

/// Stops a task when `serve` returns.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

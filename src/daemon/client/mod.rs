//! The client role of `ntimed run`: `[[source]]`, `[[peer]]` and `[clock]` checked and
//! turned into a [`crate::coordinator::Coordinator`], which [`driver`] runs against
//! sockets, timers and the clock.
//!
//! * [`driver`]: the tokio loop that moves bytes and time between the OS and the
//!   coordinator.
//! * [`clock_worker`]: applies clock commands off the async runtime when the clock is
//!   another process.

mod clock_worker;
mod driver;

pub use driver::ControlInputs;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use crate::clock::Clock;
use crate::config::Loaded;
use crate::coordinator::LocalReference;
use crate::proto::peer::{PeerAuth, PeerOptions};
use crate::proto::server::SyncState;
use crate::proto::source::SourceOptions;
use crate::sync::SyncConfig;

use super::peer::{PeerLink, PeerSpec};

/// How a configured source authenticates, with what it needs at run time.
#[derive(Clone)]
pub enum SourceKind {
    Insecure,
    Key(crate::auth::SymmetricKey),
    Nts {
        ke_host: String,
        ke_port: u16,
        tls: Arc<rustls::ClientConfig>,
    },
}

#[derive(Clone)]
pub struct SourceSpec {
    pub host: String,
    pub port: u16,
    pub kind: SourceKind,
    pub options: SourceOptions,
}

/// Reads a drift file: one number, the frequency correction in ppm. A missing or
/// unreadable file is no error (the engine starts without it); a bad one is reported.
pub fn read_drift_file(path: &std::path::Path, limit: f64) -> Option<f64> {
    let text = std::fs::read_to_string(path).ok()?;
    match text.trim().parse::<f64>() {
        // Just created (by the clock process, before the first save).
        _ if text.trim().is_empty() => None,
        Ok(ppm) if ppm.is_finite() && ppm.abs() <= limit => Some(ppm),
        _ => {
            tracing::warn!("{}: not a frequency in ppm; ignored", path.display());
            None
        }
    }
}

/// The client role, checked and ready to run.
pub struct ClientRole {
    pub specs: Vec<SourceSpec>,
    pub peers: Vec<PeerSpec>,
    pub config: SyncConfig,
    pub drift_file: Option<PathBuf>,
    /// What the server role answers from.
    pub state: Arc<RwLock<SyncState>>,
    /// The `[leap] file` (a reload swaps it).
    pub leap_file: super::leap::SharedLeapFile,
    /// The specific addresses our `[[server]]`s listen on: how the site's other
    /// servers know us (our id in orphan mode, and in their reference ids).
    pub own_addresses: Vec<IpAddr>,
    /// `[[refclock]]`s, in config order (SHM segments attached by
    /// [`super::refclock::attach_shm`], devices opened by
    /// [`super::refclock::open_devices`]).
    pub refclocks: Vec<super::refclock::RefclockSpec>,
    /// The SOCK refclocks' bound sockets, in config order.
    pub refclock_sockets: Vec<std::os::unix::net::UnixDatagram>,
}

/// Builds the client role from `[[source]]` and `[clock]` (`None` without sources).
/// TLS settings, keys and the drift file are read here, before anything runs.
pub fn prepare(loaded: &Loaded) -> Result<Option<ClientRole>, String> {
    let config = &loaded.config;
    let Some(clock) = config.clock.as_ref().map(|c| c.get_ref()) else {
        return Ok(None);
    };
    if config.sources.is_empty() && config.peers.is_empty() && config.refclocks.is_empty() {
        return Ok(None);
    }
    let mut specs = Vec::new();
    for section in &config.sources {
        let s = section.get_ref();
        let (host, port) = super::net::split_host_port(&s.address, 123)?;
        let kind = if let Some(nts) = &s.nts {
            let (ke_host, ke_port) =
                super::net::split_host_port(&nts.ke, super::nts::DEFAULT_KE_PORT)?;
            let ca = nts.ca.as_ref().map(|p| loaded.path(p));
            SourceKind::Nts {
                ke_host,
                ke_port,
                tls: super::nts::client_config(ca.as_deref())?,
            }
        } else if let Some(id) = s.key {
            let key = loaded
                .keys
                .get(id)
                .ok_or_else(|| format!("source {}: no key {id}", s.address))?;
            SourceKind::Key(key.clone())
        } else {
            SourceKind::Insecure
        };
        let defaults = SourceOptions::default();
        specs.push(SourceSpec {
            host,
            port,
            kind,
            options: SourceOptions {
                min_poll: s.min_poll.unwrap_or(defaults.min_poll),
                max_poll: s.max_poll.unwrap_or(defaults.max_poll),
                iburst: s.iburst,
                xleave: s.xleave,
            },
        });
    }
    let mut peers = Vec::new();
    for section in &config.peers {
        let p = section.get_ref();
        let (host, port) = super::net::split_host_port(&p.address, 123)?;
        let auth = match p.key {
            Some(id) => PeerAuth::Key(
                loaded
                    .keys
                    .get(id)
                    .ok_or_else(|| format!("peer {}: no key {id}", p.address))?
                    .clone(),
            ),
            None => PeerAuth::Insecure,
        };
        let defaults = PeerOptions::default();
        peers.push(PeerSpec {
            host,
            port,
            auth,
            options: PeerOptions {
                min_poll: p.min_poll.unwrap_or(defaults.min_poll),
                max_poll: p.max_poll.unwrap_or(defaults.max_poll),
                precision: defaults.precision,
            },
        });
    }
    let mut refclocks = Vec::new();
    for section in &config.refclocks {
        let r = section.get_ref();
        let mut kind = r.kind().ok_or_else(|| format!("{}: no device", r.name()))?;
        if let crate::refclock::DriverKind::Sock { path } = &mut kind {
            *path = loaded.path(path);
        }
        refclocks.push(super::refclock::RefclockSpec {
            name: r.name(),
            kind,
            options: r.options(),
            segment: None,
            device: None,
            phc: r.phc_settings(),
            pps: r.pps_settings(),
            lock: r
                .lock
                .as_deref()
                .and_then(|lock| crate::refclock::parse_refid(lock).ok()),
        });
    }
    let defaults = SyncConfig::default();
    let max_frequency_ppm = clock.max_frequency.unwrap_or(defaults.max_frequency_ppm);
    let drift_file = clock.drift_file.as_ref().map(|p| loaded.path(p));
    let sync = SyncConfig {
        min_sources: clock.min_sources.unwrap_or(defaults.min_sources),
        step_threshold: clock.step_threshold.unwrap_or(defaults.step_threshold),
        steps: clock.steps.unwrap_or(defaults.steps),
        panic_threshold: clock.panic_threshold.unwrap_or(defaults.panic_threshold),
        max_frequency_ppm,
        initial_frequency_ppm: drift_file
            .as_deref()
            .and_then(|p| read_drift_file(p, max_frequency_ppm)),
        min_poll: specs
            .iter()
            .map(|s| s.options.min_poll)
            .chain(peers.iter().map(|p| p.options.min_poll))
            .min()
            .unwrap_or(defaults.min_poll),
        max_poll: specs
            .iter()
            .map(|s| s.options.max_poll)
            .chain(peers.iter().map(|p| p.options.max_poll))
            .max()
            .unwrap_or(defaults.max_poll),
        orphan_stratum: loaded
            .config
            .local
            .as_ref()
            .filter(|l| l.orphan)
            .map(|l| *l.stratum.get_ref()),
        leap_mode: loaded
            .config
            .leap
            .as_ref()
            .map(|l| l.mode)
            .unwrap_or_default(),
    };
    Ok(Some(ClientRole {
        specs,
        peers,
        config: sync,
        drift_file,
        state: Arc::new(RwLock::new(SyncState::unsynchronized(-20))),
        leap_file: Default::default(),
        own_addresses: config
            .servers
            .iter()
            .map(|s| s.listen.get_ref().ip())
            .filter(|ip| !ip.is_unspecified())
            .collect(),
        refclocks,
        refclock_sockets: Vec::new(),
    }))
}

impl ClientRole {
    /// Runs the sources and peers until `shutdown` fires; `local` is `[local]`, the
    /// clock served when the sources give no time. Peers need `link` (the server sockets);
    /// `control` brings snapshot requests from the control socket.
    /// `Err` when the clock process is lost: the caller decides what follows.
    pub async fn run(
        self,
        clock: Arc<dyn Clock>,
        local: Option<LocalReference>,
        precision: i8,
        link: Option<PeerLink>,
        control: driver::ControlInputs,
        shutdown: tokio::sync::oneshot::Receiver<()>,
    ) -> Result<(), String> {
        driver::Driver::new(self, clock, local, precision, link, control)
            .run(shutdown)
            .await
    }
}

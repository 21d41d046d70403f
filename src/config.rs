//! The TOML configuration. Everything is checked, and key files read, before anything
//! starts; an error names the file, the line and the problem.
//!
//! ```toml
//! [keys]
//! file = "keys/example.keys"      # ntp.keys or chrony format, auto-detected
//! [local]                         # serve as a reference when nothing better is synced
//! stratum = 1
//! [[server]]
//! listen = "127.0.0.1:11123"      # repeatable; IPv4 and IPv6
//! ```
//!
//! Relative paths are resolved from the directory holding the config file.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::auth::{KeyFileFormat, KeyStore};
use crate::proto::access::{AccessList, Cidr};

/// Configs are small; a larger file is refused before it is read.
const MAX_CONFIG_LEN: u64 = 1 << 20;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    pub keys: Option<KeysSection>,
    pub local: Option<LocalSection>,
    #[serde(default, rename = "server")]
    pub servers: Vec<ServerSection>,
    #[serde(default, rename = "nts-ke-server")]
    pub nts_ke_servers: Vec<NtsKeServerSection>,
    pub nts: Option<NtsSection>,
    pub clock: Option<Spanned<ClockSection>>,
    #[serde(default, rename = "source")]
    pub sources: Vec<Spanned<SourceSection>>,
    #[serde(default, rename = "peer")]
    pub peers: Vec<Spanned<PeerSection>>,
    #[serde(default, rename = "refclock")]
    pub refclocks: Vec<Spanned<RefclockSection>>,
    pub sandbox: Option<SandboxSection>,
    pub control: Option<ControlSection>,
    pub leap: Option<LeapSection>,
    pub metrics: Option<MetricsSection>,
}

/// Prometheus metrics over HTTP (see `crate::daemon::metrics`); off without this
/// section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct MetricsSection {
    /// A TCP address, such as `127.0.0.1:9975`. Unauthenticated: keep it on loopback
    /// or a management network.
    pub listen: Spanned<SocketAddr>,
}

/// Leap seconds (see `crate::sync::leap_file`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LeapSection {
    /// The IERS/NIST `leap-seconds.list`, e.g. tzdata's
    /// `/usr/share/zoneinfo/leap-seconds.list`; its leaps are announced in served
    /// packets during the day before each.
    pub file: Option<PathBuf>,
    /// How the local clock passes a leap second: `kernel` (default: the kernel
    /// inserts or deletes it at midnight, a 1 s step back or forward) or `slew` (the
    /// kernel is never told; the engine slews the second away after midnight, at most
    /// 83 ms/s, so the clock never jumps but is up to 1 s off for about 12 s).
    #[serde(default)]
    pub mode: LeapMode,
    /// Smear each leap second of the `file` over this many seconds (2000 to 86400,
    /// centred on the leap) in served time only; off by default. Smeared time is up to
    /// 0.5 s from UTC: only for sites whose clients all use smearing servers, never a
    /// public server (see `crate::proto::smear`).
    pub smear_window: Option<Spanned<u32>>,
}

/// How the local clock passes a leap second (`[leap] mode`).
pub use crate::sync::LeapMode;

impl Config {
    /// The `[leap] file`, if one is configured.
    pub fn leap_file(&self) -> Option<&Path> {
        self.leap.as_ref()?.file.as_deref()
    }

    /// The `[leap] smear-window` in seconds, if served time is smeared.
    pub fn smear_window(&self) -> Option<f64> {
        let window = self.leap.as_ref()?.smear_window.as_ref()?;
        Some(f64::from(*window.get_ref()))
    }
}

/// The control socket `ntimed ctl` talks to (see `crate::daemon::control`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ControlSection {
    /// `false` turns the socket off, even when started as root.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// A Unix stream socket (default `/run/ntimed/ntimed.sock`).
    pub socket: Option<PathBuf>,
    /// Its permissions (default `0o660`): whoever they admit may read status.
    pub mode: Option<u32>,
    /// Its group (default `ntimed` if that group exists, else root's).
    pub group: Option<String>,
}

fn default_true() -> bool {
    true
}

/// Who the daemon's processes become when started as root, and where the network
/// process is jailed. Ignored without root (nothing to drop).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SandboxSection {
    /// An unprivileged user of its own (`ntimed`).
    #[serde(default = "default_sandbox_user")]
    pub user: String,
    /// The engine's chroot: owned by root, not writable by group or others, nor its
    /// parent (`/var/lib/ntimed`). `[nts] key-dir` must lie inside it.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
}

impl Default for SandboxSection {
    fn default() -> Self {
        Self {
            user: default_sandbox_user(),
            state_dir: default_state_dir(),
        }
    }
}

fn default_sandbox_user() -> String {
    "ntimed".into()
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/ntimed")
}

/// Which clock the engine steers, and the policy it steers by.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ClockSection {
    pub mode: ClockMode,
    /// `simulated` only: how far the clock starts from the system clock (seconds) and
    /// how fast it drifts away (ppm).
    #[serde(default)]
    pub simulated_offset: f64,
    #[serde(default)]
    pub simulated_frequency: f64,
    /// Offsets beyond this (seconds) may be stepped, when `steps` allows (0.128).
    pub step_threshold: Option<f64>,
    /// `startup` (default), `always` or `never`.
    pub steps: Option<crate::sync::StepPolicy>,
    /// Offsets beyond this (seconds) are never acted on (1000).
    pub panic_threshold: Option<f64>,
    /// Largest frequency correction, ppm (500).
    pub max_frequency: Option<f64>,
    /// Sources that must agree before the clock is steered (1).
    pub min_sources: Option<usize>,
    /// Where the frequency correction is kept across restarts.
    pub drift_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClockMode {
    /// Measure and keep a corrected time scale in software; never touch the system
    /// clock (like `chronyd -x`).
    Observe,
    /// A software clock with a configured error, for tests and demonstrations.
    Simulated,
    /// The kernel clock (needs CAP_SYS_TIME).
    System,
}

/// An upstream NTP server. Exactly one of `nts`, `key` and `insecure = true`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SourceSection {
    /// `host:port` of the NTP server. For NTS, where NTP goes if the NTS-KE server
    /// does not name a server and port itself (it may name either or both).
    pub address: String,
    pub nts: Option<NtsSourceSection>,
    /// A key id from `[keys]`: replies must carry its MAC.
    pub key: Option<u32>,
    /// Accept unauthenticated replies from this source (must be said explicitly).
    #[serde(default)]
    pub insecure: bool,
    #[serde(default)]
    pub iburst: bool,
    /// Ask the server for interleaved mode (RFC 9769): each sample then uses the
    /// server's transmit time taken after its previous reply left (off by default).
    #[serde(default)]
    pub xleave: bool,
    /// Poll interval bounds, log2 seconds (6 and 10).
    pub min_poll: Option<i8>,
    pub max_poll: Option<i8>,
}

/// A peer site in symmetric mode (RFC 5905 modes 1 and 2): each side may take time
/// from the other. Packets go from and to the first `[[server]]` socket of the peer's
/// address family. Exactly one of `key` and `insecure = true`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PeerSection {
    /// `host:port` of the peer's NTP server socket (port 123 by default).
    pub address: String,
    /// A key id from `[keys]`; both ends use the same id and secret.
    pub key: Option<u32>,
    /// Accept unauthenticated packets from this peer (must be said explicitly).
    #[serde(default)]
    pub insecure: bool,
    /// Only here to refuse it with a clear message: NTS does not cover peering.
    nts: Option<toml::Value>,
    /// Poll interval bounds, log2 seconds (6 and 10).
    pub min_poll: Option<i8>,
    pub max_poll: Option<i8>,
}

/// A reference clock (the stratum-1 "master" role): a device the daemon reads
/// directly rather than a server it asks.
///
/// ```toml
/// [[refclock]]
/// driver = "shm"          # or "sock" with path = "/run/ntimed/gps.sock",
/// unit = 2                # "phc" or "pps" with device = "/dev/ptp0"
/// refid = "GPS"
/// authenticated = true    # a device is trusted by configuration, said outright
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RefclockSection {
    pub driver: RefclockDriver,
    /// `shm`: the segment's unit (key 0x4e545030 + unit; 0 and 1 are root's).
    pub unit: Option<u32>,
    /// `sock`: where the daemon creates the socket the sender (gpsd) writes to.
    pub path: Option<PathBuf>,
    /// `phc`, `pps`: the device (`/dev/ptp0`, `/dev/pps0`), opened before root is dropped.
    pub device: Option<PathBuf>,
    /// `phc`: seconds the PHC runs ahead of UTC (37 on TAI, as ptp4l keeps it; 0).
    pub utc_offset: Option<i64>,
    /// `phc`: the longest read trusted, seconds (1e-3).
    pub max_delay: Option<f64>,
    /// `pps`: the refid of the `[[refclock]]` that names each pulse's second; without
    /// it, the system's own clock does, and only while it is synchronized.
    pub lock: Option<String>,
    /// `pps`: the edge that marks the second ("assert").
    pub edge: Option<PpsEdgeName>,
    /// `pps`: the oldest lock estimate used, seconds (60).
    pub max_lock_age: Option<f64>,
    /// Never selected: read only as another refclock's `lock`.
    #[serde(default)]
    pub noselect: bool,
    /// Announced as our reference id while this clock is the reference: 1 to 4 ASCII
    /// characters ("GPS", "PPS").
    pub refid: String,
    /// Added to every sample, seconds (a receiver's known delay, say).
    #[serde(default)]
    pub offset: f64,
    /// Counted as each sample's round-trip delay for the root distance, seconds.
    #[serde(default)]
    pub delay: f64,
    /// The device's precision, seconds (1e-6).
    pub precision: Option<f64>,
    /// Samples are combined and used once per 2^poll seconds (4).
    pub poll: Option<i8>,
    /// Must be `true`: the device's word is taken without proof, and the config says so.
    #[serde(default)]
    pub authenticated: bool,
}

/// How a reference clock is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RefclockDriver {
    /// The NTP shared-memory segment (gpsd, ntpd's SHM driver).
    Shm,
    /// chrony's refclock socket protocol (gpsd writes to it).
    Sock,
    /// A PTP hardware clock (`/dev/ptpN`).
    Phc,
    /// A kernel PPS device (`/dev/ppsN`).
    Pps,
}

/// `edge` of a PPS refclock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PpsEdgeName {
    Assert,
    Clear,
}

impl RefclockSection {
    /// The driver and its device, as the daemon and reports name it (`path` as
    /// written; the daemon resolves it from the config's directory).
    pub fn kind(&self) -> Option<crate::refclock::DriverKind> {
        use crate::refclock::DriverKind;
        match self.driver {
            RefclockDriver::Shm => self.unit.map(|unit| DriverKind::Shm { unit }),
            RefclockDriver::Sock => self.path.clone().map(|path| DriverKind::Sock { path }),
            RefclockDriver::Phc => self.device.clone().map(|device| DriverKind::Phc { device }),
            RefclockDriver::Pps => self.device.clone().map(|device| DriverKind::Pps { device }),
        }
    }

    /// How a `phc` refclock's readings become samples (defaults filled in).
    pub fn phc_settings(&self) -> crate::refclock::phc::PhcSettings {
        let defaults = crate::refclock::phc::PhcSettings::default();
        crate::refclock::phc::PhcSettings {
            utc_offset: self.utc_offset.unwrap_or(defaults.utc_offset),
            max_delay: self.max_delay.unwrap_or(defaults.max_delay),
            precision: self.precision.unwrap_or(defaults.precision),
        }
    }

    /// How a `pps` refclock's pulses become samples (defaults filled in). The
    /// configured `offset` is applied here, to the pulse, not again to the sample.
    pub fn pps_settings(&self) -> crate::refclock::pps::PpsSettings {
        let defaults = crate::refclock::pps::PpsSettings::default();
        crate::refclock::pps::PpsSettings {
            edge: match self.edge {
                Some(PpsEdgeName::Clear) => crate::sys::PpsEdge::Clear,
                Some(PpsEdgeName::Assert) | None => crate::sys::PpsEdge::Assert,
            },
            offset: self.offset,
            max_lock_age: self.max_lock_age.unwrap_or(defaults.max_lock_age),
            precision: self.precision.unwrap_or(defaults.precision),
        }
    }

    /// The options the coordinator takes (defaults filled in).
    pub fn options(&self) -> crate::refclock::RefclockOptions {
        let defaults = crate::refclock::RefclockOptions::default();
        let precision = match self.driver {
            RefclockDriver::Phc => self.phc_settings().precision,
            _ => self.precision.unwrap_or(defaults.precision),
        };
        crate::refclock::RefclockOptions {
            refid: crate::refclock::parse_refid(&self.refid).unwrap_or(defaults.refid),
            // A pulse's offset is applied by the PPS combiner, before it picks the second.
            offset: if self.driver == RefclockDriver::Pps {
                0.0
            } else {
                self.offset
            },
            delay: self.delay,
            precision,
            poll: self.poll.unwrap_or(defaults.poll),
            noselect: self.noselect,
        }
    }

    /// `refclock GPS shm:2`, for messages and reports.
    pub fn name(&self) -> String {
        let device = self
            .kind()
            .map_or_else(|| format!("{:?}", self.driver), |k| k.describe());
        format!("refclock {} {device}", self.refid)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NtsSourceSection {
    /// `host:port` of the NTS-KE server (port 4460 by default).
    pub ke: String,
    /// CA certificates (PEM) to trust besides the system's.
    pub ca: Option<PathBuf>,
}

/// An NTS-KE listener (TLS 1.3 on TCP, port 4460 by convention).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NtsKeServerSection {
    pub listen: Spanned<SocketAddr>,
    /// PEM: the server certificate first, then intermediates.
    pub certificate_chain: PathBuf,
    /// PEM private key, mode 0600.
    pub private_key: PathBuf,
    /// Checked at start to be among the certificate's names.
    pub name: Option<String>,
    /// Send clients to this NTP host instead of this one.
    pub ntp_server: Option<Spanned<String>>,
    /// Send clients to this NTP port; by default the port of the only `[[server]]`
    /// if it is not 123.
    pub ntp_port: Option<Spanned<u16>>,
}

/// Cookie master keys, shared by the NTS-KE and NTP servers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NtsSection {
    /// Where random master keys are persisted (file `cookie-keys`, mode 0600).
    pub key_dir: Option<PathBuf>,
    /// A secret (≥ 32 bytes) shared by every host of a fleet; keys are derived from it.
    pub fleet_secret: Option<PathBuf>,
    /// Seconds between master-key rotations (default 86400).
    pub rotation: Option<Spanned<u64>>,
    /// Seconds an old master key keeps opening cookies (default 604800).
    pub retention: Option<Spanned<u64>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct KeysSection {
    pub file: PathBuf,
    /// `auto` (default), `ntp` or `chrony`.
    #[serde(default)]
    pub format: KeyFileFormat,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LocalSection {
    /// 1..=15.
    pub stratum: Spanned<u8>,
    /// With sources: serve the local clock once their root distance exceeds this
    /// (seconds; default 1, as chrony's `local distance`).
    pub distance: Option<Spanned<f64>>,
    /// With sources: seconds after start before the local clock is served (default 0).
    pub wait: Option<Spanned<f64>>,
    /// Orphan mode: the sources at this stratum are the site's other servers; the one
    /// with the lowest id serves its clock and the others follow it.
    #[serde(default)]
    pub orphan: bool,
}

impl LocalSection {
    /// What the coordinator acts on (checked by [`Config::check`]).
    pub fn reference(&self) -> crate::coordinator::LocalReference {
        let defaults = crate::coordinator::LocalReference::at_stratum(*self.stratum.get_ref());
        crate::coordinator::LocalReference {
            distance: self
                .distance
                .as_ref()
                .map_or(defaults.distance, |d| *d.get_ref()),
            wait: self.wait.as_ref().map_or(defaults.wait, |w| *w.get_ref()),
            orphan: self.orphan,
            ..defaults
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServerSection {
    pub listen: Spanned<SocketAddr>,
    /// Answer a request whose MAC fails with a crypto-NAK instead of silence.
    #[serde(default)]
    pub crypto_nak: bool,
    /// Limit each source's request rate (off unless set).
    pub rate_limit: Option<Spanned<RateLimitSection>>,
    /// Symmetric-active packets from addresses that are not `[[peer]]`s: `reply`
    /// (default: a stateless passive answer, as to a client) or `drop`.
    #[serde(default)]
    pub unknown_peers: UnknownPeers,
    /// `allow = ["CIDR", ...]`: with it, only matching clients are answered.
    pub allow: Option<Spanned<Vec<Spanned<String>>>>,
    /// `deny = ["CIDR", ...]`: matching clients are not answered (the most specific
    /// entry of both lists decides; on an equal prefix, deny).
    pub deny: Option<Spanned<Vec<Spanned<String>>>>,
    /// What a denied client gets: `ignore` (default, nothing) or `kiss` (a DENY kiss
    /// for a plain request, at most one per source and second).
    #[serde(default)]
    pub deny_action: DenyAction,
    /// Drop requests with neither a MAC nor NTS.
    #[serde(default)]
    pub require_auth: bool,
    /// Threads answering on this address, each reading a socket of its own (1 to 256;
    /// default: one per core).
    pub workers: Option<Spanned<u16>>,
    /// Clients remembered for interleaved mode and the rate limit (256 to 4194304;
    /// default 65536, about 5.5 MiB with a rate limit).
    pub clients: Option<Spanned<u32>>,
}

/// What a client the access list refuses gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DenyAction {
    #[default]
    Ignore,
    Kiss,
}

impl ServerSection {
    /// Threads (and sockets) answering on this address, if configured.
    pub fn workers(&self) -> Option<usize> {
        self.workers.as_ref().map(|w| usize::from(*w.get_ref()))
    }

    /// Clients remembered, if configured.
    pub fn clients(&self) -> Option<usize> {
        let clients = self.clients.as_ref()?;
        usize::try_from(*clients.get_ref()).ok()
    }

    /// The access list from `allow` and `deny`, or the bad entry's span and why.
    pub fn access(&self) -> Result<AccessList, Fault> {
        let mut total = 0;
        for (key, list) in [("allow", &self.allow), ("deny", &self.deny)] {
            let Some(list) = list else { continue };
            for entry in list.get_ref() {
                Cidr::parse(entry.get_ref())
                    .map_err(|e| (Some(entry.span()), format!("{key}: {e}")))?;
            }
            total += list.get_ref().len();
            if total > crate::proto::access::MAX_ENTRIES {
                let message = format!(
                    "{key}: more than {} allow and deny entries",
                    crate::proto::access::MAX_ENTRIES
                );
                return Err((Some(list.span()), message));
            }
        }
        fn texts(list: &Option<Spanned<Vec<Spanned<String>>>>) -> Option<Vec<&str>> {
            list.as_ref()
                .map(|l| l.get_ref().iter().map(|e| e.get_ref().as_str()).collect())
        }
        let allow: Option<Vec<&str>> = texts(&self.allow);
        let deny: Vec<&str> = texts(&self.deny).unwrap_or_default();
        AccessList::parse(allow.as_deref(), &deny).map_err(|e| (None, e.to_string()))
    }
}

/// What an unconfigured peer's symmetric-active packet gets. Either way it never
/// creates an association.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnknownPeers {
    #[default]
    Reply,
    Drop,
}

/// `rate-limit = { interval = 2, burst = 16 }`: per IPv4 address or IPv6 /64, `burst`
/// requests at once and then one per `interval` seconds; over the limit, one request in
/// `kiss-one-in` (default 4) gets a RATE kiss-o'-death, the rest nothing, and a source
/// at most one kiss per `interval`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RateLimitSection {
    pub interval: f64,
    pub burst: u32,
    #[serde(default = "default_kiss_one_in")]
    pub kiss_one_in: u32,
}

fn default_kiss_one_in() -> u32 {
    4
}

/// Splits `host`, `host:port`, `[v6]:port` or a bare IPv6 address.
pub fn split_host_port(text: &str, default_port: u16) -> Result<(String, u16), String> {
    if text.parse::<IpAddr>().is_ok() {
        return Ok((text.to_string(), default_port));
    }
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("{text:?}: missing ']'"))?;
        match after.strip_prefix(':') {
            Some(port) => (host, Some(port)),
            None if after.is_empty() => (host, None),
            None => return Err(format!("{text:?}: unexpected text after ']'")),
        }
    } else {
        match text.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    if host.is_empty() {
        return Err(format!("{text:?}: empty host name"));
    }
    let port = match port {
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("{text:?}: port must be 1 to 65535"))?,
        None => default_port,
    };
    Ok((host.to_string(), port))
}

/// Poll interval bounds (log2 s) of a source or peer, with the defaults 6 and 10.
fn check_poll_bounds(min: Option<i8>, max: Option<i8>) -> Result<(), &'static str> {
    let (min, max) = (min.unwrap_or(6), max.unwrap_or(10));
    if (-4..=17).contains(&min) && (-4..=17).contains(&max) && min <= max {
        Ok(())
    } else {
        Err("min-poll and max-poll must be -4 to 17, min ≤ max")
    }
}

/// A config that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct ConfigError {
    pub file: String,
    pub line: Option<usize>,
    pub message: String,
}

/// A checked config with its key store loaded.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub keys: KeyStore,
    /// The config file's directory, which relative paths start from.
    pub base: PathBuf,
}

impl Loaded {
    /// `path` as the config means it.
    pub fn path(&self, path: &Path) -> PathBuf {
        self.base.join(path)
    }
}

/// Where in the config text a fault is (when known), and what it is.
type Fault = (Option<std::ops::Range<usize>>, String);

impl Config {
    /// Reads, parses and checks `path`, and loads the key file it names; stops at the
    /// first problem ([`Config::load_all`] finds them all).
    pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
        let mut problems = Vec::new();
        let loaded = Self::load_all(path, &mut problems);
        match (problems.into_iter().next(), loaded) {
            (Some(first), _) => Err(first),
            (None, Some(loaded)) => Ok(loaded),
            (None, None) => Err(ConfigError {
                file: path.display().to_string(),
                line: None,
                message: "cannot be loaded".into(),
            }),
        }
    }

    /// [`Config::load`], recording every problem rather than stopping at the first:
    /// `None` only when the file cannot be read or parsed at all. With problems
    /// recorded, the config returned is for looking at further, not for running (a key
    /// file that failed to load leaves its key store empty).
    pub fn load_all(path: &Path, problems: &mut Vec<ConfigError>) -> Option<Loaded> {
        use std::io::Read;
        let name = path.display().to_string();
        let fail = |message: String| ConfigError {
            file: name.clone(),
            line: None,
            message,
        };
        let text = std::fs::File::open(path)
            .map_err(|e| fail(format!("cannot open: {e}")))
            .and_then(|file| {
                let mut text = String::new();
                file.take(MAX_CONFIG_LEN + 1)
                    .read_to_string(&mut text)
                    .map_err(|e| fail(format!("cannot read: {e}")))?;
                if text.len() as u64 > MAX_CONFIG_LEN {
                    return Err(fail(format!("larger than {MAX_CONFIG_LEN} bytes")));
                }
                Ok(text)
            });
        let config = text.and_then(|text| {
            let config = Self::parse_all(&name, &text, problems)?;
            Ok((text, config))
        });
        let (text, config) = match config {
            Ok(parsed) => parsed,
            Err(e) => {
                problems.push(e);
                return None;
            }
        };
        let base = path.parent().unwrap_or(Path::new("."));
        let keys = match &config.keys {
            Some(section) => match KeyStore::load(&base.join(&section.file), section.format) {
                Ok(keys) => Some(keys),
                Err(e) => {
                    problems.push(ConfigError {
                        file: e.file,
                        line: e.line,
                        message: format!("{} (the [keys] file of {name})", e.problem),
                    });
                    None
                }
            },
            None => Some(KeyStore::default()),
        };
        let keyed = config
            .sources
            .iter()
            .map(|s| ("source", &s.get_ref().address, s.get_ref().key, s.span()))
            .chain(
                config
                    .peers
                    .iter()
                    .map(|p| ("peer", &p.get_ref().address, p.get_ref().key, p.span())),
            );
        // Key ids are checked only against a key file that loaded.
        for (what, address, key, span) in keyed {
            if let (Some(id), Some(keys)) = (key, &keys)
                && keys.get(id).is_none()
            {
                let missing = if config.keys.is_some() {
                    "is not in the [keys] file"
                } else {
                    "needs a [keys] section naming the key file"
                };
                problems.push(ConfigError {
                    file: name.clone(),
                    line: Some(line_of(&text, span.start)),
                    message: format!("{what} {address}: key {id} {missing}"),
                });
            }
        }
        Some(Loaded {
            config,
            keys: keys.unwrap_or_default(),
            base: base.to_path_buf(),
        })
    }

    /// Parses and checks config text; `name` is used in errors. Stops at the first.
    pub fn parse(name: &str, text: &str) -> Result<Self, ConfigError> {
        let mut problems = Vec::new();
        let config = Self::parse_all(name, text, &mut problems)?;
        match problems.into_iter().next() {
            Some(first) => Err(first),
            None => Ok(config),
        }
    }

    /// Parses config text, recording every problem the checks find; `Err` only for
    /// text that does not parse into a config at all (TOML syntax, unknown keys,
    /// values of the wrong type).
    fn parse_all(
        name: &str,
        text: &str,
        problems: &mut Vec<ConfigError>,
    ) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|e| ConfigError {
            file: name.to_string(),
            line: e.span().map(|span| line_of(text, span.start)),
            message: e.message().trim().to_string(),
        })?;
        let mut faults = Vec::new();
        config.check(&mut faults);
        problems.extend(faults.into_iter().map(|(span, message)| ConfigError {
            file: name.to_string(),
            line: span.map(|s| line_of(text, s.start)),
            message,
        }));
        Ok(config)
    }

    /// Sources need a clock to steer and say how they are authenticated; the clock
    /// policy must make sense.
    fn check_sources(&self, faults: &mut Vec<Fault>) {
        if let (Some(source), None) = (self.sources.first(), &self.clock) {
            let message = "[[source]] needs a [clock] section: mode = \"observe\", \"simulated\" or \"system\"";
            faults.push((Some(source.span()), message.into()));
        }
        for (i, source) in self.sources.iter().enumerate() {
            let span = Some(source.span());
            let s = source.get_ref();
            let ways = usize::from(s.nts.is_some())
                + usize::from(s.key.is_some())
                + usize::from(s.insecure);
            if ways != 1 {
                let message = format!(
                    "source {}: say exactly one of nts = {{ ke = ... }}, key = N, insecure = true",
                    s.address
                );
                faults.push((span.clone(), message));
            }
            if let Err(e) = check_poll_bounds(s.min_poll, s.max_poll) {
                faults.push((span.clone(), format!("source {}: {e}", s.address)));
            }
            let ke = s.nts.as_ref().map(|n| n.ke.as_str());
            for (what, text) in [("address", Some(s.address.as_str())), ("nts ke", ke)] {
                if let Some(Err(e)) = text.map(|t| split_host_port(t, 123)) {
                    faults.push((span.clone(), format!("source {what}: {e}")));
                }
            }
            // The same server twice would count twice towards min-sources and majorities.
            let address = split_host_port(&s.address, 123).ok();
            let same = |other: &Spanned<SourceSection>| {
                split_host_port(&other.get_ref().address, 123).ok() == address
            };
            if address.is_some() && self.sources.iter().take(i).any(same) {
                faults.push((span, format!("source {}: listed twice", s.address)));
            }
        }
        if let Some(clock) = &self.clock {
            let span = Some(clock.span());
            let c = clock.get_ref();
            let mut fail = |message: &str| faults.push((span.clone(), message.to_string()));
            let positive =
                |v: Option<f64>, max: f64| v.is_none_or(|v| v.is_finite() && v > 0.0 && v <= max);
            if !positive(c.step_threshold, 1e9) || !positive(c.panic_threshold, 1e9) {
                fail("[clock] step-threshold and panic-threshold must be positive seconds");
            }
            if !positive(c.max_frequency, 500.0) {
                fail("[clock] max-frequency must be above 0 and at most 500 ppm");
            }
            if !c.simulated_offset.is_finite()
                || c.simulated_offset.abs() > 1e6
                || !c.simulated_frequency.is_finite()
                || c.simulated_frequency.abs() > 1e5
            {
                fail("[clock] simulated-offset / simulated-frequency out of range");
            }
            if c.mode != ClockMode::Simulated
                && (c.simulated_offset != 0.0 || c.simulated_frequency != 0.0)
            {
                fail("[clock] simulated-offset and simulated-frequency need mode = \"simulated\"");
            }
            let associations = self.sources.len() + self.peers.len() + self.refclocks.len();
            if c.min_sources
                .is_some_and(|n| n == 0 || n > associations.max(1))
            {
                fail(&format!(
                    "[clock] min-sources must be from 1 to the number of sources, peers and refclocks ({associations})"
                ));
            }
            if let (Some(step), Some(panic)) = (c.step_threshold, c.panic_threshold)
                && step > panic
            {
                fail("[clock] step-threshold must not exceed panic-threshold");
            }
        }
    }

    /// Peers steer the clock, send from a `[[server]]` socket, and say how they are
    /// authenticated (a key, or `insecure = true` in so many words).
    fn check_peers(&self, faults: &mut Vec<Fault>) {
        if let Some(peer) = self.peers.first() {
            let address = &peer.get_ref().address;
            if self.clock.is_none() {
                let message = format!(
                    "peer {address}: [[peer]] needs a [clock] section (a peer's time steers the clock)"
                );
                faults.push((Some(peer.span()), message));
            }
            if self.servers.is_empty() {
                let message = format!(
                    "peer {address}: [[peer]] needs a [[server]]: peer packets use its socket"
                );
                faults.push((Some(peer.span()), message));
            }
        }
        for (i, peer) in self.peers.iter().enumerate() {
            let span = Some(peer.span());
            let p = peer.get_ref();
            let mut fail =
                |what: &str| faults.push((span.clone(), format!("peer {}: {what}", p.address)));
            if p.nts.is_some() {
                fail("NTS is not defined for symmetric mode; use key = N");
            }
            match (p.key, p.insecure) {
                (Some(_), false) | (None, true) => {}
                (None, false) => fail("needs key = N (both ends the same key), or insecure = true"),
                (Some(_), true) => fail("say key = N or insecure = true, not both"),
            }
            if let Err(e) = check_poll_bounds(p.min_poll, p.max_poll) {
                fail(e);
            }
            match split_host_port(&p.address, 123) {
                Err(e) => fail(&e),
                Ok(address) => {
                    let same = |other: &Spanned<PeerSection>| {
                        split_host_port(&other.get_ref().address, 123).as_ref() == Ok(&address)
                    };
                    if self.peers.iter().take(i).any(same) {
                        fail("listed twice");
                    }
                }
            }
        }
    }

    /// Reference clocks steer the clock, are trusted in so many words, and name their
    /// device once.
    fn check_refclocks(&self, faults: &mut Vec<Fault>) {
        for (i, refclock) in self.refclocks.iter().enumerate() {
            let span = Some(refclock.span());
            let r = refclock.get_ref();
            let name = r.name();
            let mut fail = |what: String| faults.push((span.clone(), format!("{name}: {what}")));
            if i == 0 && self.clock.is_none() {
                fail(
                    "[[refclock]] needs a [clock] section (a refclock's time steers the clock)"
                        .into(),
                );
            }
            if let Err(e) = crate::refclock::parse_refid(&r.refid) {
                fail(e);
            }
            if !r.authenticated {
                fail("a reference clock's samples carry no proof of origin: say authenticated = true to trust the device".into());
            }
            let device_only = r.unit.is_none() && r.path.is_none() && r.device.is_some();
            match (r.driver, r.unit, &r.path) {
                (RefclockDriver::Phc | RefclockDriver::Pps, _, _) if !device_only => fail(
                    "driver = \"phc\" or \"pps\" takes device = \"/dev/...\" and no unit or path"
                        .into(),
                ),
                (RefclockDriver::Phc | RefclockDriver::Pps, _, _) => {}
                (RefclockDriver::Shm, Some(unit), None) if r.device.is_none() => {
                    if unit > crate::refclock::shm::MAX_UNIT {
                        fail(format!(
                            "unit must be 0 to {}",
                            crate::refclock::shm::MAX_UNIT
                        ));
                    }
                }
                (RefclockDriver::Shm, _, _) => {
                    fail("driver = \"shm\" takes unit = N and no path or device".into())
                }
                (RefclockDriver::Sock, None, Some(path)) if r.device.is_none() => {
                    if path.as_os_str().is_empty() || path.file_name().is_none() {
                        fail("path must name a socket file".into());
                    }
                }
                (RefclockDriver::Sock, _, _) => {
                    fail("driver = \"sock\" takes path = \"/run/...\" and no unit or device".into())
                }
            }
            let finite_within =
                |v: f64, low: f64, high: f64| v.is_finite() && (low..=high).contains(&v);
            if !finite_within(r.offset, -10.0, 10.0) {
                fail("offset must be -10 to 10 seconds".into());
            }
            if !finite_within(r.delay, 0.0, 1.0) {
                fail("delay must be 0 to 1 second".into());
            }
            if r.precision.is_some_and(|p| !finite_within(p, 1e-9, 1.0)) {
                fail("precision must be 1e-9 to 1 second".into());
            }
            if r.poll.is_some_and(|p| !(0..=10).contains(&p)) {
                fail("poll must be 0 to 10 (log2 seconds)".into());
            }
            self.check_device_options(r, &mut fail);
            let kind = r.kind();
            if kind.is_some()
                && self
                    .refclocks
                    .iter()
                    .take(i)
                    .any(|o| o.get_ref().kind() == kind)
            {
                fail("listed twice".into());
            }
        }
    }

    /// The PHC and PPS options: each only on its own driver, within range, and a PPS
    /// `lock` naming another `[[refclock]]` (one that is not a PPS refclock itself).
    fn check_device_options(&self, r: &RefclockSection, fail: &mut impl FnMut(String)) {
        let phc = r.driver == RefclockDriver::Phc;
        let pps = r.driver == RefclockDriver::Pps;
        for (name, set, driver, allowed) in [
            ("utc-offset", r.utc_offset.is_some(), "phc", phc),
            ("max-delay", r.max_delay.is_some(), "phc", phc),
            ("lock", r.lock.is_some(), "pps", pps),
            ("edge", r.edge.is_some(), "pps", pps),
            ("max-lock-age", r.max_lock_age.is_some(), "pps", pps),
        ] {
            if set && !allowed {
                fail(format!("{name} is only for driver = \"{driver}\""));
            }
        }
        if r.device.as_ref().is_some_and(|d| d.as_os_str().is_empty()) {
            fail("device must name a device file".into());
        }
        if r.utc_offset.is_some_and(|o| !(0..=1000).contains(&o)) {
            fail("utc-offset must be 0 to 1000 seconds (37 for a PHC on TAI)".into());
        }
        if r.max_delay
            .is_some_and(|d| !(d.is_finite() && d > 0.0 && d <= 1.0))
        {
            fail("max-delay must be more than 0 and at most 1 second".into());
        }
        if r.max_lock_age
            .is_some_and(|a| !(a.is_finite() && a > 0.0 && a <= 86_400.0))
        {
            fail("max-lock-age must be more than 0 and at most 86400 seconds".into());
        }
        if pps && !(-0.5..=0.5).contains(&r.offset) {
            fail("a PPS refclock's offset must be within ±0.5 s".into());
        }
        let Some(lock) = &r.lock else {
            return;
        };
        if *lock == r.refid {
            fail(format!("lock = {lock:?} names this refclock itself"));
            return;
        }
        let named: Vec<&RefclockSection> = self
            .refclocks
            .iter()
            .map(|o| o.get_ref())
            .filter(|o| o.refid == *lock)
            .collect();
        match named.as_slice() {
            [] => fail(format!(
                "lock = {lock:?} is not the refid of any [[refclock]]"
            )),
            [one] if one.driver == RefclockDriver::Pps => fail(format!(
                "lock = {lock:?} is a PPS refclock, which cannot name a second either"
            )),
            [_] => {}
            _ => fail(format!(
                "lock = {lock:?} is the refid of more than one [[refclock]]"
            )),
        }
    }

    /// Smearing needs the file, the kernel's leap and the system clock.
    fn check_leap(&self, faults: &mut Vec<Fault>) {
        let Some(leap) = &self.leap else {
            return;
        };
        let Some(window) = &leap.smear_window else {
            return;
        };
        use crate::proto::smear::{MAX_WINDOW, MIN_WINDOW};
        let mut fail = |message: String| faults.push((Some(window.span()), message));
        if !(MIN_WINDOW..=MAX_WINDOW).contains(&f64::from(*window.get_ref())) {
            fail(format!(
                "[leap] smear-window must be {MIN_WINDOW} to {MAX_WINDOW} seconds \
                 (at most 500 ppm, as every client can follow)"
            ));
        }
        if leap.file.is_none() {
            fail("[leap] smear-window needs the leap file: each leap is smeared from it".into());
        }
        if leap.mode != LeapMode::Kernel {
            fail(
                "[leap] smear-window needs mode = \"kernel\": the local clock must stay right"
                    .into(),
            );
        }
        if self
            .clock
            .as_ref()
            .is_some_and(|clock| clock.get_ref().mode != ClockMode::System)
        {
            fail(
                "[leap] smear-window needs the system clock ([clock] mode = \"system\"): \
                  the smear follows the kernel's leap"
                    .into(),
            );
        }
    }

    /// Checks what serde cannot, recording where in the text each fault is.
    fn check(&self, faults: &mut Vec<Fault>) {
        if let Some(local) = &self.local {
            let stratum = *local.stratum.get_ref();
            if !(1..=15).contains(&stratum) {
                let message = format!("[local] stratum must be 1 to 15, not {stratum}");
                faults.push((Some(local.stratum.span()), message));
            }
            for (name, value, max) in [
                ("distance", &local.distance, 16.0),
                ("wait", &local.wait, 86_400.0),
            ] {
                if let Some(v) = value
                    && !(0.0..=max).contains(v.get_ref())
                {
                    let message = format!("[local] {name} must be 0 to {max} seconds");
                    faults.push((Some(v.span()), message));
                }
            }
            if local.orphan && self.sources.is_empty() && self.peers.is_empty() {
                let message = "[local] orphan needs the site's other servers as [[source]]s";
                faults.push((Some(local.stratum.span()), message.into()));
            }
        }
        if self.servers.is_empty()
            && self.nts_ke_servers.is_empty()
            && self.sources.is_empty()
            && self.peers.is_empty()
            && self.refclocks.is_empty()
        {
            let message = "nothing to run: add a [[source]], [[server]] or [[nts-ke-server]]";
            faults.push((None, message.into()));
        }
        self.check_sources(faults);
        self.check_peers(faults);
        self.check_refclocks(faults);
        self.check_leap(faults);
        if let Some(metrics) = &self.metrics {
            let listen = metrics.listen.get_ref();
            let clash = self.nts_ke_servers.iter().any(|ke| {
                let ke = ke.listen.get_ref();
                listen.port() != 0
                    && ke.port() == listen.port()
                    && (ke.ip() == listen.ip()
                        || ke.ip().is_unspecified()
                        || listen.ip().is_unspecified())
            });
            if clash {
                let message =
                    format!("[metrics] listen {listen} is an [[nts-ke-server]]'s address too");
                faults.push((Some(metrics.listen.span()), message));
            }
        }
        if let Some(ke) = self.nts_ke_servers.first()
            && self.nts.is_none()
        {
            let message = "[[nts-ke-server]] needs an [nts] section (key-dir or fleet-secret)";
            faults.push((Some(ke.listen.span()), message.into()));
        }
        if let Some(nts) = &self.nts {
            match (&nts.key_dir, &nts.fleet_secret) {
                (None, None) => faults.push((None, "[nts] needs key-dir or fleet-secret".into())),
                (Some(_), Some(_)) => {
                    let message = "[nts] takes key-dir or fleet-secret, not both";
                    faults.push((None, message.into()));
                }
                _ => {}
            }
            let period = nts.rotation.as_ref().map_or(86_400, |r| *r.get_ref());
            if let Some(rotation) = &nts.rotation
                && !(60..=30 * 86_400).contains(&period)
            {
                let message = "[nts] rotation must be 60 to 2592000 seconds".to_string();
                faults.push((Some(rotation.span()), message));
            }
            if let Some(retention) = &nts.retention {
                let value = *retention.get_ref();
                if value < period || value > 1000 * period || value > 90 * 86_400 {
                    let message = format!(
                        "[nts] retention must be at least rotation ({period} s), at most 1000 rotations and 90 days"
                    );
                    faults.push((Some(retention.span()), message));
                }
            }
        }
        for ke in &self.nts_ke_servers {
            if let Some(server) = &ke.ntp_server {
                let host = server.get_ref();
                if host.is_empty()
                    || host.len() > 255
                    || !host.bytes().all(|b| b.is_ascii_graphic())
                {
                    let message =
                        "ntp-server must be a host name or address (ASCII, 1 to 255 characters)";
                    faults.push((Some(server.span()), message.into()));
                }
            }
            if let Some(port) = &ke.ntp_port
                && *port.get_ref() == 0
            {
                faults.push((Some(port.span()), "ntp-port must be 1 to 65535".into()));
            }
        }
        for (i, ke) in self.nts_ke_servers.iter().enumerate() {
            let listen = ke.listen.get_ref();
            if self
                .nts_ke_servers
                .iter()
                .take(i)
                .any(|k| k.listen.get_ref() == listen)
            {
                faults.push((Some(ke.listen.span()), format!("{listen} is listed twice")));
            }
        }
        for server in &self.servers {
            if let Err(fault) = server.access() {
                faults.push(fault);
            }
            if let Some(workers) = &server.workers
                && !(1..=256).contains(workers.get_ref())
            {
                faults.push((Some(workers.span()), "workers must be 1 to 256".into()));
            }
            if let Some(clients) = &server.clients
                && !(256..=1 << 22).contains(clients.get_ref())
            {
                let message = "clients must be 256 to 4194304";
                faults.push((Some(clients.span()), message.into()));
            }
            if let Some(limit) = &server.rate_limit {
                let r = limit.get_ref();
                if !(0.001..=3600.0).contains(&r.interval) || !(1..=10_000).contains(&r.burst) {
                    let message =
                        "rate-limit needs interval 0.001 to 3600 seconds and burst 1 to 10000";
                    faults.push((Some(limit.span()), message.into()));
                }
            }
        }
        for (i, server) in self.servers.iter().enumerate() {
            let listen = server.listen.get_ref();
            if self
                .servers
                .iter()
                .take(i)
                .any(|s| s.listen.get_ref() == listen)
            {
                faults.push((
                    Some(server.listen.span()),
                    format!("{listen} is listed twice"),
                ));
            }
        }
    }
}

fn line_of(text: &str, byte: usize) -> usize {
    text.as_bytes()
        .iter()
        .take(byte)
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_parses() {
        let c = Config::parse(
            "ntimed.toml",
            "[keys]\nfile = \"keys/example.keys\"\n[local]\nstratum = 1\n\
             [[server]]\nlisten = \"127.0.0.1:11123\"\n[[server]]\nlisten = \"[::1]:11123\"\ncrypto-nak = true\n",
        )
        .unwrap();
        assert_eq!(c.servers.len(), 2);
        assert!(c.servers[1].crypto_nak);
        assert_eq!(c.servers[1].listen.get_ref().port(), 11123);
        assert_eq!(*c.local.unwrap().stratum.get_ref(), 1);
        assert_eq!(c.keys.unwrap().format, KeyFileFormat::Auto);
    }

    /// `xleave` on a source is off unless set.
    #[test]
    fn xleave_is_off_unless_set() {
        let c = Config::parse(
            "c.toml",
            "[clock]\nmode = \"observe\"\n[[source]]\naddress = \"127.0.0.1:1\"\ninsecure = true\nxleave = true\n\
             [[source]]\naddress = \"127.0.0.1:2\"\ninsecure = true\n",
        )
        .unwrap();
        let xleave: Vec<bool> = c.sources.iter().map(|s| s.get_ref().xleave).collect();
        assert_eq!(xleave, [true, false]);
    }

    /// ADVERSARIAL 37: the access keys parse into the list the server checks.
    #[test]
    fn access_keys_parse() {
        let c = Config::parse(
            "c.toml",
            "[[server]]\nlisten = \"127.0.0.1:1\"\nallow = [\"127.0.0.0/8\", \"::1\"]\n\
             deny = [\"127.0.0.2\"]\ndeny-action = \"kiss\"\nrequire-auth = true\n\
             [[server]]\nlisten = \"127.0.0.1:2\"\n",
        )
        .unwrap();
        let (guarded, open) = (&c.servers[0], &c.servers[1]);
        assert_eq!(guarded.deny_action, DenyAction::Kiss);
        assert!(guarded.require_auth);
        let acl = guarded.access().unwrap();
        assert!(acl.allows([127, 0, 0, 1].into()));
        assert!(!acl.allows([127, 0, 0, 2].into()));
        assert!(!acl.allows([192, 0, 2, 1].into()));
        assert_eq!(open.deny_action, DenyAction::Ignore);
        assert!(!open.require_auth);
        assert!(open.access().unwrap().allows_all());
    }

    /// `[metrics]` is off without the section; its address may not be an NTS-KE
    /// server's too (the second bind would fail at start, after the others).
    #[test]
    fn metrics_listen_parses_and_may_not_share_an_nts_ke_address() {
        let base = "[[server]]\nlisten = \"127.0.0.1:1\"\n";
        let c = Config::parse("c.toml", base).unwrap();
        assert!(c.metrics.is_none());
        let c = Config::parse(
            "c.toml",
            &format!("{base}[metrics]\nlisten = \"127.0.0.1:9975\"\n"),
        )
        .unwrap();
        let listen = c.metrics.map(|m| *m.listen.get_ref());
        assert_eq!(listen, Some("127.0.0.1:9975".parse().unwrap()));
        assert!(Config::parse("c.toml", &format!("{base}[metrics]\nlisten = \"x\"\n")).is_err());
        assert!(
            Config::parse(
                "c.toml",
                &format!("{base}[metrics]\nlisten = \"127.0.0.1:1\"\npath = \"/\"\n")
            )
            .is_err(),
            "unknown keys are refused"
        );
        let ke = "[[nts-ke-server]]\nlisten = \"0.0.0.0:4460\"\ncertificate-chain = \"c.pem\"\n\
                  private-key = \"k.pem\"\n[nts]\nkey-dir = \"k\"\n";
        let clash = Config::parse(
            "c.toml",
            &format!("{base}{ke}[metrics]\nlisten = \"127.0.0.1:4460\"\n"),
        );
        let error = clash.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("[metrics] listen 127.0.0.1:4460"), "{error}");
        let apart = Config::parse(
            "c.toml",
            &format!("{base}{ke}[metrics]\nlisten = \"127.0.0.1:9975\"\n"),
        );
        assert!(apart.is_ok(), "{:?}", apart.err());
    }

    #[test]
    fn server_threads_and_clients_are_checked() {
        let parse = |extra: &str| {
            let text = format!("[[server]]\nlisten = \"127.0.0.1:123\"\n{extra}");
            Config::parse("c.toml", &text).map_err(|e| e.to_string())
        };
        let set = parse("workers = 3\nclients = 4096\n").unwrap();
        let server = &set.servers[0];
        assert_eq!((server.workers(), server.clients()), (Some(3), Some(4096)));
        let unset = parse("").unwrap();
        let server = &unset.servers[0];
        assert_eq!((server.workers(), server.clients()), (None, None));
        for (extra, expected) in [
            ("workers = 0\n", "workers must be 1 to 256"),
            ("workers = 257\n", "workers must be 1 to 256"),
            ("clients = 255\n", "clients must be 256 to 4194304"),
            ("clients = 4194305\n", "clients must be 256 to 4194304"),
        ] {
            let error = parse(extra).unwrap_err();
            assert!(
                error.contains(expected) && error.contains("c.toml:3"),
                "{error}"
            );
        }
    }

    #[test]
    fn leap_smearing_is_checked() {
        let base = "[[server]]\nlisten = \"127.0.0.1:123\"\n[local]\nstratum = 1\n";
        let parse = |leap: &str| Config::parse("c.toml", &format!("{base}[leap]\n{leap}"));
        let good = parse("file = \"l\"\nsmear-window = 86400\n").unwrap();
        assert_eq!(good.smear_window(), Some(86_400.0));
        assert_eq!(
            parse("file = \"l\"\n").unwrap().smear_window(),
            None,
            "off by default"
        );
        for (leap, expected) in [
            (
                "file = \"l\"\nsmear-window = 1000\n",
                "2000 to 86400 seconds",
            ),
            (
                "file = \"l\"\nsmear-window = 86401\n",
                "2000 to 86400 seconds",
            ),
            ("smear-window = 86400\n", "needs the leap file"),
            (
                "file = \"l\"\nmode = \"slew\"\nsmear-window = 86400\n",
                "needs mode = \"kernel\"",
            ),
        ] {
            let error = parse(leap).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(error.contains(expected), "{leap}: {error}");
            let line = 5 + leap.lines().count();
            assert!(
                error.contains(&format!("c.toml:{line}:")),
                "names the line: {error}"
            );
        }
        let observe = format!(
            "{base}[clock]\nmode = \"observe\"\n[leap]\nfile = \"l\"\nsmear-window = 86400\n"
        );
        let error = Config::parse("c.toml", &observe)
            .err()
            .map(|e| e.to_string());
        assert!(error.unwrap_or_default().contains("needs the system clock"));
    }

    #[test]
    fn errors_name_file_and_line() {
        let cases = [
            (
                "[[server]]\nlisten = \"127.0.0.1:123\"\nlisen = 1\n",
                Some(3),
                "unknown field `lisen`",
            ),
            (
                "[[server]]\nlisten = \"nonsense\"\n",
                Some(2),
                "invalid socket address",
            ),
            (
                "[local]\nstratum = 16\n[[server]]\nlisten = \"127.0.0.1:1\"\n",
                Some(2),
                "1 to 15",
            ),
            ("[local]\nstratum = 300\n", Some(2), ""),
            (
                "[local]\nstratum = 10\norphan = true\n[[server]]\nlisten = \"127.0.0.1:1\"\n",
                Some(2),
                "orphan needs the site's other servers",
            ),
            (
                "[local]\nstratum = 10\ndistance = -1\n[[server]]\nlisten = \"127.0.0.1:1\"\n",
                Some(3),
                "[local] distance must be 0 to 16 seconds",
            ),
            ("[bogus]\n", Some(1), "unknown field `bogus`"),
            ("[[server]\n", Some(1), ""),
            ("[local]\nstratum = 2\n", None, "nothing to run"),
            (
                "[[nts-ke-server]]\nlisten = \"127.0.0.1:4460\"\ncertificate-chain = \"c\"\nprivate-key = \"k\"\n",
                Some(2),
                "needs an [nts] section",
            ),
            (
                "[[server]]\nlisten = \"127.0.0.1:1\"\n[nts]\n",
                None,
                "key-dir or fleet-secret",
            ),
            (
                "[[server]]\nlisten = \"127.0.0.1:1\"\n[nts]\nkey-dir = \"/x\"\nrotation = 5\n",
                Some(5),
                "rotation must be",
            ),
            (
                "[[server]]\nlisten = \"127.0.0.1:1\"\n[[server]]\nlisten = \"127.0.0.1:1\"\n",
                Some(4),
                "listed twice",
            ),
            (
                "[clock]\nmode = \"observe\"\nstep-threshold = 0\n[[source]]\naddress = \"192.0.2.1\"\ninsecure = true\n",
                Some(1),
                "positive seconds",
            ),
            (
                "[clock]\nmode = \"observe\"\npanic-threshold = nan\n[[source]]\naddress = \"192.0.2.1\"\ninsecure = true\n",
                Some(1),
                "positive seconds",
            ),
            (
                "[clock]\nmode = \"observe\"\nmax-frequency = 600\n[[source]]\naddress = \"192.0.2.1\"\ninsecure = true\n",
                Some(1),
                "max-frequency",
            ),
            (
                "[clock]\nmode = \"observe\"\nsimulated-offset = 1e7\n[[source]]\naddress = \"192.0.2.1\"\ninsecure = true\n",
                Some(1),
                "out of range",
            ),
            (
                "[clock]\nmode = \"observe\"\nsimulated-offset = 1\n[[source]]\naddress = \"192.0.2.1\"\ninsecure = true\n",
                Some(1),
                "need mode = \"simulated\"",
            ),
            (
                "[clock]\nmode = \"observe\"\nmin-sources = 2\n[[source]]\naddress = \"192.0.2.1\"\ninsecure = true\n",
                Some(1),
                "min-sources",
            ),
            (
                "[clock]\nmode = \"observe\"\nstep-threshold = 10\npanic-threshold = 5\n[[source]]\naddress = \"192.0.2.1\"\ninsecure = true\n",
                Some(1),
                "must not exceed",
            ),
            (
                "[[source]]\naddress = \"192.0.2.1\"\ninsecure = true\n",
                Some(1),
                "needs a [clock]",
            ),
            (
                "[clock]\nmode = \"observe\"\n[[source]]\naddress = \"192.0.2.1\"\n",
                Some(3),
                "exactly one of",
            ),
            (
                "[clock]\nmode = \"observe\"\n[[source]]\naddress = \"192.0.2.1\"\ninsecure = true\nmin-poll = 20\n",
                Some(3),
                "min-poll",
            ),
            (
                "[clock]\nmode = \"observe\"\n[[source]]\naddress = \"h:0\"\ninsecure = true\n",
                Some(3),
                "port must be",
            ),
            (
                "[clock]\nmode = \"observe\"\n[[source]]\naddress = \"192.0.2.1\"\ninsecure = true\n[[source]]\naddress = \"192.0.2.1\"\ninsecure = true\n",
                Some(6),
                "listed twice",
            ),
            (
                "[[server]]\nlisten = \"127.0.0.1:1\"\n[nts]\nkey-dir = \"/x\"\nfleet-secret = \"/y\"\n",
                None,
                "not both",
            ),
            (
                "[[server]]\nlisten = \"127.0.0.1:1\"\n[nts]\nkey-dir = \"/x\"\nretention = 10\n",
                Some(5),
                "retention must be",
            ),
            (
                "[[server]]\nlisten = \"127.0.0.1:1\"\n[nts]\nkey-dir = \"/x\"\n[[nts-ke-server]]\nlisten = \"127.0.0.1:4460\"\ncertificate-chain = \"c\"\nprivate-key = \"k\"\nntp-server = \"\"\n",
                Some(9),
                "ntp-server must be",
            ),
            (
                "[[server]]\nlisten = \"127.0.0.1:1\"\n[nts]\nkey-dir = \"/x\"\n[[nts-ke-server]]\nlisten = \"127.0.0.1:4460\"\ncertificate-chain = \"c\"\nprivate-key = \"k\"\nntp-port = 0\n",
                Some(9),
                "ntp-port must be",
            ),
            (
                "[[server]]\nlisten = \"127.0.0.1:1\"\nrate-limit = { interval = 0, burst = 1 }\n",
                Some(3),
                "rate-limit needs",
            ),
            (
                "[[server]]\nlisten = \"127.0.0.1:1\"\nallow = [\n  \"127.0.0.0/8\",\n  \"10.0.0.0/33\",\n]\n",
                Some(5),
                "allow: \"10.0.0.0/33\": the prefix must be 0 to 32",
            ),
            (
                "[[server]]\nlisten = \"127.0.0.1:1\"\ndeny = [\"::1/129\"]\n",
                Some(3),
                "deny: \"::1/129\"",
            ),
            (
                "[[server]]\nlisten = \"127.0.0.1:1\"\n\ndeny = [\"garbage\"]\n",
                Some(4),
                "deny: \"garbage\" is not",
            ),
            (
                "[[server]]\nlisten = \"127.0.0.1:1\"\ndeny-action = \"reply\"\n",
                Some(3),
                "unknown variant",
            ),
        ];
        for (text, line, message) in cases {
            let err = Config::parse("c.toml", text).unwrap_err();
            assert_eq!(err.line, line, "{text:?}: {err}");
            assert!(err.message.contains(message), "{text:?}: {err}");
            assert!(err.to_string().starts_with("c.toml"), "{err}");
        }
    }

    /// A `[[peer]]` needs a clock, a server socket and a key (or `insecure = true`
    /// said outright); NTS and a second listing are refused.
    #[test]
    fn peers_are_checked() {
        let base = "[clock]\nmode = \"observe\"\n[[server]]\nlisten = \"127.0.0.1:1\"\n";
        let ok = format!("{base}[[peer]]\naddress = \"192.0.2.7\"\nkey = 2\n");
        let c = Config::parse("c.toml", &ok).unwrap();
        assert_eq!(c.peers[0].get_ref().key, Some(2));
        assert_eq!(c.servers[0].unknown_peers, UnknownPeers::Reply);
        let insecure = format!("{base}[[peer]]\naddress = \"192.0.2.7\"\ninsecure = true\n");
        assert!(Config::parse("c.toml", &insecure).is_ok());
        let cases = [
            (format!("{base}[[peer]]\naddress = \"192.0.2.7\"\n"), "needs key = N"),
            (
                format!("{base}[[peer]]\naddress = \"192.0.2.7\"\nkey = 1\ninsecure = true\n"),
                "not both",
            ),
            (
                format!("{base}[[peer]]\naddress = \"192.0.2.7\"\nnts = {{ ke = \"x\" }}\n"),
                "NTS is not defined",
            ),
            (format!("{ok}[[peer]]\naddress = \"192.0.2.7:123\"\nkey = 2\n"), "listed twice"),
            (
                "[clock]\nmode = \"observe\"\n[[peer]]\naddress = \"192.0.2.7\"\nkey = 2\n".into(),
                "needs a [[server]]",
            ),
            (
                "[[server]]\nlisten = \"127.0.0.1:1\"\n[[peer]]\naddress = \"192.0.2.7\"\nkey = 2\n".into(),
                "needs a [clock]",
            ),
            (
                format!("{base}[[peer]]\naddress = \"192.0.2.7\"\nkey = 2\nmin-poll = 30\n"),
                "min-poll",
            ),
        ];
        for (text, message) in cases {
            let err = Config::parse("c.toml", &text).unwrap_err();
            assert!(err.message.contains(message), "{text:?}: {err}");
            assert!(err.line.is_some(), "{text:?}: {err}");
        }
        let drop = base.replace(
            "listen = \"127.0.0.1:1\"\n",
            "listen = \"127.0.0.1:1\"\nunknown-peers = \"drop\"\n",
        );
        let c = Config::parse(
            "c.toml",
            &format!("{drop}[[peer]]\naddress = \"h\"\nkey = 2\n"),
        )
        .unwrap();
        assert_eq!(c.servers[0].unknown_peers, UnknownPeers::Drop);
    }

    /// `[[refclock]]`: defaults filled in, every bad value refused with its line, and
    /// `authenticated = true` required in so many words.
    #[test]
    fn refclocks_are_checked() {
        let base = "[clock]\nmode = \"observe\"\n[[server]]\nlisten = \"127.0.0.1:1\"\n";
        let shm =
            "[[refclock]]\ndriver = \"shm\"\nunit = 2\nrefid = \"GPS\"\nauthenticated = true\n";
        let sock = "[[refclock]]\ndriver = \"sock\"\npath = \"/run/ntimed/gps.sock\"\nrefid = \"NMEA\"\n\
                    offset = 0.1\ndelay = 0.2\nprecision = 1e-3\npoll = 3\nauthenticated = true\n";
        let c = Config::parse("c.toml", &format!("{base}{shm}{sock}")).unwrap();
        let (first, second) = (c.refclocks[0].get_ref(), c.refclocks[1].get_ref());
        assert_eq!(first.name(), "refclock GPS shm:2");
        assert_eq!(
            first.options(),
            crate::refclock::RefclockOptions {
                refid: *b"GPS\0",
                ..Default::default()
            }
        );
        assert_eq!(second.name(), "refclock NMEA sock:/run/ntimed/gps.sock");
        let options = second.options();
        assert_eq!(
            (
                options.offset,
                options.delay,
                options.precision,
                options.poll
            ),
            (0.1, 0.2, 1e-3, 3)
        );
        let only = format!("[clock]\nmode = \"observe\"\n{shm}");
        assert!(
            Config::parse("c.toml", &only).is_ok(),
            "a refclock alone is something to run"
        );
        let cases = [
            (
                shm.replace("authenticated = true\n", ""),
                "authenticated = true",
            ),
            (
                shm.replace("authenticated = true", "authenticated = false"),
                "authenticated = true",
            ),
            (
                shm.replace("\"GPS\"", "\"GPSPPS\""),
                "1 to 4 printable ASCII",
            ),
            (shm.replace("\"GPS\"", "\"\""), "1 to 4 printable ASCII"),
            (shm.replace("unit = 2\n", ""), "takes unit = N"),
            (
                shm.replace("unit = 2\n", "unit = 2\npath = \"/x\"\n"),
                "takes unit = N",
            ),
            (
                shm.replace("unit = 2", "unit = 256"),
                "unit must be 0 to 255",
            ),
            (
                sock.replace("path = \"/run/ntimed/gps.sock\"\n", ""),
                "takes path",
            ),
            (
                sock.replace("path = \"/run/ntimed/gps.sock\"", "path = \"/\""),
                "socket file",
            ),
            (
                sock.replace("offset = 0.1", "offset = nan"),
                "offset must be",
            ),
            (sock.replace("delay = 0.2", "delay = -1"), "delay must be"),
            (
                sock.replace("precision = 1e-3", "precision = 0"),
                "precision must be",
            ),
            (sock.replace("poll = 3", "poll = 11"), "poll must be"),
            (format!("{shm}{shm}"), "listed twice"),
        ];
        for (refclock, message) in cases {
            let text = format!("{base}{refclock}");
            let err = Config::parse("c.toml", &text).unwrap_err();
            assert!(err.message.contains(message), "{text:?}: {err}");
            assert!(err.line.is_some(), "{text:?}: {err}");
        }
        let no_clock = format!("[[server]]\nlisten = \"127.0.0.1:1\"\n{shm}");
        let err = Config::parse("c.toml", &no_clock).unwrap_err();
        assert!(err.message.contains("needs a [clock]"), "{err}");
        assert_eq!(err.line, Some(3));
        let wrong_driver = format!("{base}{}", shm.replace("\"shm\"", "\"nmea\""));
        assert!(Config::parse("c.toml", &wrong_driver).is_err());
    }

    /// `[[refclock]]` with `driver = "phc"` and `"pps"`: their options reach the
    /// settings, each option only on its driver, and a PPS `lock` must name another,
    /// non-PPS refclock; every fault has its line.
    #[test]
    fn phc_and_pps_refclocks_are_checked() {
        let base = "[clock]\nmode = \"observe\"\n";
        let phc = "[[refclock]]\ndriver = \"phc\"\ndevice = \"/dev/ptp0\"\nrefid = \"PHC\"\n\
                   utc-offset = 37\nmax-delay = 2e-4\nauthenticated = true\n";
        let nmea = "[[refclock]]\ndriver = \"shm\"\nunit = 0\nrefid = \"NMEA\"\nnoselect = true\n\
                    authenticated = true\n";
        let pps = "[[refclock]]\ndriver = \"pps\"\ndevice = \"/dev/pps0\"\nrefid = \"PPS\"\n\
                   lock = \"NMEA\"\nedge = \"clear\"\nmax-lock-age = 30\noffset = 0.01\n\
                   authenticated = true\n";
        let c = Config::parse("c.toml", &format!("{base}{phc}{nmea}{pps}")).unwrap();
        let (p, n, q) = (
            c.refclocks[0].get_ref(),
            c.refclocks[1].get_ref(),
            c.refclocks[2].get_ref(),
        );
        assert_eq!(p.name(), "refclock PHC phc:/dev/ptp0");
        assert_eq!(
            p.phc_settings(),
            crate::refclock::phc::PhcSettings {
                utc_offset: 37,
                max_delay: 2e-4,
                precision: 1e-9,
            }
        );
        assert_eq!(p.options().precision, 1e-9, "a PHC is finer than 1 us");
        assert!(n.options().noselect && !p.options().noselect);
        assert_eq!(q.name(), "refclock PPS pps:/dev/pps0");
        assert_eq!(
            q.pps_settings(),
            crate::refclock::pps::PpsSettings {
                edge: crate::sys::PpsEdge::Clear,
                offset: 0.01,
                max_lock_age: 30.0,
                precision: 1e-6,
            }
        );
        assert_eq!(q.options().offset, 0.0, "the combiner applies it, once");
        let lockless = pps.replace("lock = \"NMEA\"\n", "");
        assert!(Config::parse("c.toml", &format!("{base}{lockless}")).is_ok());
        let cases = [
            (phc.replace("device = \"/dev/ptp0\"\n", ""), "takes device"),
            (phc.replace("device", "path"), "takes device"),
            (format!("{phc}unit = 0\n"), "takes device"),
            (phc.replace("\"/dev/ptp0\"", "\"\""), "device must name"),
            (
                phc.replace("utc-offset = 37", "utc-offset = -1"),
                "utc-offset must be",
            ),
            (
                phc.replace("max-delay = 2e-4", "max-delay = 0"),
                "max-delay must be",
            ),
            (
                format!("{phc}lock = \"NMEA\"\n"),
                "lock is only for driver = \"pps\"",
            ),
            (format!("{phc}{phc}"), "listed twice"),
            (
                format!("{nmea}edge = \"assert\"\n"),
                "edge is only for driver = \"pps\"",
            ),
            (
                format!("{pps}utc-offset = 37\n"),
                "utc-offset is only for driver = \"phc\"",
            ),
            (pps.to_string(), "not the refid of any"),
            (
                format!("{nmea}{}", pps.replace("\"NMEA\"\nedge", "\"PPS\"\nedge")),
                "names this refclock itself",
            ),
            (
                format!(
                    "{nmea}{pps}{}",
                    pps.replace("pps0", "pps1")
                        .replace("\"PPS\"", "\"PPS2\"")
                        .replace("\"NMEA\"", "\"PPS\"")
                ),
                "is a PPS refclock",
            ),
            (
                format!("{nmea}{}{pps}", nmea.replace("unit = 0", "unit = 1")),
                "more than one",
            ),
            (
                format!("{nmea}{}", pps.replace("offset = 0.01", "offset = 0.6")),
                "within ±0.5",
            ),
            (
                format!(
                    "{nmea}{}",
                    pps.replace("max-lock-age = 30", "max-lock-age = 0")
                ),
                "max-lock-age must be",
            ),
        ];
        for (refclock, message) in cases {
            let text = format!("{base}{refclock}");
            let err = Config::parse("c.toml", &text).unwrap_err();
            assert!(err.message.contains(message), "{text:?}: {err}");
            assert!(err.line.is_some(), "{text:?}: {err}");
        }
        let bad_edge = format!("{base}{nmea}{}", pps.replace("\"clear\"", "\"both\""));
        assert!(Config::parse("c.toml", &bad_edge).is_err());
    }

    /// `load_all` goes on past the first problem: a bad value, a duplicate listener and
    /// a missing key file are all reported, each with its file and line.
    #[test]
    fn load_all_reports_every_problem() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[keys]\nfile = \"missing.keys\"\n[local]\nstratum = 16\n\
             [[server]]\nlisten = \"127.0.0.1:1\"\n[[server]]\nlisten = \"127.0.0.1:1\"\n",
        )
        .unwrap();
        let mut problems = Vec::new();
        assert!(Config::load_all(&path, &mut problems).is_some());
        let found: Vec<_> = problems
            .iter()
            .map(|p| (p.line, p.message.split(':').next().unwrap_or_default()))
            .collect();
        assert_eq!(
            found,
            [
                (Some(4), "[local] stratum must be 1 to 15, not 16"),
                (Some(8), "127.0.0.1"),
                (None, "cannot open"),
            ],
            "{problems:?}"
        );
        assert!(problems[2].file.ends_with("missing.keys"));
        assert_eq!(Config::load(&path).unwrap_err(), problems[0]);
    }

    /// A key id that no key file holds is refused at load, with the line of the
    /// section naming it, for sources and peers alike.
    #[test]
    fn key_ids_must_be_in_the_key_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("k.keys");
        std::fs::write(&keys, "1 AES128 HEX:000102030405060708090a0b0c0d0e0f\n").unwrap();
        std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o600)).unwrap();
        let base = "[clock]\nmode = \"observe\"\n[[server]]\nlisten = \"127.0.0.1:1\"\n";
        let cases = [
            (
                "[keys]\nfile = \"k.keys\"\n",
                "[[source]]\naddress = \"h\"\nkey = 2\n",
                7,
                "source h: key 2 is not in the [keys] file",
            ),
            (
                "[keys]\nfile = \"k.keys\"\n",
                "[[peer]]\naddress = \"h\"\nkey = 3\n",
                7,
                "peer h: key 3 is not in the [keys] file",
            ),
            (
                "",
                "[[peer]]\naddress = \"h\"\nkey = 1\n",
                5,
                "peer h: key 1 needs a [keys] section",
            ),
        ];
        for (keys_section, entry, line, message) in cases {
            let path = dir.path().join("c.toml");
            std::fs::write(&path, format!("{keys_section}{base}{entry}")).unwrap();
            let err = Config::load(&path).unwrap_err();
            assert_eq!(err.line, Some(line), "{err}");
            assert!(err.message.starts_with(message), "{err}");
        }
    }
}

//! The control socket `ntimed ctl` talks to (ADVERSARIAL 32).
//!
//! A Unix stream socket; one request per connection: a line of at most
//! [`MAX_REQUEST`] bytes ending in `\n` (`status`, `sources`, `server` or `reload`,
//! optionally followed by ` json`), read within [`READ_TIMEOUT`]. The reply is text
//! (or one JSON object), and then the connection closes. At most [`MAX_CONNECTIONS`]
//! are served at once; more are closed at once. Who may connect is the socket file's
//! mode and group; `reload` is for root alone (the peer's uid from `SO_PEERCRED`).
//!
//! The client role's state is asked of the driver, which owns the coordinator, over a
//! bounded channel; the server counters are the servers' own atomics.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::config::Loaded;
use crate::coordinator::{AuthReport, Coordinator};
use crate::daemon::nts::KeStats;
use crate::daemon::reload::{RELOAD_TIMEOUT, ReloadRequest, Reloaded};
use crate::proto::server::{Server, SharedCookieKeys};
use crate::sync::SourceState;
use crate::wire::{Leap, NtpTimestamp};

/// Where the socket is when started as root without `[control] socket`.
pub const DEFAULT_SOCKET: &str = "/run/ntimed/ntimed.sock";
/// The longest request line, its `\n` included.
pub const MAX_REQUEST: usize = 256;
/// A request must arrive whole within this long.
pub const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections served at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 16;
/// How long the driver gets to answer a snapshot request.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(1);
const DEFAULT_MODE: u32 = 0o660;
const DEFAULT_GROUP: &str = "ntimed";

/// A snapshot request to the driver: it answers on the enclosed channel.
pub type SnapshotRequest = oneshot::Sender<Snapshot>;

/// `status`: the client role's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub synchronized: bool,
    pub stratum: u8,
    /// As a person reads it: an IPv4 address, or a code such as `LOCL` at stratum 1.
    pub reference_id: String,
    /// `none`, `add-second`, `delete-second` or `unsynchronized`.
    pub leap: String,
    /// The system poll interval, log2 seconds.
    pub poll: i8,
    /// The selected source's offset estimate and its error bound, seconds (none while
    /// no source is selected).
    pub offset: Option<f64>,
    pub offset_error: Option<f64>,
    pub frequency_ppm: f64,
    pub root_delay: f64,
    pub root_dispersion: f64,
}

/// `sources`: one row per source and peer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceRow {
    pub name: String,
    pub address: Option<String>,
    pub peer: bool,
    /// The reachability register (the table shows it in octal).
    pub reach: u8,
    pub poll: i8,
    pub nts_cookies: Option<usize>,
    pub samples: usize,
    pub reachable: bool,
    pub selected: bool,
    pub offset: Option<f64>,
    pub bound: Option<f64>,
    /// The round-trip delay of the last sample used, seconds.
    #[serde(default)]
    pub delay: Option<f64>,
    /// `nts`, `key` or `none`.
    #[serde(default)]
    pub auth: String,
    /// NTS: the AEAD algorithm of the last successful key exchange.
    #[serde(default)]
    pub aead: Option<String>,
    /// NTS: seconds since the last key exchange ended, and `ok` or why it failed.
    #[serde(default)]
    pub key_exchange_age: Option<f64>,
    #[serde(default)]
    pub key_exchange_result: Option<String>,
    /// Keyed: the key id (never the key).
    #[serde(default)]
    pub key_id: Option<u32>,
    /// Reference clocks: readings dropped as bad input, and why the last one was.
    #[serde(default)]
    pub drops: Option<u64>,
    #[serde(default)]
    pub last_drop: Option<String>,
    /// `reference`, `selectable`, `falseticker`, `unreachable` or `refused`.
    #[serde(default)]
    pub state: String,
    /// Why, for `falseticker` and `refused`.
    #[serde(default)]
    pub why: Option<String>,
}

/// `sources json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sources {
    pub sources: Vec<SourceRow>,
}

/// What the driver sends back: both replies' data, taken at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub status: Status,
    pub sources: Vec<SourceRow>,
}

/// `server`: the counters of every `[[server]]`, summed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerCounters {
    pub answered: Answered,
    pub nts_naks: u64,
    pub crypto_naks: u64,
    pub rate_kisses: u64,
    pub rate_limited: u64,
    pub deny_kisses: u64,
    pub dropped: Dropped,
    #[serde(default)]
    pub nts_ke: KeCounters,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Answered {
    pub plain: u64,
    pub keyed: u64,
    pub nts: u64,
    /// Of `plain` and `keyed`: answers to unconfigured symmetric peers.
    #[serde(default)]
    pub peer: u64,
    /// Of all three: answers in interleaved mode (RFC 9769).
    #[serde(default)]
    pub interleaved: u64,
    /// Replies whose transmit time the kernel reported, for interleaved answers.
    #[serde(default)]
    pub kernel_transmit_times: u64,
}

/// The counters of every `[[nts-ke-server]]`, summed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KeCounters {
    /// `[[nts-ke-server]]`s running.
    pub servers: usize,
    /// Exchanges answered with keys and cookies.
    pub completed: u64,
    pub failed: KeFailures,
    /// Exchanges in progress now.
    pub in_progress: u64,
    /// The epoch whose master key seals new cookies (its number, never the key).
    pub cookie_key_epoch: Option<u32>,
}

/// Why NTS-KE connections ended without keys. `evicted` counts the evictions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KeFailures {
    pub tls: u64,
    pub bad_request: u64,
    pub timeout: u64,
    pub evicted: u64,
    pub refused: u64,
    pub io: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Dropped {
    pub malformed: u64,
    pub refused: u64,
    pub auth_failed: u64,
    /// Refused by the access list (and not kissed).
    pub denied: u64,
    /// Neither a MAC nor NTS, under `require-auth`.
    pub unauthenticated: u64,
}

/// Built by the driver, from the coordinator it owns.
pub fn snapshot(coordinator: &Coordinator, now: f64, local: NtpTimestamp) -> Snapshot {
    let state = coordinator.sync_state(now, local);
    let sources: Vec<SourceRow> = coordinator
        .report(now)
        .into_iter()
        .map(|r| {
            let (auth, aead, key_exchange, key_id) = match r.auth {
                AuthReport::None => ("none", None, None, None),
                AuthReport::Configured => ("trusted", None, None, None),
                AuthReport::Key { id } => ("key", None, None, Some(id)),
                AuthReport::Nts {
                    aead,
                    last_key_exchange,
                } => ("nts", aead, last_key_exchange, None),
            };
            SourceRow {
                name: r.name,
                address: r.address.map(|a| a.to_string()),
                peer: r.peer,
                reach: r.reach,
                poll: r.poll,
                nts_cookies: r.nts_cookies,
                samples: r.engine.samples,
                reachable: r.engine.reachable,
                selected: r.engine.selected,
                offset: r.engine.offset,
                bound: r.engine.bound,
                delay: r.engine.delay,
                auth: auth.into(),
                aead: aead.map(str::to_string),
                key_exchange_age: key_exchange.as_ref().map(|k| k.age),
                key_exchange_result: key_exchange
                    .map(|k| k.error.unwrap_or_else(|| "ok".to_string())),
                key_id,
                drops: r.drops.map(|(count, _)| count),
                last_drop: r
                    .drops
                    .and_then(|(_, last)| last)
                    .map(|why| why.to_string()),
                state: r.engine.state.name().into(),
                why: r.engine.why,
            }
        })
        .collect();
    // The reference's estimate: the one the clock follows (any selected one before the
    // first reference is chosen).
    let selected = sources
        .iter()
        .find(|s| s.state == SourceState::Reference.name())
        .or_else(|| sources.iter().find(|s| s.selected));
    Snapshot {
        status: Status {
            synchronized: coordinator.is_synchronized(),
            stratum: state.stratum,
            // Unsynchronized (stratum 16), the id is a code such as INIT, as at stratum 0.
            reference_id: state.reference_id.describe(if state.stratum >= 16 {
                0
            } else {
                state.stratum
            }),
            leap: leap_name(state.leap).into(),
            poll: coordinator.poll_interval(),
            offset: selected.and_then(|s| s.offset),
            offset_error: selected.and_then(|s| s.bound),
            frequency_ppm: coordinator.frequency_ppm(),
            root_delay: state.root_delay,
            root_dispersion: state.root_dispersion,
        },
        sources,
    }
}

fn leap_name(leap: Leap) -> &'static str {
    match leap {
        Leap::NoWarning => "none",
        Leap::AddSecond => "add-second",
        Leap::DeleteSecond => "delete-second",
        Leap::Unsynchronized => "unsynchronized",
    }
}

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Query {
    Status,
    Sources,
    Server,
    Reload,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub query: Query,
    pub json: bool,
}

impl Query {
    pub fn parse(word: &str) -> Option<Self> {
        match word {
            "status" => Some(Self::Status),
            "sources" => Some(Self::Sources),
            "server" => Some(Self::Server),
            "reload" => Some(Self::Reload),
            _ => None,
        }
    }

    pub fn word(self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::Sources => "sources",
            Self::Server => "server",
            Self::Reload => "reload",
        }
    }
}

/// Parses a request line (its `\n` included, or not).
pub fn parse_request(line: &[u8]) -> Result<Request, &'static str> {
    if line.len() > MAX_REQUEST {
        return Err("request too long");
    }
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let text = std::str::from_utf8(line).map_err(|_| "request is not UTF-8")?;
    let mut words = text.split_ascii_whitespace();
    let query = words
        .next()
        .ok_or("empty request")
        .and_then(|w| Query::parse(w).ok_or("unknown request (status, sources, server, reload)"))?;
    let json = match words.next() {
        None => false,
        Some("json") => true,
        Some(_) => return Err("the only option is json"),
    };
    if words.next().is_some() {
        return Err("too many words");
    }
    Ok(Request { query, json })
}

/// Where and how the control socket is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub path: PathBuf,
    pub mode: u32,
    /// The group it is given; `None` leaves the creator's.
    pub group: Option<u32>,
}

/// The control socket `loaded` asks for, if any: `[control]` if present (unless
/// `enabled = false`), else [`DEFAULT_SOCKET`] when `default_on` (started as root).
/// Errors for a mode beyond the permission bits or a group that does not exist.
pub fn settings(loaded: &Loaded, default_on: bool) -> Result<Option<Settings>, String> {
    let section = loaded.config.control.as_ref();
    if !section.map_or(default_on, |s| s.enabled) {
        return Ok(None);
    }
    let mode = section.and_then(|s| s.mode).unwrap_or(DEFAULT_MODE);
    if mode > 0o777 {
        return Err(format!(
            "[control] mode {mode:#o} is more than the permission bits (0o777)"
        ));
    }
    let lookup = |name: &str| {
        crate::sys::lookup_group(name).map_err(|e| format!("[control] group {name:?}: {e}"))
    };
    let group = match section.and_then(|s| s.group.as_deref()) {
        Some(name) => Some(lookup(name)?.ok_or_else(|| format!("[control] no group {name:?}"))?),
        None if default_on => Some(lookup(DEFAULT_GROUP)?.unwrap_or(0)),
        None => None,
    };
    let path = section
        .and_then(|s| s.socket.as_ref())
        .map_or_else(|| PathBuf::from(DEFAULT_SOCKET), |p| loaded.path(p));
    Ok(Some(Settings { path, mode, group }))
}

/// Binds the control socket `loaded` asks for, if any (see [`settings`]). A stale
/// socket file is removed; anything else at the path, or a socket a running daemon
/// answers on, stops the start. The socket is created owner-only, then given its group
/// and mode, so nobody else can connect before they are in force.
pub fn bind(
    loaded: &Loaded,
    default_on: bool,
) -> Result<Option<std::os::unix::net::UnixListener>, String> {
    let Some(settings) = settings(loaded, default_on)? else {
        return Ok(None);
    };
    bind_at(&settings)
        .map(Some)
        .map_err(|e| format!("control socket {}: {e}", settings.path.display()))
}

fn bind_at(settings: &Settings) -> Result<std::os::unix::net::UnixListener, String> {
    let Settings { path, mode, group } = settings;
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(parent) = parent.filter(|p| !p.exists()) {
        std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
        std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| e.to_string())?;
    }
    remove_stale(path)?;
    let previous = crate::sys::set_umask(0o177);
    let bound = std::os::unix::net::UnixListener::bind(path);
    crate::sys::set_umask(previous);
    let listener = bound.map_err(|e| e.to_string())?;
    if let Some(gid) = group {
        std::os::unix::fs::chown(path, None, Some(*gid)).map_err(|e| e.to_string())?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(*mode))
        .map_err(|e| e.to_string())?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    Ok(listener)
}

/// Removes what a daemon that did not stop cleanly left at `path`: only a socket, and
/// only one nobody answers on.
fn remove_stale(path: &Path) -> Result<(), String> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err("exists and is not a socket; not removing it".into());
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err("a running daemon answers on it".into());
    }
    std::fs::remove_file(path).map_err(|e| format!("removing the stale socket: {e}"))
}

/// What the control server answers from.
pub struct Control {
    /// The driver, when there is a client role.
    pub snapshots: Option<mpsc::Sender<SnapshotRequest>>,
    /// The `[local]` stratum, for `status` without a client role.
    pub local_stratum: Option<u8>,
    pub servers: Vec<Arc<Server>>,
    /// Every `[[nts-ke-server]]`'s counters.
    pub ke_servers: Vec<Arc<KeStats>>,
    /// For the epoch in use (the keys never leave their lock here).
    pub cookie_keys: Option<SharedCookieKeys>,
    /// The reloader, which answers `reload` (none in the demo).
    pub reloads: Option<mpsc::Sender<ReloadRequest>>,
}

/// Serves `listener` until the task is aborted.
pub fn spawn(
    listener: std::os::unix::net::UnixListener,
    control: Arc<Control>,
) -> std::io::Result<JoinHandle<()>> {
    let listener = tokio::net::UnixListener::from_std(listener)?;
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    Ok(tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors, say: wait rather than spin.
                    tracing::debug!("control socket: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                continue;
            };
            let control = control.clone();
            tokio::spawn(async move {
                control.serve(stream).await;
                drop(permit);
            });
        }
    }))
}

/// Reads one request line: `None` if it is incomplete (the peer stopped sending).
async fn read_request(stream: &mut UnixStream) -> std::io::Result<Option<Vec<u8>>> {
    let limited = (&mut *stream).take(MAX_REQUEST as u64);
    let mut reader = BufReader::with_capacity(MAX_REQUEST, limited);
    let mut line = Vec::with_capacity(MAX_REQUEST);
    reader.read_until(b'\n', &mut line).await?;
    Ok(line.ends_with(b"\n").then_some(line))
}

impl Control {
    async fn serve(&self, mut stream: UnixStream) {
        let uid = stream.peer_cred().ok().map(|c| c.uid());
        let reply = match tokio::time::timeout(READ_TIMEOUT, read_request(&mut stream)).await {
            // Too slow: nothing more for it.
            Err(_) | Ok(Err(_)) => return,
            Ok(Ok(None)) => "error: a request is one line of at most 256 bytes\n".to_string(),
            Ok(Ok(Some(line))) => match parse_request(&line) {
                Ok(request) => self.answer(request, uid).await,
                Err(e) => format!("error: {e}\n"),
            },
        };
        let _ = tokio::time::timeout(READ_TIMEOUT, async {
            stream.write_all(reply.as_bytes()).await?;
            stream.shutdown().await
        })
        .await;
    }

    async fn answer(&self, request: Request, uid: Option<u32>) -> String {
        let json = request.json;
        let encoded = match request.query {
            Query::Reload => {
                return match uid {
                    Some(0) => match self.reload().await {
                        Ok(done) => reply(&done, json, |done| format!("{done}\n"))
                            .unwrap_or_else(|e| format!("error: {e}\n")),
                        Err(e) => format!("error: {e}\n"),
                    },
                    Some(uid) => format!("error: reload is for root only (you are uid {uid})\n"),
                    None => "error: reload is for root only\n".into(),
                };
            }
            Query::Server => {
                let counters = self.server_counters();
                reply(&counters, json, render_server)
            }
            Query::Status | Query::Sources => match self.snapshot().await {
                Err(e) => Err(e.to_string()),
                Ok(snapshot) if request.query == Query::Status => {
                    reply(&snapshot.status, json, render_status)
                }
                Ok(snapshot) => reply(
                    &Sources {
                        sources: snapshot.sources,
                    },
                    json,
                    render_sources,
                ),
            },
        };
        encoded.unwrap_or_else(|e| format!("error: {e}\n"))
    }

    async fn reload(&self) -> Result<Reloaded, String> {
        let reloads = self
            .reloads
            .as_ref()
            .ok_or("there is nothing to reload here")?;
        let (tx, rx) = oneshot::channel();
        reloads
            .try_send(tx)
            .map_err(|_| "a reload is in progress; try again")?;
        match tokio::time::timeout(RELOAD_TIMEOUT + SNAPSHOT_TIMEOUT, rx).await {
            Ok(Ok(result)) => result,
            _ => Err("the reload did not finish".into()),
        }
    }

    /// The client role's state, asked of the driver (both `ctl` and `/metrics` read it
    /// here).
    pub async fn snapshot(&self) -> Result<Snapshot, &'static str> {
        let Some(snapshots) = &self.snapshots else {
            let (stratum, reference_id, leap) = match self.local_stratum {
                Some(stratum) => (stratum, "LOCL", Leap::NoWarning),
                None => (16, "INIT", Leap::Unsynchronized),
            };
            return Ok(Snapshot {
                status: Status {
                    synchronized: false,
                    stratum,
                    reference_id: reference_id.into(),
                    leap: leap_name(leap).into(),
                    poll: 0,
                    offset: None,
                    offset_error: None,
                    frequency_ppm: 0.0,
                    root_delay: 0.0,
                    root_dispersion: 0.0,
                },
                sources: Vec::new(),
            });
        };
        let (tx, rx) = oneshot::channel();
        snapshots
            .try_send(tx)
            .map_err(|_| "the client role is busy; try again")?;
        match tokio::time::timeout(SNAPSHOT_TIMEOUT, rx).await {
            Ok(Ok(snapshot)) => Ok(snapshot),
            _ => Err("the client role did not answer"),
        }
    }

    /// The servers' counters, summed over every `[[server]]` and `[[nts-ke-server]]`.
    pub fn server_counters(&self) -> ServerCounters {
        let mut c = ServerCounters {
            nts_ke: self.ke_counters(),
            ..ServerCounters::default()
        };
        for server in &self.servers {
            let s = &server.stats;
            let get = |n: &AtomicU64| n.load(Ordering::Relaxed);
            c.answered.plain += get(&s.plain);
            c.answered.keyed += get(&s.keyed);
            c.answered.nts += get(&s.nts);
            c.answered.peer += get(&s.peer);
            c.answered.interleaved += get(&s.interleaved);
            c.answered.kernel_transmit_times += get(&s.kernel_transmit_times);
            c.nts_naks += get(&s.nts_naks_sent);
            c.crypto_naks += get(&s.crypto_naks_sent);
            c.rate_kisses += get(&s.rate_kisses_sent);
            c.rate_limited += get(&s.rate_limited);
            c.deny_kisses += get(&s.deny_kisses_sent);
            c.dropped.malformed += get(&s.malformed);
            c.dropped.refused += get(&s.refused);
            c.dropped.auth_failed += get(&s.auth_failed);
            c.dropped.denied += get(&s.denied);
            c.dropped.unauthenticated += get(&s.unauthenticated_dropped);
        }
        c
    }

    fn ke_counters(&self) -> KeCounters {
        let mut c = KeCounters {
            servers: self.ke_servers.len(),
            cookie_key_epoch: self.cookie_keys.as_ref().map(|keys| {
                keys.read()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .current_epoch()
            }),
            ..KeCounters::default()
        };
        let get = |n: &AtomicU64| n.load(Ordering::Relaxed);
        for s in &self.ke_servers {
            c.completed += get(&s.completed);
            c.in_progress += get(&s.in_progress);
            c.failed.tls += get(&s.tls_failed);
            c.failed.bad_request += get(&s.bad_request);
            c.failed.timeout += get(&s.timed_out);
            c.failed.evicted += get(&s.evicted);
            c.failed.refused += get(&s.refused);
            c.failed.io += get(&s.io_failed);
        }
        c
    }
}

/// One JSON object on a line, or the table `render` makes of it.
fn reply<T: Serialize>(value: &T, json: bool, render: fn(&T) -> String) -> Result<String, String> {
    if json {
        serde_json::to_string(value)
            .map(|s| s + "\n")
            .map_err(|e| e.to_string())
    } else {
        Ok(render(value))
    }
}

fn seconds(value: Option<f64>) -> String {
    value.map_or_else(|| "-".into(), |v| format!("{:+.6}", v))
}

/// `status` as a person reads it.
pub fn render_status(s: &Status) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<16}{v}\n"));
    line(
        "synchronized",
        if s.synchronized { "yes" } else { "no" }.into(),
    );
    line("stratum", s.stratum.to_string());
    line("reference", s.reference_id.clone());
    line(
        "offset",
        match (s.offset, s.offset_error) {
            (Some(o), Some(e)) => format!("{o:+.6} s ± {e:.6} s"),
            (o, _) => format!("{} s", seconds(o)),
        },
    );
    line("frequency", format!("{:+.3} ppm", s.frequency_ppm));
    line("root delay", format!("{:.6} s", s.root_delay));
    line("root dispersion", format!("{:.6} s", s.root_dispersion));
    line("leap", s.leap.clone());
    line("poll", format!("2^{} s", s.poll));
    out
}

/// `sources` as a table: one row per source; the last column says why a source is
/// not used and how its NTS key exchange went.
pub fn render_sources(s: &Sources) -> String {
    let mut out = format!(
        "{:<28} {:<22} {:<11} {:<6} {:>5} {:>4} {:>7} {:>7} {:>10} {:>10}  {}\n",
        "name",
        "address",
        "state",
        "auth",
        "reach",
        "poll",
        "cookies",
        "samples",
        "offset",
        "bound",
        "notes"
    );
    for r in &s.sources {
        let auth = match (r.auth.as_str(), r.key_id) {
            ("key", Some(id)) => format!("key {id}"),
            (auth, _) => auth.to_string(),
        };
        out.push_str(&format!(
            "{:<28} {:<22} {:<11} {:<6} {:>5o} {:>4} {:>7} {:>7} {:>10} {:>10}  {}\n",
            r.name,
            r.address.as_deref().unwrap_or("-"),
            r.state,
            auth,
            r.reach,
            r.poll,
            r.nts_cookies.map_or_else(|| "-".into(), |n| n.to_string()),
            r.samples,
            seconds(r.offset),
            r.bound.map_or_else(|| "-".into(), |b| format!("{b:.6}")),
            notes(r),
        ));
    }
    out
}

/// `why`, then for NTS the AEAD and the last key exchange: `-` if there is nothing.
fn notes(r: &SourceRow) -> String {
    let mut notes: Vec<String> = r.why.iter().cloned().collect();
    if let Some(aead) = &r.aead {
        notes.push(aead.clone());
    }
    match (r.key_exchange_age, r.key_exchange_result.as_deref()) {
        (Some(age), Some("ok")) => notes.push(format!("NTS-KE ok {age:.0} s ago")),
        (Some(age), Some(error)) => notes.push(format!("NTS-KE failed {age:.0} s ago: {error}")),
        _ => {}
    }
    match (r.drops, &r.last_drop) {
        (Some(count), Some(last)) if count > 0 => {
            notes.push(format!("{count} readings dropped, last: {last}"));
        }
        (Some(count), _) if count > 0 => notes.push(format!("{count} readings dropped")),
        _ => {}
    }
    if notes.is_empty() {
        "-".into()
    } else {
        notes.join("; ")
    }
}

/// `server` as a person reads it.
pub fn render_server(c: &ServerCounters) -> String {
    format!(
        "answered        plain {} / keyed {} / NTS {} (peers {}, interleaved {})\n\
         transmit times  {} from the kernel\n\
         NTS NAKs (NTSN) {}\n\
         crypto-NAKs     {}\n\
         RATE kisses     {}\n\
         rate-limited    {}\n\
         DENY kisses     {}\n\
         dropped         malformed {} / refused {} / authentication failed {}\n\
         \x20               denied {} / unauthenticated {}\n\
         {}",
        c.answered.plain,
        c.answered.keyed,
        c.answered.nts,
        c.answered.peer,
        c.answered.interleaved,
        c.answered.kernel_transmit_times,
        c.nts_naks,
        c.crypto_naks,
        c.rate_kisses,
        c.rate_limited,
        c.deny_kisses,
        c.dropped.malformed,
        c.dropped.refused,
        c.dropped.auth_failed,
        c.dropped.denied,
        c.dropped.unauthenticated,
        render_ke(&c.nts_ke),
    )
}

fn render_ke(k: &KeCounters) -> String {
    if k.servers == 0 {
        return "NTS-KE          not serving\n".into();
    }
    let f = &k.failed;
    format!(
        "NTS-KE          completed {} / in progress {} / cookie key epoch {}\n\
         NTS-KE failed   TLS {} / bad request {} / timeout {} / evicted {} / refused {} / I/O {}\n",
        k.completed,
        k.in_progress,
        k.cookie_key_epoch
            .map_or_else(|| "-".into(), |e| e.to_string()),
        f.tls,
        f.bad_request,
        f.timeout,
        f.evicted,
        f.refused,
        f.io,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse() {
        let ok = |line: &[u8], query, json| {
            assert_eq!(parse_request(line), Ok(Request { query, json }), "{line:?}");
        };
        ok(b"status\n", Query::Status, false);
        ok(b"status json\n", Query::Status, true);
        ok(b"sources\n", Query::Sources, false);
        ok(b"server json", Query::Server, true);
        ok(b"reload\n", Query::Reload, false);
        ok(b"  status   json \r\n", Query::Status, true);
    }

    #[test]
    fn bad_requests_are_refused() {
        for line in [
            &b"\n"[..],
            b"",
            b"stats\n",
            b"status xml\n",
            b"status json json\n",
            b"\xff\xfe\n",
            b"STATUS\n",
            b"status\0\n",
        ] {
            assert!(parse_request(line).is_err(), "{line:?}");
        }
        let long = [b'a'; MAX_REQUEST + 1];
        assert_eq!(parse_request(&long), Err("request too long"));
    }
}

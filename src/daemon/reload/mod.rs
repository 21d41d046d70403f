//! Reload without restart: SIGHUP or `ntimed ctl reload` re-reads the key file, the
//! NTS-KE certificates and keys, the fleet secret and the leap-seconds file, and swaps
//! them in whole.
//!
//! * [`material`]: reading the files, and checking what was read;
//! * [`codec`]: the frames by which the supervisor hands them to the sandboxed engine.
//!
//! The engine cannot read the files once chrooted, so under privilege separation it
//! asks the supervisor (a `Fetch`), which reads and checks them as root and sends them
//! (a `Material`, or `Refused` with the reason); on SIGHUP the supervisor sends them
//! unasked. The engine checks them again, then swaps: new NTP requests and new NTS-KE
//! connections see the new material at once, and exchanges in progress finish with
//! the old. A file that fails any check keeps every old one: nothing is half-applied.
//! What the configuration file itself says (sources, servers, peers, paths) is not
//! re-read; that needs a restart.

pub mod codec;
mod material;

use std::os::unix::net::UnixStream as StdUnixStream;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

pub use material::{Checked, Material};

use self::codec::Frame;
use crate::auth::KeyStore;
use crate::auth::nts::cookie::CookieKeys;
use crate::config::Loaded;
use crate::daemon::leap::SharedLeapFile;
use crate::daemon::nts::SharedTls;
use crate::proto::server::{Server, SharedCookieKeys};

/// How long a reload may take before `ctl reload` is told it failed.
pub const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the client role's driver gets to take new keys.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);

/// A reload asked for by `ctl reload`: answered with what was reloaded, or why not.
pub type ReloadRequest = oneshot::Sender<Result<Reloaded, String>>;

/// What a reload swapped in (`ctl reload --json` prints it as is).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Reloaded {
    /// What was swapped in, such as `key file (3 keys)` or `1 certificate(s)`.
    pub reloaded: Vec<String>,
    /// Problems that did not stop it, such as a certificate that expires soon.
    pub warnings: Vec<String>,
}

impl std::fmt::Display for Reloaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.reloaded.is_empty() {
            true => write!(
                f,
                "reloaded: nothing (no key file, certificate, fleet secret or leap file)"
            )?,
            false => write!(f, "reloaded: {}", self.reloaded.join(", "))?,
        }
        for warning in &self.warnings {
            write!(f, "\nwarning: {warning}")?;
        }
        Ok(())
    }
}

/// Where new material is swapped in.
pub struct Targets {
    pub servers: Vec<Arc<Server>>,
    /// One per `[[nts-ke-server]]`, in config order.
    pub ke_tls: Vec<SharedTls>,
    pub cookie_keys: Option<SharedCookieKeys>,
    /// The client role's driver, which hands new keys to keyed sources and peers.
    pub client_keys: Option<mpsc::Sender<KeyStore>>,
    pub leap_file: SharedLeapFile,
}

impl Targets {
    /// Swaps in everything `checked` holds and says what that was.
    pub async fn apply(&self, checked: Checked) -> Reloaded {
        let mut done = Vec::new();
        let mut warnings = checked.warnings;
        if let Some(keys) = checked.keys {
            for server in &self.servers {
                server.replace_keys(keys.clone());
            }
            if let Some(client) = &self.client_keys {
                // The driver takes it between two wake-ups; it is gone only at a stop.
                if client
                    .send_timeout(keys.clone(), CLIENT_TIMEOUT)
                    .await
                    .is_err()
                {
                    warnings.push(
                        "keyed sources and peers keep their old keys: the client role did not \
                         take the new ones (try the reload again)"
                            .into(),
                    );
                }
            }
            done.push(format!("key file ({} keys)", keys.len()));
        }
        let certificates = checked.tls.len();
        for (shared, tls) in self.ke_tls.iter().zip(checked.tls) {
            shared.store(tls);
        }
        if certificates > 0 {
            done.push(format!("{certificates} certificate(s)"));
        }
        if let (Some(secret), Some(shared)) = (&checked.fleet_secret, &self.cookie_keys) {
            let mut keys = shared
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            // Checked already: only a secret that passed `CookieKeys::fleet` gets here.
            if let Ok(mut fresh) = CookieKeys::fleet(keys.rotation(), secret) {
                fresh.update(unix_now(), &mut rand::rng());
                *keys = fresh;
                done.push("fleet secret".into());
            }
        }
        if let Some(file) = checked.leap_file {
            self.leap_file.store(Some(Arc::new(file)));
            done.push("leap-seconds file".into());
        }
        Reloaded {
            reloaded: done,
            warnings,
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Where the engine gets new material from.
pub enum Origin {
    /// It reads the files itself (one unprivileged process).
    Files,
    /// It asks the supervisor over this link.
    Supervisor(StdUnixStream),
}

/// Serves reloads until the task is aborted: requests from `ctl reload`, SIGHUP, and
/// material the supervisor sends unasked.
pub fn spawn(
    origin: Origin,
    loaded: Loaded,
    targets: Targets,
    requests: mpsc::Receiver<ReloadRequest>,
) -> std::io::Result<JoinHandle<()>> {
    let reloader = Reloader {
        loaded,
        targets,
        requests,
        hangup: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok(),
    };
    Ok(match origin {
        Origin::Files => tokio::spawn(reloader.serve_reading_files()),
        Origin::Supervisor(link) => {
            link.set_nonblocking(true)?;
            let link = tokio::net::UnixStream::from_std(link)?;
            tokio::spawn(reloader.serve_asking_supervisor(link))
        }
    })
}

struct Reloader {
    loaded: Loaded,
    targets: Targets,
    requests: mpsc::Receiver<ReloadRequest>,
    hangup: Option<tokio::signal::unix::Signal>,
}

/// Waits for SIGHUP, or forever if it cannot be caught.
async fn hangup(signal: &mut Option<tokio::signal::unix::Signal>) {
    match signal {
        Some(signal) => {
            signal.recv().await;
        }
        None => std::future::pending().await,
    }
}

impl Reloader {
    async fn serve_reading_files(mut self) {
        loop {
            let reply = tokio::select! {
                request = self.requests.recv() => match request {
                    Some(reply) => Some(reply),
                    None => return,
                },
                () = hangup(&mut self.hangup) => None,
            };
            let result = match Material::read(&self.loaded) {
                Ok(material) => self.check_and_apply(&material).await,
                Err(e) => Err(e),
            };
            report(result, reply);
        }
    }

    async fn check_and_apply(&self, material: &Material) -> Result<Reloaded, String> {
        let checked = material.check(&self.loaded, SystemTime::now())?;
        Ok(self.targets.apply(checked).await)
    }

    async fn serve_asking_supervisor(mut self, link: tokio::net::UnixStream) {
        let (mut reader, mut writer) = link.into_split();
        let (frames_tx, mut frames) = mpsc::channel(2);
        // Reading a frame is not cancel-safe: a task of its own reads them whole.
        let reading = tokio::spawn(async move {
            loop {
                let frame = read_frame(&mut reader).await;
                let failed = frame.is_err();
                if frames_tx.send(frame).await.is_err() || failed {
                    return;
                }
            }
        });
        let mut next_id: u32 = 0;
        // The `ctl reload` waiting for the supervisor's answer, if any.
        let mut pending: Option<(u32, Option<ReloadRequest>)> = None;
        let mut deadline = tokio::time::Instant::now();
        let mut link_up = true;
        loop {
            tokio::select! {
                request = self.requests.recv() => {
                    let Some(reply) = request else { break };
                    if pending.is_some() {
                        let _ = reply.send(Err("a reload is in progress; try again".into()));
                        continue;
                    }
                    if !link_up {
                        let _ = reply.send(Err("the supervisor is gone".into()));
                        continue;
                    }
                    next_id = next_id.wrapping_add(1).max(1);
                    let sent = writer.write_all(&Frame::Fetch { id: next_id }.encode()).await;
                    match sent {
                        Ok(()) => {
                            pending = Some((next_id, Some(reply)));
                            deadline = tokio::time::Instant::now() + RELOAD_TIMEOUT;
                        }
                        Err(e) => {
                            let _ = reply.send(Err(format!("asking the supervisor: {e}")));
                        }
                    }
                }
                () = hangup(&mut self.hangup) => {
                    // The supervisor got its own SIGHUP (and sends unasked); this one
                    // came to the engine alone, perhaps to the whole process group.
                    tracing::debug!("SIGHUP to the engine: the supervisor reloads");
                }
                frame = frames.recv(), if link_up => {
                    let (id, result) = match frame {
                        Some(Ok(Frame::Material { id, material })) => {
                            (id, self.check_and_apply(&material).await)
                        }
                        // The supervisor has logged why.
                        Some(Ok(Frame::Refused { id, reason })) => {
                            if let Some((_, Some(reply))) = pending.take_if(|(w, _)| *w == id) {
                                let _ = reply.send(Err(reason));
                            }
                            continue;
                        }
                        Some(Ok(Frame::Fetch { .. })) => {
                            tracing::warn!("reload link: the supervisor sent a fetch; ignored");
                            continue;
                        }
                        Some(Err(e)) => {
                            tracing::warn!("reload link: {e}; no more reloads");
                            link_up = false;
                            continue;
                        }
                        None => {
                            link_up = false;
                            continue;
                        }
                    };
                    let reply = match pending.take() {
                        Some((wanted, reply)) if wanted == id => reply,
                        other => {
                            pending = other;
                            None
                        }
                    };
                    report(result, reply);
                }
                () = tokio::time::sleep_until(deadline), if pending.is_some() => {
                    if let Some((_, Some(reply))) = pending.take() {
                        let _ = reply.send(Err("the supervisor did not answer".into()));
                    }
                }
            }
        }
        reading.abort();
    }
}

/// Logs a reload's outcome and answers `ctl reload`, if it asked.
fn report(result: Result<Reloaded, String>, reply: Option<ReloadRequest>) {
    match &result {
        Ok(summary) => tracing::info!("{summary}"),
        Err(e) => tracing::warn!("reload refused, the old files stay in use: {e}"),
    }
    if let Some(reply) = reply {
        let _ = reply.send(result);
    }
}

/// Reads one whole frame.
async fn read_frame(reader: &mut tokio::net::unix::OwnedReadHalf) -> Result<Frame, String> {
    let mut prefix = [0u8; 4];
    reader
        .read_exact(&mut prefix)
        .await
        .map_err(|e| format!("reading: {e}"))?;
    let len = Frame::body_len(prefix).map_err(|e| e.to_string())?;
    let mut body = zeroize::Zeroizing::new(vec![0u8; len]);
    reader
        .read_exact(&mut body)
        .await
        .map_err(|e| format!("reading: {e}"))?;
    Frame::decode(&body).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::nts::aead::{AeadAlgorithm, AeadKey};
    use crate::auth::nts::cookie::{Rotation, SessionKeys};
    use std::sync::RwLock;

    fn session() -> SessionKeys {
        let alg = AeadAlgorithm::AesSivCmac256;
        SessionKeys {
            c2s: AeadKey::new(alg, &vec![1; alg.key_len()]).unwrap(),
            s2c: AeadKey::new(alg, &vec![2; alg.key_len()]).unwrap(),
        }
    }

    /// A new fleet secret replaces the cookie keys whole: cookies sealed under the old
    /// secret no longer open, and the rotation schedule stays.
    #[tokio::test]
    async fn a_new_fleet_secret_replaces_the_cookie_keys() {
        let rotation = Rotation {
            period: 3600,
            retention: 7200,
        };
        let mut old = CookieKeys::fleet(rotation, &[1u8; 32]).unwrap();
        old.update(unix_now(), &mut rand::rng());
        let cookie = old.seal(&session(), &mut rand::rng()).unwrap();
        let shared = Arc::new(RwLock::new(old));
        let targets = Targets {
            servers: Vec::new(),
            ke_tls: Vec::new(),
            cookie_keys: Some(shared.clone()),
            client_keys: None,
            leap_file: Default::default(),
        };
        let done = targets
            .apply(Checked {
                keys: None,
                tls: Vec::new(),
                fleet_secret: Some(zeroize::Zeroizing::new(vec![2u8; 32])),
                leap_file: None,
                warnings: vec!["soon".into()],
            })
            .await;
        assert_eq!(done.reloaded, ["fleet secret"]);
        assert_eq!(done.to_string(), "reloaded: fleet secret\nwarning: soon");
        let keys = shared.read().unwrap();
        assert!(keys.open(&cookie).is_none());
        assert_eq!(keys.rotation(), rotation);
        assert!(keys.seal(&session(), &mut rand::rng()).is_some());
    }
}

//! NTS-KE over TLS 1.3 (tokio-rustls): the server that hands out keys and cookies,
//! and the client that fetches them. The negotiation itself is `auth::nts::ke`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
use rustls::{ClientConfig, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::auth::nts::aead::{AeadAlgorithm, AeadKey};
use crate::auth::nts::cookie::{
    CookieKeys, Rotation, SessionKeys, decode_persisted, encode_persisted,
};
use crate::auth::nts::ke::{self, KeDecision, KeResponse, NtpEndpoint};
use crate::auth::nts::ntp::NtsSession;
use crate::proto::server::SharedCookieKeys;
use crate::wire::ke::{MAX_MESSAGE_LEN, parse_message};

pub const ALPN: &[u8] = b"ntske/1";
pub const DEFAULT_KE_PORT: u16 = 4460;

/// ring, with AES-128-GCM-SHA256 first: SHA-256 runs on the CPU's SHA extensions where
/// SHA-384 does not, which makes the handshake measurably cheaper (`benches/ke_cpu.rs`).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::crypto::ring::cipher_suite::{
        TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
    };
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![
        TLS13_AES_128_GCM_SHA256,
        TLS13_AES_256_GCM_SHA384,
        TLS13_CHACHA20_POLY1305_SHA256,
    ];
    Arc::new(provider)
}

/// Reads one whole NTS-KE message (at most `MAX_MESSAGE_LEN` bytes and
/// `MAX_RECORDS` records); returns the bytes and where the message ends. Record headers
/// are walked as bytes arrive, so a message dribbled in byte by byte costs linear time.
async fn read_message<S: AsyncReadExt + Unpin>(stream: &mut S) -> Result<(Vec<u8>, usize), String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let mut next_record = 0usize;
    let mut records = 0usize;
    loop {
        while let Some(header) = buf.get(next_record..next_record + 4) {
            let record_type = u16::from_be_bytes([header[0], header[1]]) & 0x7fff;
            let end = next_record + 4 + usize::from(u16::from_be_bytes([header[2], header[3]]));
            if end > buf.len() {
                break;
            }
            records += 1;
            if records > MAX_RECORDS {
                return Err(format!("more than {MAX_RECORDS} records"));
            }
            next_record = end;
            if record_type == 0 {
                return Ok((buf, end));
            }
        }
        let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(CLOSED_EARLY.into());
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        if buf.len() > MAX_MESSAGE_LEN {
            return Err(format!("message longer than {MAX_MESSAGE_LEN} bytes"));
        }
    }
}

/// Most records in a message: a request has a handful, a response about a dozen.
const MAX_RECORDS: usize = 64;
const CLOSED_EARLY: &str = "connection closed before End of Message";

/// Exports both session keys for `aead` from a finished TLS session.
fn export_keys<Data>(
    connection: &rustls::ConnectionCommon<Data>,
    aead: AeadAlgorithm,
) -> Result<SessionKeys, String> {
    let one = |s2c: bool| -> Result<AeadKey, String> {
        let mut key = zeroize::Zeroizing::new(vec![0u8; aead.key_len()]);
        let context = ke::exporter_context(aead, s2c);
        connection
            .export_keying_material(&mut key[..], ke::EXPORTER_LABEL, Some(&context))
            .map_err(|e| e.to_string())?;
        AeadKey::new(aead, &key).ok_or_else(|| "exported key of the wrong length".to_string())
    };
    Ok(SessionKeys {
        c2s: one(false)?,
        s2c: one(true)?,
    })
}

// ---------------------------------------------------------------------------------
// Client

/// TLS 1.3 client settings: the system's roots plus `extra_ca`, ALPN `ntske/1`.
pub fn client_config(extra_ca: Option<&Path>) -> Result<Arc<ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = extra_ca {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("{}: no certificates", path.display()));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    client_config_with(roots)
}

/// TLS 1.3 client settings trusting exactly `roots`.
pub fn client_config_with(roots: rustls::RootCertStore) -> Result<Arc<ClientConfig>, String> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// A finished key exchange.
#[derive(Debug)]
pub struct KeOutcome {
    pub response: KeResponse,
    pub keys: SessionKeys,
    /// Where to send NTP: the negotiated server, else the KE host; port 123 unless
    /// negotiated.
    pub ntp_host: String,
    pub ntp_port: u16,
}

/// Runs NTS-KE with `host:port`, verifying the certificate for `host`.
pub async fn key_exchange(
    host: &str,
    port: u16,
    config: Arc<ClientConfig>,
    timeout: Duration,
) -> Result<KeOutcome, String> {
    tokio::time::timeout(timeout, key_exchange_inner(host, port, config))
        .await
        .map_err(|_| {
            format!(
                "NTS-KE with {host}:{port} timed out after {:.1} s",
                timeout.as_secs_f64()
            )
        })?
}

async fn key_exchange_inner(
    host: &str,
    port: u16,
    config: Arc<ClientConfig>,
) -> Result<KeOutcome, String> {
    let name = ServerName::try_from(host.to_string()).map_err(|e| format!("{host}: {e}"))?;
    let tcp = connect_any(host, port).await?;
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS with {host}:{port}: {e}"))?;
    if tls.get_ref().1.alpn_protocol() != Some(ALPN) {
        return Err(format!("{host}:{port} did not agree to ALPN ntske/1"));
    }
    let mut request = Vec::new();
    ke::write_request(&mut request);
    tls.write_all(&request).await.map_err(|e| e.to_string())?;
    tls.flush().await.map_err(|e| e.to_string())?;
    let (bytes, used) = read_message(&mut tls)
        .await
        .map_err(|e| format!("NTS-KE response: {e}"))?;
    let records = match parse_message(bytes.get(..used).unwrap_or_default()) {
        Ok(Some((records, _))) => records,
        _ => return Err("NTS-KE response: malformed".into()),
    };
    let response =
        ke::handle_response(&records).map_err(|e| format!("NTS-KE with {host}:{port}: {e}"))?;
    let keys = export_keys(tls.get_ref().1, response.aead)?;
    let _ = tls.shutdown().await;
    Ok(KeOutcome {
        ntp_host: response
            .endpoint
            .server
            .clone()
            .unwrap_or_else(|| host.to_string()),
        ntp_port: response.endpoint.port.unwrap_or(123),
        response,
        keys,
    })
}

/// NTS-KE with `host:port`, then the NTP server to use: the one the KE server named,
/// else `default_ntp` (host, port), resolved. All within `timeout`.
pub async fn establish(
    host: &str,
    port: u16,
    config: Arc<ClientConfig>,
    timeout: Duration,
    default_ntp: (&str, u16),
) -> Result<(NtsSession, SocketAddr), String> {
    let work = async {
        let ke = key_exchange_inner(host, port, config).await?;
        let endpoint = &ke.response.endpoint;
        let ntp_host = endpoint.server.as_deref().unwrap_or(default_ntp.0);
        let address = super::net::resolve(ntp_host, endpoint.port.unwrap_or(default_ntp.1)).await?;
        Ok((NtsSession::new(ke.keys, ke.response.cookies), address))
    };
    tokio::time::timeout(timeout, work).await.map_err(|_| {
        format!(
            "NTS-KE with {host}:{port} timed out after {:.1} s",
            timeout.as_secs_f64()
        )
    })?
}

/// Connects to the first of `host`'s addresses that answers (`localhost` may name
/// both ::1 and 127.0.0.1 with a server on only one).
async fn connect_any(host: &str, port: u16) -> Result<TcpStream, String> {
    let addrs = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?;
    let mut last = format!("{host} has no address");
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(tcp) => return Ok(tcp),
            Err(e) => last = format!("{addr}: {e}"),
        }
    }
    Err(last)
}

// ---------------------------------------------------------------------------------
// Server

/// Limits that keep NTS-KE load from starving anything else (ADVERSARIAL 5).
#[derive(Debug, Clone, Copy)]
pub struct KeLimits {
    /// Connections served at once. When full, a new connection evicts the oldest one
    /// still in progress: a legitimate exchange takes milliseconds, so connections
    /// held open on purpose are the ones that go, and nobody is locked out.
    pub max_concurrent: usize,
    /// Connections served at once from one IPv4 address or IPv6 /64.
    pub max_per_source: usize,
    /// Whole exchange, handshake included.
    pub timeout: Duration,
}

impl Default for KeLimits {
    fn default() -> Self {
        Self {
            max_concurrent: 512,
            max_per_source: 8,
            timeout: Duration::from_secs(3),
        }
    }
}

/// Connections in progress, oldest first, each with its source and a way to end it.
#[derive(Default)]
struct InFlight {
    next_id: u64,
    connections: std::collections::VecDeque<(u64, SourceKey, tokio::sync::oneshot::Sender<()>)>,
}

/// Where a connection comes from: the IPv4 address, or the IPv6 /64.
type SourceKey = [u8; 8];
use crate::proto::ratelimit::source_key;

impl InFlight {
    /// Registers a connection from `source`. A source already at `per_source` loses its
    /// own oldest connection; when `cap` are in progress, the source with the most
    /// loses its oldest. So a flood from one place only ever evicts itself, and an
    /// honest client, finishing in milliseconds, is not the oldest of anyone's.
    fn admit(
        &mut self,
        source: SourceKey,
        cap: usize,
        per_source: usize,
    ) -> (u64, tokio::sync::oneshot::Receiver<()>, bool) {
        let from_source = self
            .connections
            .iter()
            .filter(|(_, s, _)| *s == source)
            .count();
        let victim_source = if from_source >= per_source {
            Some(source)
        } else if self.connections.len() >= cap {
            self.busiest_source()
        } else {
            None
        };
        let evicted = match victim_source
            .and_then(|v| self.connections.iter().position(|(_, s, _)| *s == v))
        {
            Some(i) => {
                if let Some((_, _, cancel)) = self.connections.remove(i) {
                    let _ = cancel.send(());
                }
                true
            }
            None => false,
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.next_id += 1;
        self.connections.push_back((self.next_id, source, tx));
        (self.next_id, rx, evicted)
    }

    fn busiest_source(&self) -> Option<SourceKey> {
        let mut counts: std::collections::HashMap<SourceKey, usize> =
            std::collections::HashMap::new();
        for (_, s, _) in &self.connections {
            *counts.entry(*s).or_default() += 1;
        }
        counts.into_iter().max_by_key(|(_, n)| *n).map(|(s, _)| s)
    }

    fn finish(&mut self, id: u64) {
        if let Some(i) = self.connections.iter().position(|(c, _, _)| *c == id) {
            self.connections.remove(i);
        }
    }
}

/// Loads and checks the certificate chain and key (ADVERSARIAL 31): PEM that parses,
/// a leaf valid now, naming `name` if given, and a key that matches it. TLS 1.3 only,
/// ALPN `ntske/1`, no early data, no session tickets to keep state small.
pub fn server_config(
    chain: &Path,
    key: &Path,
    name: Option<&str>,
    now: SystemTime,
) -> Result<Arc<ServerConfig>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(chain)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", chain.display()))?;
    let key_pem = crate::auth::keys::read_private_file(key, 1 << 20)
        .map_err(|e| format!("{}: {e}", key.display()))?;
    let key_der =
        PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| format!("{}: {e}", key.display()))?;
    server_config_with(certs, key_der, name, now).map_err(|e| match e {
        ServerCertError::Chain(e) => format!("{}: {e}", chain.display()),
        ServerCertError::Key(e) => format!("{}: {e}", key.display()),
    })
}

/// Why a certificate chain or key cannot serve.
pub enum ServerCertError {
    Chain(String),
    Key(String),
}

/// `server_config` from certificates and a key in memory.
pub fn server_config_with(
    certs: Vec<CertificateDer<'static>>,
    key_der: PrivateKeyDer<'static>,
    name: Option<&str>,
    now: SystemTime,
) -> Result<Arc<ServerConfig>, ServerCertError> {
    use ServerCertError::{Chain, Key};
    let leaf = certs
        .first()
        .ok_or_else(|| Chain("no certificate".into()))?;
    check_leaf(leaf, name, now).map_err(Chain)?;
    let provider = provider();
    let certified =
        rustls::sign::CertifiedKey::from_der(certs.clone(), key_der.clone_key(), &provider)
            .map_err(|e| Key(e.to_string()))?;
    certified
        .keys_match()
        .map_err(|e| Key(format!("does not match the certificate: {e}")))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Key(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| Key(e.to_string()))?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.max_early_data_size = 0;
    config.send_tls13_tickets = 0;
    config.ignore_client_order = true;
    Ok(Arc::new(config))
}

fn check_leaf(
    leaf: &CertificateDer<'_>,
    name: Option<&str>,
    now: SystemTime,
) -> Result<(), String> {
    use x509_parser::prelude::*;
    let (_, cert) =
        X509Certificate::from_der(leaf).map_err(|e| format!("certificate does not parse: {e}"))?;
    let now = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let validity = cert.validity();
    if now < validity.not_before.timestamp() {
        return Err(format!(
            "certificate is not valid before {}",
            validity.not_before
        ));
    }
    if now > validity.not_after.timestamp() {
        return Err(format!("certificate expired on {}", validity.not_after));
    }
    if let Some(name) = name {
        let ip: Option<std::net::IpAddr> = name.parse().ok();
        let names: Vec<String> = match cert.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .filter_map(|n| match (n, ip) {
                    (GeneralName::DNSName(d), _) => Some(d.to_string()),
                    (GeneralName::IPAddress(bytes), Some(_)) => match bytes.len() {
                        4 => <[u8; 4]>::try_from(*bytes)
                            .ok()
                            .map(|b| std::net::IpAddr::from(b).to_string()),
                        16 => <[u8; 16]>::try_from(*bytes)
                            .ok()
                            .map(|b| std::net::IpAddr::from(b).to_string()),
                        _ => None,
                    },
                    _ => None,
                })
                .collect(),
            _ => vec![],
        };
        let wanted = ip.map_or_else(|| name.to_ascii_lowercase(), |ip| ip.to_string());
        if !names
            .iter()
            .any(|n| name_matches(&n.to_ascii_lowercase(), &wanted))
        {
            return Err(format!("certificate names {names:?}, not {name}"));
        }
    }
    Ok(())
}

/// A certificate name matches exactly, or as a wildcard for one leftmost label
/// (`*.example.org` covers `time.example.org`, not `example.org` or `a.b.example.org`).
fn name_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => name
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
        None => pattern == name,
    }
}

/// An NTS-KE server. Dropping it stops accepting.
pub struct RunningKeServer {
    pub local_addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for RunningKeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves NTS-KE on `listen`.
pub async fn start_ke_server(
    listen: SocketAddr,
    tls: Arc<ServerConfig>,
    cookie_keys: SharedCookieKeys,
    endpoint: NtpEndpoint,
    limits: KeLimits,
) -> std::io::Result<RunningKeServer> {
    let listener = std::net::TcpListener::bind(listen)?;
    start_ke_server_on(listener, tls, cookie_keys, endpoint, limits)
}

/// [`start_ke_server`] on a listener bound already (by the supervisor, before
/// privileges were dropped). Must be called within the runtime.
pub fn start_ke_server_on(
    listener: std::net::TcpListener,
    tls: Arc<ServerConfig>,
    cookie_keys: SharedCookieKeys,
    endpoint: NtpEndpoint,
    limits: KeLimits,
) -> std::io::Result<RunningKeServer> {
    listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(listener)?;
    let local_addr = listener.local_addr()?;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let in_flight = Arc::new(std::sync::Mutex::new(InFlight::default()));
    let endpoint = Arc::new(endpoint);
    let task = tokio::spawn(async move {
        let mut evictions = 0u64;
        loop {
            let Ok((tcp, peer)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let mut registry = in_flight
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let (id, cancelled, evicted) = registry.admit(
                source_key(peer.ip()),
                limits.max_concurrent.max(1),
                limits.max_per_source.max(1),
            );
            drop(registry);
            if evicted {
                evictions += 1;
                if evictions.is_power_of_two() {
                    tracing::warn!(
                        "NTS-KE: evicted an old connection to admit {peer} ({evictions} so far)"
                    );
                }
            }
            let (acceptor, cookie_keys, endpoint, in_flight) = (
                acceptor.clone(),
                cookie_keys.clone(),
                endpoint.clone(),
                in_flight.clone(),
            );
            tokio::spawn(async move {
                let exchange = serve_one(acceptor, tcp, &cookie_keys, &endpoint);
                tokio::select! {
                    result = tokio::time::timeout(limits.timeout, exchange) => match result {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => tracing::debug!("NTS-KE with {peer}: {e}"),
                        Err(_) => tracing::debug!("NTS-KE with {peer}: timed out"),
                    },
                    _ = cancelled => tracing::debug!("NTS-KE with {peer}: evicted"),
                }
                in_flight
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .finish(id);
            });
        }
    });
    Ok(RunningKeServer { local_addr, task })
}

async fn serve_one(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
    cookie_keys: &SharedCookieKeys,
    endpoint: &NtpEndpoint,
) -> Result<(), String> {
    let _ = tcp.set_nodelay(true);
    let mut tls = acceptor
        .accept(tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    if tls.get_ref().1.alpn_protocol() != Some(ALPN) {
        return Err("client did not offer ALPN ntske/1".into());
    }
    let decision = match read_message(&mut tls).await {
        Ok((bytes, used)) => match parse_message(bytes.get(..used).unwrap_or_default()) {
            Ok(Some((records, _))) => ke::evaluate_request(&records, used < bytes.len()),
            _ => bad_request(),
        },
        Err(e) if e == CLOSED_EARLY => return Err(e),
        Err(_) => bad_request(),
    };
    let cookies = match decision {
        KeDecision::Accept { aead, .. } => {
            let keys = export_keys(tls.get_ref().1, aead)?;
            let master = cookie_keys
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            (0..ke::COOKIES_PER_RESPONSE)
                .filter_map(|_| master.seal(&keys))
                .collect()
        }
        _ => Vec::new(),
    };
    let mut response = Vec::with_capacity(1024);
    ke::write_response(&decision, &cookies, endpoint, &mut response);
    tls.write_all(&response).await.map_err(|e| e.to_string())?;
    tls.shutdown().await.map_err(|e| e.to_string())?;
    if let KeDecision::Refuse { why, .. } = decision {
        return Err(format!("refused: {why}"));
    }
    Ok(())
}

fn bad_request() -> KeDecision {
    KeDecision::Refuse {
        code: ke::ERROR_BAD_REQUEST,
        why: "malformed records",
    }
}

// ---------------------------------------------------------------------------------
// Cookie master keys on disk

/// The file random master keys are kept in, inside `[nts] key-dir`.
pub const COOKIE_KEY_FILE: &str = "cookie-keys";
/// How often the rotation task looks at the clock.
const ROTATION_CHECK: Duration = Duration::from_secs(60);

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Builds the cookie keys `[nts]` asks for: derived from the fleet secret, or random
/// and persisted in `key_dir` (reloaded from there, so a restart keeps cookies valid).
/// Returns the keys and the file to persist them to.
pub fn load_cookie_keys(
    fleet_secret: Option<&Path>,
    key_dir: Option<&Path>,
    rotation: Rotation,
) -> Result<(CookieKeys, Option<std::path::PathBuf>), String> {
    let mut keys = match (fleet_secret, key_dir) {
        (Some(path), _) => {
            let secret = crate::auth::keys::read_private_file(path, 4096)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            (
                CookieKeys::fleet(rotation, &secret)
                    .map_err(|e| format!("{}: {e}", path.display()))?,
                None,
            )
        }
        (None, Some(dir)) => {
            ensure_private_dir(dir)?;
            let file = dir.join(COOKIE_KEY_FILE);
            // Read as root before privileges are dropped, from a directory the
            // unprivileged user owns: never through a link it may have planted.
            let persisted = if std::fs::symlink_metadata(&file).is_ok() {
                let bytes = crate::auth::keys::read_private_file_no_link(&file, 1 << 20)
                    .map_err(|e| format!("{}: {e}", file.display()))?;
                let text = std::str::from_utf8(&bytes)
                    .map_err(|_| format!("{}: not text", file.display()))?;
                decode_persisted(text).map_err(|e| format!("{}: {e}", file.display()))?
            } else {
                Vec::new()
            };
            (CookieKeys::random(rotation, persisted), Some(file))
        }
        (None, None) => return Err("[nts] needs key-dir or fleet-secret".into()),
    };
    if keys.0.update(unix_now())
        && let Some(file) = &keys.1
    {
        persist_cookie_keys(file, &encode_persisted(&keys.0.persistable()))?;
    }
    Ok(keys)
}

fn ensure_private_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("{}: cannot create: {e}", dir.display()))?;
    }
    let meta = std::fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if !meta.is_dir() {
        return Err(format!("{}: not a directory", dir.display()));
    }
    if meta.permissions().mode() & 0o022 != 0 {
        return Err(format!(
            "{}: group or others may write here; chmod 700 it",
            dir.display()
        ));
    }
    Ok(())
}

/// Writes the random keys atomically, mode 0600 ([`crate::util::write_atomic`]).
pub fn persist_cookie_keys(file: &Path, text: &str) -> Result<(), String> {
    crate::util::write_atomic(file, text)
        .map_err(|e| format!("{}: cannot save cookie keys: {e}", file.display()))
}

/// Rotates master keys as time passes, saving them when they change (off the async
/// workers, and without holding the keys' lock while writing).
pub fn spawn_rotation(
    keys: SharedCookieKeys,
    persist_to: Option<std::path::PathBuf>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(ROTATION_CHECK).await;
            let text = {
                let mut k = keys
                    .write()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                if !k.update(unix_now()) {
                    continue;
                }
                encode_persisted(&k.persistable())
            };
            if let Some(file) = persist_to.clone() {
                let saved =
                    tokio::task::spawn_blocking(move || persist_cookie_keys(&file, &text)).await;
                if let Ok(Err(e)) = saved {
                    tracing::warn!("{e}");
                }
            }
        }
    })
}

// ---------------------------------------------------------------------------------
// Throwaway certificates

/// A CA and a server certificate made on the spot, for the demo and tests.
pub struct ThrowawayPki {
    pub ca: CertificateDer<'static>,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl ThrowawayPki {
    /// A fresh P-256 CA and a server certificate for `names` (DNS names or IPs).
    pub fn new(names: &[&str]) -> Result<Self, String> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair,
        };
        let err = |e: rcgen::Error| e.to_string();
        let ca_key = KeyPair::generate().map_err(err)?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "ntimed throwaway CA");
        let ca = ca_params.self_signed(&ca_key).map_err(err)?;
        let key = KeyPair::generate().map_err(err)?;
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).map_err(err)?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params
            .distinguished_name
            .push(DnType::CommonName, "ntimed throwaway server");
        let issuer = Issuer::from_params(&ca_params, &ca_key);
        let leaf = params.signed_by(&key, &issuer).map_err(err)?;
        let key = PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| e.to_string())?;
        Ok(Self {
            ca: ca.der().clone(),
            chain: vec![leaf.der().clone(), ca.der().clone()],
            key,
        })
    }

    /// Client settings that trust only this CA.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, String> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone()).map_err(|e| e.to_string())?;
        client_config_with(roots)
    }

    /// Server settings for this certificate.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, String> {
        server_config_with(
            self.chain.clone(),
            self.key.clone_key(),
            None,
            SystemTime::now(),
        )
        .map_err(|e| match e {
            ServerCertError::Chain(e) | ServerCertError::Key(e) => e,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(last: u8) -> SourceKey {
        source_key(std::net::IpAddr::from([192, 0, 2, last]))
    }

    /// ADVERSARIAL 5: a flood from one source evicts only its own connections.
    #[test]
    fn a_flooding_source_evicts_only_itself() {
        let mut in_flight = InFlight::default();
        let (honest, mut honest_rx, _) = in_flight.admit(key(1), 4, 2);
        for _ in 0..100 {
            in_flight.admit(key(66), 4, 2);
        }
        assert!(
            honest_rx.try_recv().is_err(),
            "the honest client was evicted"
        );
        assert_eq!(
            in_flight.connections.len(),
            3,
            "one honest, two from the flood"
        );
        in_flight.finish(honest);
        assert_eq!(in_flight.connections.len(), 2);
    }

    #[test]
    fn when_full_the_busiest_source_gives_way() {
        let mut in_flight = InFlight::default();
        let (_, mut a, _) = in_flight.admit(key(1), 3, 3);
        let (_, mut b, _) = in_flight.admit(key(2), 3, 3);
        let (_, mut c, _) = in_flight.admit(key(2), 3, 3);
        let (_, _, evicted) = in_flight.admit(key(3), 3, 3);
        assert!(evicted);
        assert!(a.try_recv().is_err(), "source 1 has fewest");
        assert!(
            b.try_recv().is_ok(),
            "the oldest of the busiest source goes"
        );
        assert!(c.try_recv().is_err());
    }

    #[test]
    fn wildcard_names_cover_one_label() {
        assert!(name_matches("time.example.org", "time.example.org"));
        assert!(name_matches("*.example.org", "time.example.org"));
        assert!(!name_matches("*.example.org", "example.org"));
        assert!(!name_matches("*.example.org", "a.time.example.org"));
        assert!(!name_matches("*.example.org", "time.example.com"));
    }

    #[test]
    fn ipv6_sources_are_grouped_by_64() {
        let a: std::net::IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: std::net::IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: std::net::IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(source_key(a), source_key(b));
        assert_ne!(source_key(a), source_key(c));
        assert_ne!(
            source_key("0.0.0.1".parse().unwrap()),
            source_key("::1".parse().unwrap())
        );
    }
}

//! NTS (RFC 8915) test material: the test PKI, `ntimed ke --export` parsed into session
//! keys and cookies, one NTS exchange with ntimed's own client, and hand-made NTS NTP
//! packets (for malformed variants).

use std::fs;
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use tempfile::TempDir;

use super::files::tempdir;
use super::netns::NetNs;
use super::ntimed_cli::ntimed_ke;

/// The test PKI in certs/ (see certs/README.md).
pub fn certs_source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("certs")
}

/// A private copy of certs/ with every `*.key` chmod 0600 (git checks them out 0644,
/// which ntimed rightly refuses).
pub struct TestCerts {
    dir: TempDir,
}

impl TestCerts {
    pub fn new() -> TestCerts {
        let dir = tempdir("certs");
        let src = certs_source_dir();
        let entries =
            fs::read_dir(&src).unwrap_or_else(|e| panic!("reading {}: {e}", src.display()));
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !(name.ends_with(".pem") || name.ends_with(".key")) {
                continue;
            }
            let to = dir.path().join(&name);
            fs::copy(e.path(), &to).unwrap_or_else(|err| panic!("copy {name}: {err}"));
            let mode = if name.ends_with(".key") { 0o600 } else { 0o644 };
            fs::set_permissions(&to, fs::Permissions::from_mode(mode))
                .unwrap_or_else(|err| panic!("chmod {name}: {err}"));
        }
        TestCerts { dir }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `name` (e.g. "srv-chain.pem") inside the private copy.
    pub fn path(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        assert!(p.exists(), "{} is not in certs/", p.display());
        p
    }

    /// The test CA every client trusts.
    pub fn ca(&self) -> PathBuf {
        self.path("ca.pem")
    }
}

impl Default for TestCerts {
    fn default() -> Self {
        Self::new()
    }
}

/// What `ntimed ke --export` printed.
#[derive(Debug, Clone)]
pub struct KeExport {
    pub aead_id: u16,
    pub ntp_host: String,
    pub ntp_port: u16,
    pub c2s: Vec<u8>,
    pub s2c: Vec<u8>,
    pub cookies: Vec<Vec<u8>>,
}

fn from_hex(s: &str) -> Result<Vec<u8>, String> {
    if !s.len().is_multiple_of(2) {
        return Err(format!("odd-length hex {s:?}"));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            s.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
                .ok_or_else(|| format!("bad hex {s:?}"))
        })
        .collect()
}

/// `ntimed ke --export` parsed. Its output looks like
/// ```text
/// NTS-KE with localhost:24460
///   AEAD        AES-SIV-CMAC-256 (15)
///   NTP server  localhost:21123
///   cookies     8 of 104 bytes
///   C2S key     59c0…
///   S2C key     35b7…
///   cookie 0    0000512a…
/// ```
pub fn ntimed_ke_export(
    netns: Option<&NetNs>,
    server: &str,
    ca: Option<&Path>,
) -> Result<KeExport, String> {
    let out = ntimed_ke(netns, server, ca, true)?;
    if !out.status.success() {
        return Err(format!("ntimed ke --export failed: {}", out.describe()));
    }
    let bad = |what: &str| format!("ntimed ke --export: {what}: {}", out.describe());
    let mut export = KeExport {
        aead_id: 0,
        ntp_host: String::new(),
        ntp_port: 0,
        c2s: vec![],
        s2c: vec![],
        cookies: vec![],
    };
    for line in out.stdout.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("AEAD") {
            let id = rest
                .rsplit_once('(')
                .and_then(|(_, id)| id.strip_suffix(')'))
                .and_then(|id| id.parse().ok())
                .ok_or_else(|| bad("AEAD line"))?;
            export.aead_id = id;
        } else if let Some(rest) = line.strip_prefix("NTP server") {
            let (host, port) = rest
                .trim()
                .rsplit_once(':')
                .ok_or_else(|| bad("NTP server line"))?;
            export.ntp_host = host.trim_matches(['[', ']']).to_string();
            export.ntp_port = port.parse().map_err(|_| bad("NTP port"))?;
        } else if let Some(rest) = line.strip_prefix("C2S key") {
            export.c2s = from_hex(rest.trim()).map_err(|e| bad(&e))?;
        } else if let Some(rest) = line.strip_prefix("S2C key") {
            export.s2c = from_hex(rest.trim()).map_err(|e| bad(&e))?;
        } else if let Some(rest) = line.strip_prefix("cookie ") {
            let hex = rest
                .split_whitespace()
                .nth(1)
                .ok_or_else(|| bad("cookie"))?;
            export.cookies.push(from_hex(hex).map_err(|e| bad(&e))?);
        }
    }
    if export.aead_id == 0 || export.c2s.is_empty() || export.s2c.is_empty() {
        return Err(bad("no AEAD or keys"));
    }
    Ok(export)
}

impl KeExport {
    pub fn algorithm(&self) -> ntimed::auth::nts::aead::AeadAlgorithm {
        ntimed::auth::nts::aead::AeadAlgorithm::from_id(self.aead_id)
            .unwrap_or_else(|| panic!("unknown AEAD {}", self.aead_id))
    }

    pub fn c2s_key(&self) -> ntimed::auth::nts::aead::AeadKey {
        ntimed::auth::nts::aead::AeadKey::new(self.algorithm(), &self.c2s).expect("C2S key")
    }

    pub fn s2c_key(&self) -> ntimed::auth::nts::aead::AeadKey {
        ntimed::auth::nts::aead::AeadKey::new(self.algorithm(), &self.s2c).expect("S2C key")
    }

    pub fn session_keys(&self) -> ntimed::auth::nts::cookie::SessionKeys {
        ntimed::auth::nts::cookie::SessionKeys {
            c2s: self.c2s_key(),
            s2c: self.s2c_key(),
        }
    }

    /// An NTS client exchange (ntimed's own) holding these keys and `cookies`.
    pub fn exchange(&self, cookies: Vec<Vec<u8>>) -> ntimed::proto::client::ClientExchange {
        use ntimed::auth::nts::ntp::NtsSession;
        use ntimed::proto::client::{ClientAuth, ClientExchange};
        ClientExchange::new(
            ClientAuth::Nts(NtsSession::new(self.session_keys(), cookies)),
            4,
        )
    }
}

/// How a server answered one NTS request made by [`nts_exchange`].
#[derive(Debug)]
pub enum NtsOutcome {
    /// Authenticated (NTS) sample.
    Sample(ntimed::proto::client::Sample),
    /// A kiss; for NTS, an NTSN echoing our unique id.
    Kiss(ntimed::wire::KissCode),
    NoReply,
    /// A reply ntimed's client refused.
    Rejected(String),
}

/// One request from `exchange` to `server` over UDP, waiting up to `timeout` for an
/// answer ntimed's client accepts.
pub fn nts_exchange(
    exchange: &mut ntimed::proto::client::ClientExchange,
    server: SocketAddr,
    timeout: Duration,
) -> NtsOutcome {
    use ntimed::proto::client::Response;
    use ntimed::wire::NtpTimestamp;
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind UDP");
    let mut request = Vec::new();
    let sent = NtpTimestamp::from_system_time(SystemTime::now());
    if let Err(e) = exchange.poll_request(sent, &mut rand::rng(), &mut request) {
        return NtsOutcome::Rejected(format!("no request: {e}"));
    }
    sock.send_to(&request, server).expect("send NTS request");
    let deadline = Instant::now() + timeout;
    let mut last_reject = None;
    let mut buf = [0u8; 4096];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        if left.is_zero() {
            break;
        }
        sock.set_read_timeout(Some(left)).expect("set timeout");
        let Ok((n, from)) = sock.recv_from(&mut buf) else {
            break;
        };
        if from != server {
            continue;
        }
        let received = NtpTimestamp::from_system_time(SystemTime::now());
        match exchange.handle_response(&buf[..n], received) {
            Ok(Response::Sample(s)) => return NtsOutcome::Sample(s),
            Ok(Response::Kiss(k)) => return NtsOutcome::Kiss(k),
            Err(e) => last_reject = Some(e.to_string()),
        }
    }
    match last_reject {
        Some(e) => NtsOutcome::Rejected(e),
        None => NtsOutcome::NoReply,
    }
}

// Hand-made NTS extension fields (RFC 8915 §5.3-5.6), written here independently of
// ntimed's encoder so that malformed variants can be built.

pub const EF_UNIQUE_ID: u16 = 0x0104;
pub const EF_COOKIE: u16 = 0x0204;
pub const EF_COOKIE_PLACEHOLDER: u16 = 0x0304;
pub const EF_AUTHENTICATOR: u16 = 0x0404;

/// A 48-byte NTPv4 client (mode 3) header with `transmit` in the transmit field.
pub fn ntp_client_header(transmit: u64) -> Vec<u8> {
    let mut h = vec![0u8; 48];
    h[0] = 0x23; // LI 0, VN 4, mode 3
    h[2] = 4; // poll
    h[3] = 0xec; // precision -20
    h[40..48].copy_from_slice(&transmit.to_be_bytes());
    h
}

/// Appends an extension field: type, length, `body` zero-padded to a multiple of 4 and
/// to the 16-byte minimum field size.
pub fn push_ef(out: &mut Vec<u8>, field_type: u16, body: &[u8]) {
    let padded = body.len().div_ceil(4).max(3) * 4;
    out.extend_from_slice(&field_type.to_be_bytes());
    out.extend_from_slice(&u16::try_from(4 + padded).expect("field fits").to_be_bytes());
    out.extend_from_slice(body);
    out.resize(out.len() + padded - body.len(), 0);
}

/// Appends an authenticator sealing `plaintext` under `key` with a random nonce of
/// `nonce_len` bytes and everything already in `packet` as associated data.
pub fn push_authenticator(
    packet: &mut Vec<u8>,
    key: &ntimed::auth::nts::aead::AeadKey,
    nonce_len: usize,
    plaintext: &[u8],
) {
    let nonce: Vec<u8> = (0..nonce_len).map(|_| rand::random::<u8>()).collect();
    let sealed = key.seal(&nonce, plaintext, packet).expect("seal");
    let mut body = Vec::new();
    body.extend_from_slice(&u16::try_from(nonce.len()).expect("nonce").to_be_bytes());
    body.extend_from_slice(&u16::try_from(sealed.len()).expect("ct").to_be_bytes());
    body.extend_from_slice(&nonce);
    body.resize(4 + nonce.len().div_ceil(4) * 4, 0);
    body.extend_from_slice(&sealed);
    body.resize(body.len().div_ceil(4) * 4, 0);
    push_ef(packet, EF_AUTHENTICATOR, &body);
}

/// The extension fields after the 48-byte header: (type, offset of the field, body with
/// its padding). Stops at anything that is not a well-formed field.
pub fn extension_fields(packet: &[u8]) -> Vec<(u16, usize, Vec<u8>)> {
    let mut fields = Vec::new();
    let mut at = 48;
    while packet.len() >= at + 4 {
        let t = u16::from_be_bytes([packet[at], packet[at + 1]]);
        let len = usize::from(u16::from_be_bytes([packet[at + 2], packet[at + 3]]));
        if len < 4 || !len.is_multiple_of(4) || at + len > packet.len() {
            break;
        }
        fields.push((t, at, packet[at + 4..at + len].to_vec()));
        at += len;
    }
    fields
}

/// Opens the first authenticator of a reply with `s2c`; returns the plaintext (the
/// encrypted extension fields), or None when absent or not authentic.
pub fn open_authenticator(reply: &[u8], s2c: &ntimed::auth::nts::aead::AeadKey) -> Option<Vec<u8>> {
    let (_, offset, body) = extension_fields(reply)
        .into_iter()
        .find(|(t, _, _)| *t == EF_AUTHENTICATOR)?;
    let nonce_len = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
    let ct_len = usize::from(u16::from_be_bytes([*body.get(2)?, *body.get(3)?]));
    let nonce = body.get(4..4 + nonce_len)?;
    let ct_at = 4 + nonce_len.div_ceil(4) * 4;
    let ct = body.get(ct_at..ct_at + ct_len)?;
    s2c.open(nonce, ct, reply.get(..offset)?)
        .map(|p| p.to_vec())
}

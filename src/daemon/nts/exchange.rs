//! What both ends of an NTS-KE exchange share: the TLS provider and ALPN, reading one
//! whole message, and exporting the session keys from the finished TLS session.

use std::sync::Arc;

use tokio::io::AsyncReadExt;

use crate::auth::nts::aead::{AeadAlgorithm, AeadKey};
use crate::auth::nts::cookie::SessionKeys;
use crate::auth::nts::ke;
use crate::wire::ke::MAX_MESSAGE_LEN;

pub const ALPN: &[u8] = b"ntske/1";

/// ring, with AES-128-GCM-SHA256 first: SHA-256 runs on the CPU's SHA extensions where
/// SHA-384 does not, which makes the handshake measurably cheaper (`benches/ke_cpu.rs`).
pub(super) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
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
pub(super) async fn read_message<S: AsyncReadExt + Unpin>(
    stream: &mut S,
) -> Result<(Vec<u8>, usize), String> {
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
pub(super) const CLOSED_EARLY: &str = "connection closed before End of Message";

/// Exports both session keys for `aead` from a finished TLS session.
pub(super) fn export_keys<Data>(
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

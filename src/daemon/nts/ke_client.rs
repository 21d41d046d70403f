//! The NTS-KE client: TLS 1.3 client settings, and the key exchange that yields NTS
//! session keys, cookies and the NTP server to use.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::exchange::{ALPN, export_keys, provider, read_message};
use crate::auth::nts::cookie::SessionKeys;
use crate::auth::nts::ke::{self, KeResponse};
use crate::auth::nts::ntp::NtsSession;
use crate::wire::ke::parse_message;

pub const DEFAULT_KE_PORT: u16 = 4460;

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
        let address =
            crate::daemon::net::resolve(ntp_host, endpoint.port.unwrap_or(default_ntp.1)).await?;
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

//! The KE server's certificate: loading the chain and key, and refusing one that cannot
//! serve (ADVERSARIAL 31) before anything starts.

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

use super::exchange::{ALPN, provider};

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_names_cover_one_label() {
        assert!(name_matches("time.example.org", "time.example.org"));
        assert!(name_matches("*.example.org", "time.example.org"));
        assert!(!name_matches("*.example.org", "example.org"));
        assert!(!name_matches("*.example.org", "a.time.example.org"));
        assert!(!name_matches("*.example.org", "time.example.com"));
    }
}

//! The KE server's certificate: loading the chain and key, and refusing one that cannot
//! serve (ADVERSARIAL 31) before anything starts.

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use zeroize::Zeroizing;

use super::exchange::{ALPN, provider};
use crate::util::Problems;

/// Warn of a certificate that expires within this many days.
pub const EXPIRY_WARNING_DAYS: i64 = 14;

/// Loads and checks the certificate chain and key (ADVERSARIAL 31): PEM that parses,
/// certificates valid now, a leaf naming `name` if given, and a key that matches it.
/// TLS 1.3 only, ALPN `ntske/1`, no early data, no session tickets to keep state
/// small. Every problem is recorded, each naming its file (a missing chain and a
/// readable key are two); so are warnings: a certificate that expires within
/// [`EXPIRY_WARNING_DAYS`] and a chain out of order. `None` when there was an error.
pub fn server_config(
    chain: &Path,
    key: &Path,
    name: Option<&str>,
    now: SystemTime,
    problems: &mut Problems,
) -> Option<Arc<ServerConfig>> {
    let files = read_certificate_files(chain, key, problems)?;
    server_config_from(&files, name, now, problems)
}

/// A certificate chain and its private key as read from their files (by the
/// supervisor, for a reload of the sandboxed engine, which cannot read them).
pub struct CertificateFiles {
    /// The chain's file name, for messages.
    pub chain_path: String,
    pub chain: Vec<u8>,
    /// The key's file name, for messages.
    pub key_path: String,
    pub key: Zeroizing<Vec<u8>>,
}

/// Reads a chain (at most [`MAX_PEM_LEN`] bytes) and a key that only its owner may
/// read, recording a problem for each that cannot be read.
pub fn read_certificate_files(
    chain: &Path,
    key: &Path,
    problems: &mut Problems,
) -> Option<CertificateFiles> {
    let chain_bytes = crate::util::read_bounded(chain, MAX_PEM_LEN)
        .map_err(|e| format!("{}: {e}", chain.display()));
    let chain_bytes = problems.take(chain_bytes);
    let key_bytes = crate::auth::keys::read_private_file(key, MAX_PEM_LEN)
        .map_err(|e| format!("{}: {e}", key.display()));
    let key_bytes = problems.take(key_bytes);
    Some(CertificateFiles {
        chain_path: chain.display().to_string(),
        chain: chain_bytes?,
        key_path: key.display().to_string(),
        key: key_bytes?,
    })
}

/// Certificate chains and keys are small; anything larger is refused unread.
pub const MAX_PEM_LEN: u64 = 1 << 20;

/// [`server_config`] from files already read: every problem names its file.
pub fn server_config_from(
    files: &CertificateFiles,
    name: Option<&str>,
    now: SystemTime,
    problems: &mut Problems,
) -> Option<Arc<ServerConfig>> {
    let (chain, key) = (&files.chain_path, &files.key_path);
    let certs = CertificateDer::pem_slice_iter(&files.chain)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{chain}: {e}"));
    let certs = problems.take(certs);
    let key_der = PrivateKeyDer::from_pem_slice(&files.key).map_err(|e| format!("{key}: {e}"));
    let key_der = problems.take(key_der);
    let certs = certs?;
    let (errors, warnings) = check_chain(&certs, name, now);
    for warning in warnings {
        problems.warning(format!("{chain}: {warning}"));
    }
    for error in &errors {
        problems.error(format!("{chain}: {error}"));
    }
    if !errors.is_empty() {
        return None;
    }
    let config = tls_config(certs, key_der?).map_err(|e| format!("{key}: {e}"));
    problems.take(config)
}

/// Why a certificate chain or key cannot serve.
pub enum ServerCertError {
    Chain(String),
    Key(String),
}

/// `server_config` from certificates and a key in memory, stopping at the first
/// problem; warnings are not reported.
pub fn server_config_with(
    certs: Vec<CertificateDer<'static>>,
    key_der: PrivateKeyDer<'static>,
    name: Option<&str>,
    now: SystemTime,
) -> Result<Arc<ServerConfig>, ServerCertError> {
    if let Some(first) = check_chain(&certs, name, now).0.into_iter().next() {
        return Err(ServerCertError::Chain(first));
    }
    tls_config(certs, key_der).map_err(ServerCertError::Key)
}

/// The server settings for a checked chain: fails if the key does not match it.
fn tls_config(
    certs: Vec<CertificateDer<'static>>,
    key_der: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, String> {
    let provider = provider();
    let certified =
        rustls::sign::CertifiedKey::from_der(certs.clone(), key_der.clone_key(), &provider)
            .map_err(|e| e.to_string())?;
    certified
        .keys_match()
        .map_err(|e| format!("does not match the certificate: {e}"))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.max_early_data_size = 0;
    config.send_tls13_tickets = 0;
    config.ignore_client_order = true;
    Ok(Arc::new(config))
}

/// Errors and warnings for a chain: every certificate parses and is valid at `now`
/// (warning when it expires within [`EXPIRY_WARNING_DAYS`]), the leaf (first) names
/// `name`, and each certificate is followed by its issuer.
fn check_chain(
    certs: &[CertificateDer<'_>],
    name: Option<&str>,
    now: SystemTime,
) -> (Vec<String>, Vec<String>) {
    use x509_parser::prelude::*;
    let (mut errors, mut warnings) = (Vec::new(), Vec::new());
    if certs.is_empty() {
        errors.push("no certificate".to_string());
        return (errors, warnings);
    }
    let now = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let mut parsed = Vec::new();
    for (i, der) in certs.iter().enumerate() {
        let which = if i == 0 {
            "certificate".to_string()
        } else {
            format!("certificate {} of the chain", i + 1)
        };
        let cert = match X509Certificate::from_der(der) {
            Ok((_, cert)) => cert,
            Err(e) => {
                errors.push(format!("{which} does not parse: {e}"));
                continue;
            }
        };
        let validity = cert.validity();
        let not_after = validity.not_after.timestamp();
        let days_left = (not_after - now).div_euclid(86_400);
        if now < validity.not_before.timestamp() {
            errors.push(format!(
                "{which} is not valid before {}",
                validity.not_before
            ));
        } else if now > not_after {
            errors.push(format!(
                "{which} expired on {} ({} days ago)",
                validity.not_after, -days_left
            ));
        } else if days_left < EXPIRY_WARNING_DAYS {
            warnings.push(format!(
                "{which} expires on {} (in {days_left} days)",
                validity.not_after
            ));
        }
        parsed.push((i, cert));
    }
    for pair in parsed.windows(2) {
        if let [(i, cert), (j, issuer)] = pair
            && *j == i + 1
            && cert.issuer() != issuer.subject()
        {
            warnings.push(format!(
                "certificate {} of the chain ({}) did not issue certificate {} (issued by {}): \
                 put the server's certificate first, then each issuer in turn",
                j + 1,
                issuer.subject(),
                i + 1,
                cert.issuer()
            ));
        }
    }
    if let (Some(name), Some((0, leaf))) = (name, parsed.first())
        && let Err(e) = check_name(leaf, name)
    {
        errors.push(e);
    }
    (errors, warnings)
}

fn check_name(
    cert: &x509_parser::certificate::X509Certificate<'_>,
    name: &str,
) -> Result<(), String> {
    use x509_parser::prelude::*;
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
    if names
        .iter()
        .any(|n| name_matches(&n.to_ascii_lowercase(), &wanted))
    {
        Ok(())
    } else {
        Err(format!("certificate names {names:?}, not {name}"))
    }
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

    #[test]
    fn a_chain_out_of_order_is_a_warning_and_a_wrong_name_an_error() {
        let pki = super::super::test_pki::ThrowawayPki::new(&["localhost"]).unwrap();
        let now = SystemTime::now();
        let (errors, warnings) = check_chain(&pki.chain, Some("localhost"), now);
        assert!(
            errors.is_empty() && warnings.is_empty(),
            "{errors:?} {warnings:?}"
        );
        let reversed: Vec<_> = pki.chain.iter().rev().cloned().collect();
        let (errors, warnings) = check_chain(&reversed, None, now);
        assert!(errors.is_empty(), "{errors:?}");
        assert!(
            warnings[0].contains("did not issue certificate 1"),
            "{warnings:?}"
        );
        let (errors, _) = check_chain(&pki.chain, Some("time.example.org"), now);
        assert!(errors[0].contains("not time.example.org"), "{errors:?}");
        let (errors, _) = check_chain(&[], None, now);
        assert_eq!(errors, ["no certificate"]);
    }
}

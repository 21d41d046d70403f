//! A throwaway CA and server certificate made on the spot, for `ntimed demo` and tests;
//! the only place that uses `rcgen`. Nothing in `ntimed run` reaches it.

use std::sync::Arc;
use std::time::SystemTime;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, ServerConfig};

use super::certs::{ServerCertError, server_config_with};
use super::ke_client::client_config_with;

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

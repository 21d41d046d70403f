//! What a reload re-reads, and the checks it passes before anything is swapped: the
//! `[keys]` file, each `[[nts-ke-server]]`'s certificate chain and key, the `[nts]`
//! fleet secret and the `[leap] file`, at the paths the configuration named at the start.
//!
//! Reading needs the files (the supervisor reads them when privileges are separated:
//! the engine is chrooted); checking needs only the bytes, so the engine checks again
//! what it is sent rather than trusting a frame.

use std::sync::Arc;
use std::time::SystemTime;

use zeroize::Zeroizing;

use crate::auth::KeyStore;
use crate::auth::nts::cookie::{CookieKeys, Rotation};
use crate::config::Loaded;
use crate::daemon::nts::{self, CertificateFiles};
use crate::sync::leap_file::LeapFile;
use crate::util::{Problems, Severity};

/// Fleet secrets are short; anything larger is refused unread (as at the start).
const MAX_FLEET_SECRET_LEN: u64 = 4096;

/// The files as read, not yet parsed.
pub struct Material {
    /// The `[keys]` file, when there is one.
    pub keys: Option<Zeroizing<Vec<u8>>>,
    /// One per `[[nts-ke-server]]`, in config order.
    pub certificates: Vec<CertificateFiles>,
    /// The `[nts] fleet-secret` file, when there is one.
    pub fleet_secret: Option<Zeroizing<Vec<u8>>>,
    /// The `[leap] file`, when there is one: its bytes, or why it could not be read.
    pub leap_file: Option<Result<Vec<u8>, String>>,
}

/// Everything in [`Material`], parsed and checked: what a reload swaps in.
pub struct Checked {
    pub keys: Option<KeyStore>,
    pub tls: Vec<Arc<rustls::ServerConfig>>,
    pub fleet_secret: Option<Zeroizing<Vec<u8>>>,
    pub leap_file: Option<LeapFile>,
    /// Warnings (a certificate that expires soon, say), for the reply.
    pub warnings: Vec<String>,
}

impl Material {
    /// Reads every file `loaded` names, as the start did (a secret that group or others
    /// can read is refused). Every unreadable file is named in the error.
    pub fn read(loaded: &Loaded) -> Result<Self, String> {
        let config = &loaded.config;
        let mut problems = Problems::default();
        let keys = config.keys.as_ref().and_then(|section| {
            let read = KeyStore::read_file(&loaded.path(&section.file));
            problems.take(read.map_err(|e| e.to_string()))
        });
        let certificates: Vec<_> = config
            .nts_ke_servers
            .iter()
            .filter_map(|s| {
                let (chain, key) = (
                    loaded.path(&s.certificate_chain),
                    loaded.path(&s.private_key),
                );
                nts::read_certificate_files(&chain, &key, &mut problems)
            })
            .collect();
        let fleet_secret = config
            .nts
            .as_ref()
            .and_then(|n| n.fleet_secret.as_ref())
            .and_then(|path| {
                let path = loaded.path(path);
                let read = crate::auth::keys::read_private_file(&path, MAX_FLEET_SECRET_LEN)
                    .map_err(|e| format!("{}: {e}", path.display()));
                problems.take(read)
            });
        // As at the start, a leap file that cannot be read is a warning (the old one
        // stays): it must not keep new keys and certificates out.
        let leap_file = config
            .leap_file()
            .map(|file| crate::daemon::leap::read(&loaded.path(file)));
        if problems.count(Severity::Error) > 0 {
            return Err(errors(&problems));
        }
        Ok(Self {
            keys,
            certificates,
            fleet_secret,
            leap_file,
        })
    }

    /// Parses and checks everything against the configuration: the key file parses
    /// and still holds every key id a source or peer uses; each certificate is valid
    /// at `now`, names the server and matches its key; the fleet secret is long
    /// enough. Every problem is named in the error; nothing is half-accepted.
    pub fn check(&self, loaded: &Loaded, now: SystemTime) -> Result<Checked, String> {
        let config = &loaded.config;
        let mut problems = Problems::default();
        if self.keys.is_some() != config.keys.is_some()
            || self.certificates.len() != config.nts_ke_servers.len()
            || self.fleet_secret.is_some() != fleet_configured(loaded)
            || self.leap_file.is_some() != config.leap_file().is_some()
        {
            return Err("the files sent do not match the configuration".into());
        }
        let keys = match (&self.keys, &config.keys) {
            (Some(bytes), Some(section)) => {
                let name = loaded.path(&section.file).display().to_string();
                let parsed = KeyStore::parse_bytes(&name, bytes, section.format);
                problems
                    .take(parsed.map_err(|e| e.to_string()))
                    .filter(|store| keeps_used_ids(store, loaded, &name, &mut problems))
            }
            _ => None,
        };
        let tls: Vec<_> = self
            .certificates
            .iter()
            .zip(&config.nts_ke_servers)
            .filter_map(|(files, section)| {
                nts::server_config_from(files, section.name.as_deref(), now, &mut problems)
            })
            .collect();
        if let Some(secret) = &self.fleet_secret {
            // The same check the start makes; the rotation does not matter to it.
            problems.take(CookieKeys::fleet(Rotation::default(), secret).map(|_| ()));
        }
        // A leap file that cannot be used is a warning and the old one stays, as at the
        // start: keys and certificates are reloaded all the same. An expired one is
        // taken, with a warning, and announces nothing.
        let leap_file = match (&self.leap_file, config.leap_file()) {
            (Some(read), Some(file)) => {
                let path = loaded.path(file);
                let now = crate::wire::NtpTimestamp::from_system_time(now);
                // Parsed from the bytes as sent, not a copy of them.
                let parsed = match read {
                    Ok(bytes) => crate::daemon::leap::parse(&path, bytes, now, &mut problems),
                    Err(e) => Err(e.clone()),
                };
                parsed
                    .map_err(|e| problems.warning(format!("{e}; the leap file in use stays")))
                    .ok()
            }
            _ => None,
        };
        if problems.count(Severity::Error) > 0 {
            return Err(errors(&problems));
        }
        let warnings = problems
            .iter()
            .filter(|p| p.severity == Severity::Warning)
            .map(|p| p.text.clone())
            .collect();
        Ok(Checked {
            keys,
            tls,
            fleet_secret: self.fleet_secret.clone(),
            leap_file,
            warnings,
        })
    }
}

fn fleet_configured(loaded: &Loaded) -> bool {
    let nts = loaded.config.nts.as_ref();
    nts.is_some_and(|n| n.fleet_secret.is_some())
}

/// Whether `store` still has every key a `[[source]]` or `[[peer]]` uses, recording a
/// problem for each that is gone.
fn keeps_used_ids(store: &KeyStore, loaded: &Loaded, name: &str, problems: &mut Problems) -> bool {
    let config = &loaded.config;
    let used = config
        .sources
        .iter()
        .filter_map(|s| s.get_ref().key)
        .chain(config.peers.iter().filter_map(|p| p.get_ref().key));
    let mut all = true;
    for id in used {
        if store.get(id).is_none() {
            problems.error(format!(
                "{name}: key {id} is used by a source or peer but is gone"
            ));
            all = false;
        }
    }
    all
}

/// Every error, one after the other.
fn errors(problems: &Problems) -> String {
    problems
        .iter()
        .filter(|p| p.severity == Severity::Error)
        .map(|p| p.text.as_str())
        .collect::<Vec<_>>()
        .join("; ")
}

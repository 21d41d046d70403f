//! NTS-KE over TLS 1.3 (tokio-rustls): the server that hands out keys and cookies,
//! and the client that fetches them. The negotiation itself is `auth::nts::ke`.
//!
//! * `exchange`: what both ends share (TLS provider, ALPN, reading a message, key export).
//! * `ke_client`: client TLS settings and the key exchange.
//! * `ke_server`: the KE server and its connection limiter.
//! * `certs`: loading the server's certificate and key, and checking them.
//! * `cookie_keys`: cookie master keys, loaded, rotated and saved.
//! * [`test_pki`]: a throwaway PKI for the demo and tests.

mod certs;
mod cookie_keys;
mod exchange;
mod ke_client;
mod ke_server;
pub mod test_pki;

pub use certs::{
    CertificateFiles, MAX_PEM_LEN, ServerCertError, read_certificate_files, server_config,
    server_config_from, server_config_with,
};
pub use cookie_keys::{COOKIE_KEY_FILE, load_cookie_keys, persist_cookie_keys, spawn_rotation};
pub use exchange::ALPN;
pub use ke_client::{
    DEFAULT_KE_PORT, KeOutcome, client_config, client_config_with, establish, key_exchange,
};
pub use ke_server::{
    KeLimits, KeStats, RunningKeServer, SharedTls, start_ke_server, start_ke_server_on,
};

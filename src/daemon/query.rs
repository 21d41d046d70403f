//! `ntimed query`: one-shot exchanges with a server, each from a fresh random port.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::auth::SymmetricKey;
use crate::proto::client::{
    Authenticated, ClientAuth, ClientExchange, RequestError, Response, Sample,
};
use crate::wire::KissCode;

/// How replies must be authenticated.
pub enum QueryAuth {
    None,
    Key(SymmetricKey),
    /// NTS: keys from the NTS-KE server named by the query's host and this port.
    Nts {
        ke_port: u16,
        tls: Arc<rustls::ClientConfig>,
    },
}

pub struct QueryOptions {
    pub auth: QueryAuth,
    pub count: u32,
    pub timeout: Duration,
    pub interval: Duration,
}

/// One accepted reply, as `ntimed query` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub server: String,
    /// Seconds; positive when the server is ahead of this machine.
    pub offset: f64,
    pub delay: f64,
    pub stratum: u8,
    pub refid: String,
    pub leap: &'static str,
    pub root_distance: f64,
    pub authenticated: bool,
    /// "none", "key" or "nts".
    pub authentication: &'static str,
    pub key_id: Option<u32>,
    /// Set when the reply must never steer a clock (unsynchronized, too far).
    pub unusable: Option<&'static str>,
}

/// A reply in one line, for people.
impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = self;
        let auth = match (r.authentication, r.key_id) {
            ("nts", _) => "authenticated (NTS)".to_string(),
            (_, Some(id)) => format!("authenticated (key {id})"),
            _ => "NOT authenticated".to_string(),
        };
        let warning = r
            .unusable
            .map(|why| format!("\n  warning: unusable: {why}"))
            .unwrap_or_default();
        write!(
            f,
            "{}  offset {:+.6} s  delay {:.6} s  stratum {}  refid {}  leap {}  root distance {:.6} s  {auth}{warning}",
            r.server, r.offset, r.delay, r.stratum, r.refid, r.leap, r.root_distance
        )
    }
}

impl Report {
    fn new(server: SocketAddr, sample: &Sample) -> Self {
        let (authentication, key_id) = match sample.authenticated {
            Authenticated::No => ("none", None),
            Authenticated::Key(id) => ("key", Some(id)),
            Authenticated::Nts => ("nts", None),
        };
        Self {
            server: server.to_string(),
            offset: sample.offset,
            delay: sample.delay,
            stratum: sample.stratum,
            refid: sample.reference_id.describe(sample.stratum),
            leap: sample.leap.name(),
            root_distance: sample.root_distance(),
            authenticated: sample.authenticated != Authenticated::No,
            authentication,
            key_id,
            unusable: sample.unusable_reason(),
        }
    }
}

/// The NTP server to talk to and how, after NTS-KE if needed.
async fn connect(
    host: &str,
    port: u16,
    auth: &QueryAuth,
    timeout: Duration,
) -> Result<(SocketAddr, ClientAuth), String> {
    match auth {
        QueryAuth::None => Ok((super::net::resolve(host, port).await?, ClientAuth::None)),
        QueryAuth::Key(key) => Ok((
            super::net::resolve(host, port).await?,
            ClientAuth::Key(key.clone()),
        )),
        QueryAuth::Nts { ke_port, tls } => {
            let (session, server) =
                super::nts::establish(host, *ke_port, tls.clone(), timeout, (host, 123)).await?;
            Ok((server, ClientAuth::Nts(session)))
        }
    }
}

/// Runs up to `count` exchanges with `host` (`port` is the NTP port, or the NTS-KE
/// port for NTS); one result per exchange. A DENY or RSTR kiss ends the run; RATE
/// doubles the interval; two NTSNs in a row, or running out of cookies, run NTS-KE
/// again.
pub async fn query(host: &str, port: u16, options: QueryOptions) -> Vec<Result<Report, String>> {
    let mut results = Vec::new();
    let mut interval = options.interval;
    let mut session: Option<(SocketAddr, ClientExchange)> = None;
    let mut naks = 0;
    for i in 0..options.count {
        if i > 0 {
            tokio::time::sleep(interval).await;
        }
        if session.is_none() {
            match connect(host, port, &options.auth, options.timeout).await {
                Ok((server, auth)) => session = Some((server, ClientExchange::new(auth, 6))),
                // A one-shot tool does not wait out a re-keying backoff: it stops.
                Err(e) => {
                    results.push(Err(e));
                    break;
                }
            }
        }
        let Some((server, client)) = session.as_mut() else {
            continue;
        };
        let server = *server;
        match exchange(server, client, options.timeout).await {
            Ok(Response::Sample(sample)) => {
                naks = 0;
                results.push(Ok(Report::new(server, &sample)));
            }
            Ok(Response::Kiss(code)) => {
                results.push(Err(format!("{server}: kiss-o'-death {code:?}")));
                match code {
                    KissCode::Deny | KissCode::Restrict => break,
                    KissCode::Rate => interval *= 2,
                    // Keep the old cookies for one more try; re-key after a second NTSN.
                    KissCode::NtsNak => {
                        naks += 1;
                        if naks >= 2 {
                            session = None;
                        }
                    }
                    KissCode::Other(_) => {}
                }
            }
            Err(ExchangeError::NoCookies) => {
                session = None;
                results.push(Err(format!(
                    "{server}: out of NTS cookies; key exchange again"
                )));
            }
            Err(ExchangeError::Other(message)) => results.push(Err(message)),
        }
    }
    results
}

enum ExchangeError {
    NoCookies,
    Other(String),
}

/// Sends one request and waits for a reply that passes every check. Replies that fail
/// are ignored (an attacker's forgery must not end the wait) but remembered for the
/// error message.
async fn exchange(
    server: SocketAddr,
    client: &mut ClientExchange,
    timeout: Duration,
) -> Result<Response, ExchangeError> {
    let other = ExchangeError::Other;
    let socket = super::net::client_socket(server)
        .map_err(|e| other(format!("{server}: cannot open socket: {e}")))?;
    let mut request = Vec::new();
    client
        .poll_request(super::now(), &mut rand::rng(), &mut request)
        .map_err(|RequestError::NoCookies| ExchangeError::NoCookies)?;
    socket
        .send(&request)
        .await
        .map_err(|e| other(format!("{server}: send: {e}")))?;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = vec![0u8; 65_536];
    let mut rejected: Option<String> = None;
    let mut rejected_count = 0;
    let mut nak_seen = false;
    loop {
        let len = match tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
            Ok(Ok(len)) => len,
            // An ICMP error (anyone can forge one) must not end the wait either.
            Ok(Err(e)) => {
                rejected = Some(e.to_string());
                rejected_count += 1;
                continue;
            }
            Err(_) if nak_seen => return Ok(Response::Kiss(KissCode::NtsNak)),
            Err(_) => {
                let why = rejected
                    .map(|r| format!(" ({rejected_count} rejected, last: {r})"))
                    .unwrap_or_default();
                return Err(other(format!(
                    "{server}: no valid reply within {:.1} s{why}",
                    timeout.as_secs_f64()
                )));
            }
        };
        let received = super::now();
        match client.handle_response(buf.get(..len).unwrap_or_default(), received) {
            // An NTSN is unauthenticated: keep waiting for a genuine reply until the
            // deadline, and report the NTSN only if none comes.
            Ok(Response::Kiss(KissCode::NtsNak)) => nak_seen = true,
            Ok(response) => return Ok(response),
            Err(reject) => {
                tracing::debug!("{server}: dropped reply: {reject}");
                rejected = Some(reject.to_string());
                rejected_count += 1;
            }
        }
    }
}

//! `ntimed query`: one-shot exchanges with a server, each from a fresh random port.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;

use crate::auth::SymmetricKey;
use crate::proto::client::{ClientExchange, Response, Sample};
use crate::wire::KissCode;

pub struct QueryOptions {
    pub key: Option<SymmetricKey>,
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
    pub key_id: Option<u32>,
    /// Set when the reply must never steer a clock (unsynchronized, too far).
    pub unusable: Option<&'static str>,
}

impl Report {
    fn new(server: SocketAddr, sample: &Sample) -> Self {
        Self {
            server: server.to_string(),
            offset: sample.offset,
            delay: sample.delay,
            stratum: sample.stratum,
            refid: sample.reference_id.describe(sample.stratum),
            leap: sample.leap.name(),
            root_distance: sample.root_distance(),
            authenticated: sample.key_id.is_some(),
            key_id: sample.key_id,
            unusable: sample.unusable_reason(),
        }
    }
}

/// Runs up to `count` exchanges with `server`; one result per exchange. A DENY or RSTR
/// kiss ends the run; RATE doubles the interval.
pub async fn query(server: SocketAddr, options: QueryOptions) -> Vec<Result<Report, String>> {
    let mut client = ClientExchange::new(options.key, 6);
    let mut interval = options.interval;
    let mut results = Vec::new();
    for i in 0..options.count {
        if i > 0 {
            tokio::time::sleep(interval).await;
        }
        match exchange(server, &mut client, options.timeout).await {
            Ok(Response::Sample(sample)) => results.push(Ok(Report::new(server, &sample))),
            Ok(Response::Kiss(code)) => {
                results.push(Err(format!("{server}: kiss-o'-death {code:?}")));
                match code {
                    KissCode::Deny | KissCode::Restrict => break,
                    KissCode::Rate => interval *= 2,
                    _ => {}
                }
            }
            Err(message) => results.push(Err(message)),
        }
    }
    results
}

/// Sends one request and waits for a reply that passes every check. Replies that fail
/// are ignored (an attacker's forgery must not end the wait) but remembered for the
/// error message.
async fn exchange(
    server: SocketAddr,
    client: &mut ClientExchange,
    timeout: Duration,
) -> Result<Response, String> {
    let socket = super::net::client_socket(server)
        .await
        .map_err(|e| format!("{server}: cannot open socket: {e}"))?;
    let mut request = Vec::new();
    client.poll_request(super::now(), &mut request);
    socket
        .send(&request)
        .await
        .map_err(|e| format!("{server}: send: {e}"))?;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = [0u8; 4096];
    let mut rejected: Option<String> = None;
    let mut rejected_count = 0;
    loop {
        let len = match tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
            Ok(Ok(len)) => len,
            // An ICMP error (anyone can forge one) must not end the wait either.
            Ok(Err(e)) => {
                rejected = Some(e.to_string());
                rejected_count += 1;
                continue;
            }
            Err(_) => {
                let why = rejected
                    .map(|r| format!(" ({rejected_count} rejected, last: {r})"))
                    .unwrap_or_default();
                return Err(format!(
                    "{server}: no valid reply within {:.1} s{why}",
                    timeout.as_secs_f64()
                ));
            }
        };
        let received = super::now();
        match client.handle_response(buf.get(..len).unwrap_or_default(), received) {
            Ok(response) => return Ok(response),
            Err(reject) => {
                tracing::debug!("{server}: dropped reply: {reject}");
                rejected = Some(reject.to_string());
                rejected_count += 1;
            }
        }
    }
}

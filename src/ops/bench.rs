//! `ntimed bench`: a load generator for NTP servers on loopback. Many clients, each
//! with its own socket bound to its own 127.a.b.c address (Linux routes all of 127/8 to
//! `lo`), so a server sees them as distinct sources; together they send at a fixed rate
//! for a while, then at the next rate. Requests are plain, keyed or NTS, optionally
//! asking for interleaved mode, and every reply passes the same checks as the daemon's
//! ([`ClientExchange`]).
//!
//! Per rate step: requests sent, the share answered (an accepted reply before the
//! client's next request), response times, and with `--xleave` the share answered in
//! interleaved mode. A response time runs from the clock read just before the request
//! is sent to the kernel's receive time of the reply (`SO_TIMESTAMPNS`), so that how
//! soon the generator gets round to reading a reply does not count. The load is
//! measured, never asserted.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsFd;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::Instant;

use crate::auth::SymmetricKey;
use crate::auth::nts::aead::{AeadAlgorithm, AeadKey};
use crate::auth::nts::cookie::SessionKeys;
use crate::auth::nts::ntp::NtsSession;
use crate::proto::client::{ClientAuth, ClientExchange, Response};
use crate::wire::NtpTimestamp;

/// The first client's address; client `i` has the `i`-th after it.
const FIRST_CLIENT: Ipv4Addr = Ipv4Addr::new(127, 101, 0, 1);
/// At most this many clients (all within 127.101.0.0/16 and after).
pub const MAX_CLIENTS: usize = 65_536;
/// Cookies each NTS client starts with (replies bring more).
const NTS_COOKIES: usize = 8;
/// Response times kept per step for the percentiles (a uniform sample of them, 32 MB),
/// so that memory stays bounded whatever the rate and duration.
const KEPT_TIMES: usize = 1 << 22;

/// How the clients authenticate.
#[derive(Debug, Clone)]
pub enum BenchAuth {
    None,
    Key(SymmetricKey),
    /// Keys and one cookie as `ntimed ke --export` prints them; every client starts
    /// with copies of the cookie.
    Nts {
        c2s: Vec<u8>,
        s2c: Vec<u8>,
        cookie: Vec<u8>,
    },
}

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub server: SocketAddr,
    /// Requests per second, one step each.
    pub rates: Vec<u32>,
    /// Seconds per step.
    pub duration: f64,
    pub clients: usize,
    pub auth: BenchAuth,
    pub xleave: bool,
}

/// What one rate step measured.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StepReport {
    pub rate: u32,
    pub sent: u64,
    /// Requests with an accepted reply, in percent of those sent.
    pub answered_percent: f64,
    /// Requests without one (lost, late or rejected), in percent.
    pub lost_percent: f64,
    /// Replies that failed a check (late ones included).
    pub rejected: u64,
    /// Response times of the answered requests, microseconds.
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    /// With `--xleave`: requests answered in interleaved mode, in percent of those sent.
    pub interleaved_percent: Option<f64>,
}

/// One client's counts for a step.
#[derive(Default)]
struct Tally {
    sent: u64,
    answered: u64,
    interleaved: u64,
    rejected: u64,
    /// A uniform sample of the response times (seconds), at most `keep` of them.
    response_times: Vec<f64>,
    keep: usize,
    slowest: f64,
}

impl Tally {
    fn new(keep: usize) -> Self {
        Self {
            keep,
            ..Self::default()
        }
    }

    /// Counts an answer after `seconds` (reservoir sampling: every answer is equally
    /// likely to be among those kept).
    fn answered_after(&mut self, seconds: f64, interleaved: bool) {
        self.answered += 1;
        self.interleaved += u64::from(interleaved);
        self.slowest = self.slowest.max(seconds);
        if self.response_times.len() < self.keep {
            self.response_times.push(seconds);
        } else {
            let slot = rand::random_range(0..self.answered);
            if let Some(kept) = usize::try_from(slot)
                .ok()
                .and_then(|i| self.response_times.get_mut(i))
            {
                *kept = seconds;
            }
        }
    }
}

/// The AEAD algorithm whose keys are `len` bytes long (RFC 8915's three).
fn algorithm_for(len: usize) -> Option<AeadAlgorithm> {
    AeadAlgorithm::PREFERENCE
        .into_iter()
        .find(|alg| AeadKey::new(*alg, &vec![0; len]).is_some())
}

fn client_auth(auth: &BenchAuth) -> Result<ClientAuth, String> {
    Ok(match auth {
        BenchAuth::None => ClientAuth::None,
        BenchAuth::Key(key) => ClientAuth::Key(key.clone()),
        BenchAuth::Nts { c2s, s2c, cookie } => {
            let alg = algorithm_for(c2s.len())
                .ok_or_else(|| format!("no NTS algorithm has {}-byte keys", c2s.len()))?;
            let key = |bytes: &[u8]| {
                AeadKey::new(alg, bytes).ok_or("the C2S and S2C keys differ in length")
            };
            let keys = SessionKeys {
                c2s: key(c2s)?,
                s2c: key(s2c)?,
            };
            ClientAuth::Nts(NtsSession::new(keys, vec![cookie.clone(); NTS_COOKIES]))
        }
    })
}

/// Bytes from hex digits (as `ntimed ke --export` prints keys and cookies); the
/// message never repeats the (secret) text.
pub fn parse_hex(text: &str) -> Result<Vec<u8>, String> {
    let digits: Option<Vec<u8>> = text
        .chars()
        .map(|c| c.to_digit(16).and_then(|d| u8::try_from(d).ok()))
        .collect();
    match digits {
        Some(d) if !d.is_empty() && d.len().is_multiple_of(2) => Ok(d
            .chunks_exact(2)
            .map(|p| p.iter().fold(0, |a, &x| a << 4 | x))
            .collect()),
        _ => Err("expected an even number of hex digits".into()),
    }
}

/// The address client `index` sends from.
fn client_address(index: usize) -> Option<IpAddr> {
    let index = u32::try_from(index).ok()?;
    u32::from(FIRST_CLIENT)
        .checked_add(index)
        .map(|a| IpAddr::V4(Ipv4Addr::from(a)))
}

/// Runs every step in turn and returns what each measured.
pub async fn run(options: &BenchOptions) -> Result<Vec<StepReport>, String> {
    if options.clients == 0 || options.clients > MAX_CLIENTS {
        return Err(format!("--clients must be 1 to {MAX_CLIENTS}"));
    }
    let mut sockets = Vec::with_capacity(options.clients);
    for index in 0..options.clients {
        let ip = client_address(index).ok_or("too many clients")?;
        let socket = UdpSocket::bind((ip, 0))
            .await
            .map_err(|e| format!("cannot bind {ip} (loopback only): {e}"))?;
        socket
            .connect(options.server)
            .await
            .map_err(|e| format!("cannot reach {} from {ip}: {e}", options.server))?;
        crate::sys::enable_receive_timestamps(socket.as_fd())
            .map_err(|e| format!("receive timestamps: {e}"))?;
        sockets.push(std::sync::Arc::new(socket));
    }
    let mut reports = Vec::new();
    for &rate in &options.rates {
        reports.push(step(options, &sockets, rate).await?);
    }
    Ok(reports)
}

/// One rate step: every client sends `rate / clients` requests a second, staggered.
async fn step(
    options: &BenchOptions,
    sockets: &[std::sync::Arc<UdpSocket>],
    rate: u32,
) -> Result<StepReport, String> {
    let interval = Duration::from_secs_f64(sockets.len() as f64 / f64::from(rate.max(1)));
    let start = Instant::now() + Duration::from_millis(50);
    let end = start + Duration::from_secs_f64(options.duration);
    let mut tasks = Vec::with_capacity(sockets.len());
    for (index, socket) in sockets.iter().enumerate() {
        let mut exchange = ClientExchange::new(client_auth(&options.auth)?, 0);
        if options.xleave {
            exchange = exchange.with_xleave();
        }
        let first = start + interval.mul_f64(index as f64 / sockets.len() as f64);
        tasks.push(tokio::spawn(client(
            socket.clone(),
            exchange,
            first,
            interval,
            end,
            (KEPT_TIMES / sockets.len()).max(1),
        )));
    }
    let mut total = Tally::default();
    for task in tasks {
        let tally = task.await.map_err(|e| format!("a client failed: {e}"))?;
        total.sent += tally.sent;
        total.answered += tally.answered;
        total.interleaved += tally.interleaved;
        total.rejected += tally.rejected;
        total.slowest = total.slowest.max(tally.slowest);
        total.response_times.extend(tally.response_times);
    }
    Ok(report(rate, options.xleave, total))
}

fn report(rate: u32, xleave: bool, mut tally: Tally) -> StepReport {
    let percent = |n: u64| {
        if tally.sent == 0 {
            0.0
        } else {
            100.0 * n as f64 / tally.sent as f64
        }
    };
    tally.response_times.sort_by(f64::total_cmp);
    let times = &tally.response_times;
    let quantile = |q: f64| {
        let index = ((times.len().saturating_sub(1)) as f64 * q).round() as usize;
        times.get(index).map_or(0.0, |t| t * 1e6)
    };
    StepReport {
        rate,
        sent: tally.sent,
        answered_percent: percent(tally.answered),
        lost_percent: percent(tally.sent - tally.answered),
        rejected: tally.rejected,
        p50_us: quantile(0.5),
        p99_us: quantile(0.99),
        max_us: tally.slowest * 1e6,
        interleaved_percent: xleave.then(|| percent(tally.interleaved)),
    }
}

/// One client: a request at `first` and every `interval` after until `end`, each
/// waiting for its reply until the next is due.
async fn client(
    socket: std::sync::Arc<UdpSocket>,
    mut exchange: ClientExchange,
    first: Instant,
    interval: Duration,
    end: Instant,
    keep: usize,
) -> Tally {
    let mut tally = Tally::new(keep);
    let mut request = Vec::with_capacity(1024);
    let mut replies = crate::sys::ReceiveBatch::new(1, 2048);
    let mut due = first;
    while due < end {
        tokio::time::sleep_until(due).await;
        let next = due + interval;
        due = next;
        let now = NtpTimestamp::from_system_time(std::time::SystemTime::now());
        if exchange
            .poll_request(now, &mut rand::rng(), &mut request)
            .is_err()
        {
            // Out of NTS cookies: every reply was lost or rejected; count the miss.
            tally.sent += 1;
            continue;
        }
        let sent = NtpTimestamp::from_system_time(std::time::SystemTime::now());
        if socket.send(&request).await.is_err() {
            tally.sent += 1;
            continue;
        }
        tally.sent += 1;
        loop {
            let readable = tokio::io::Interest::READABLE;
            let read = socket.async_io(readable, || replies.receive(socket.as_fd()));
            if !matches!(tokio::time::timeout_at(next, read).await, Ok(Ok(_))) {
                break;
            }
            let Some(reply) = replies.datagrams().next() else {
                continue;
            };
            let received = reply.kernel_time.map_or_else(
                || NtpTimestamp::from_system_time(std::time::SystemTime::now()),
                |(seconds, nanos)| NtpTimestamp::from_unix(seconds, nanos),
            );
            let after = received.seconds_since(sent);
            match exchange.handle_response(reply.data, received) {
                Ok(Response::Sample(_)) => {
                    let interleaved = exchange.last_sample_interleaved();
                    tally.answered_after(after, interleaved);
                    break;
                }
                Ok(Response::Kiss(_)) => {
                    tally.answered_after(after, false);
                    break;
                }
                Err(_) => tally.rejected += 1,
            }
        }
    }
    tally
}

/// The table `ntimed bench` prints.
pub fn format_table(reports: &[StepReport]) -> String {
    let mut out = String::from(
        "    rate       sent  answered     lost  rejected   p50 (us)   p99 (us)   max (us)  interleaved\n",
    );
    for r in reports {
        let interleaved = r
            .interleaved_percent
            .map_or("-".to_string(), |p| format!("{p:.2}%"));
        out.push_str(&format!(
            "{:>8} {:>10} {:>8.2}% {:>7.2}% {:>9} {:>10.1} {:>10.1} {:>10.1} {:>12}\n",
            r.rate,
            r.sent,
            r.answered_percent,
            r.lost_percent,
            r.rejected,
            r.p50_us,
            r.p99_us,
            r.max_us,
            interleaved
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_addresses_are_distinct_and_on_loopback() {
        let first = client_address(0).unwrap();
        let last = client_address(MAX_CLIENTS - 1).unwrap();
        assert_eq!(first, IpAddr::V4(Ipv4Addr::new(127, 101, 0, 1)));
        assert_eq!(last, IpAddr::V4(Ipv4Addr::new(127, 102, 0, 0)));
        assert!(first.is_loopback() && last.is_loopback());
    }

    #[test]
    fn hex_parses_and_rejects_what_is_not() {
        assert_eq!(parse_hex("00ff7A"), Ok(vec![0, 255, 0x7a]));
        for bad in ["", "0", "0g", "é0", "00 "] {
            assert!(parse_hex(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn nts_key_lengths_name_their_algorithm() {
        assert_eq!(algorithm_for(32), Some(AeadAlgorithm::AesSivCmac256));
        assert_eq!(algorithm_for(64), Some(AeadAlgorithm::AesSivCmac512));
        assert_eq!(algorithm_for(16), Some(AeadAlgorithm::AesGcmSiv128));
        assert_eq!(algorithm_for(20), None);
    }

    #[test]
    fn the_report_counts_shares_of_requests_sent() {
        let mut tally = Tally::new(1000);
        tally.sent = 200;
        tally.rejected = 3;
        for i in 1..=150 {
            tally.answered_after(f64::from(i) * 1e-6, i <= 100);
        }
        let r = report(1000, true, tally);
        assert_eq!((r.answered_percent, r.lost_percent), (75.0, 25.0));
        assert_eq!(r.interleaved_percent, Some(50.0));
        assert_eq!((r.p50_us.round(), r.max_us.round()), (76.0, 150.0));
        assert_eq!(
            report(1000, false, Tally::default()).interleaved_percent,
            None
        );
    }

    /// Memory stays bounded: past `keep` answers, a uniform sample is kept, and the
    /// slowest answer is still reported exactly.
    #[test]
    fn response_times_kept_are_bounded_and_uniform() {
        let mut tally = Tally::new(1000);
        for i in 0..100_000 {
            tally.answered_after(f64::from(i), false);
        }
        tally.sent = tally.answered;
        assert_eq!(tally.response_times.len(), 1000);
        let r = report(1, false, tally);
        // The median of 1000 draws: its standard deviation is about 1600.
        assert!((r.p50_us / 1e6 - 50_000.0).abs() < 8_000.0, "{}", r.p50_us);
        assert_eq!(r.max_us, 99_999.0 * 1e6);
    }
}

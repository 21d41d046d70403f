//! Prometheus metrics: `GET /metrics` on the `[metrics]` listener (ADVERSARIAL 33).
//!
//! HTTP/1.1 by hyper, one request per connection; the exposition is the Prometheus
//! text format written by prometheus-client, from the same snapshot and counters
//! `ntimed ctl` answers from ([`Control`]). Everything but `GET /metrics` is refused:
//! 404 for another path, 405 for another method. Like the NTS-KE server, what one
//! client can take is bounded: [`MAX_CONNECTIONS`] are served at once, and a newcomer
//! that finds no room ends the oldest of them that has not sent its request head (or,
//! if all are being answered, is closed). A request head must arrive within
//! [`HEADER_TIMEOUT`] and fit in [`MAX_REQUEST_HEAD`] bytes (else 431), and a whole
//! connection lasts at most [`CONNECTION_TIMEOUT`]. Nothing secret is in any metric: key ids and the cookie key
//! epoch are numbers that name keys, never keys.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::control::{Control, ServerCounters, Snapshot};
use crate::sync::SourceState;

/// Connections served at once (as the control socket).
pub const MAX_CONNECTIONS: usize = 16;
/// A request head must arrive whole within this long.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
/// A connection is closed after this long, whatever it is doing.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest request head read (hyper's smallest buffer); larger ones get 431.
pub const MAX_REQUEST_HEAD: usize = 8192;
/// The only path served.
pub const PATH: &str = "/metrics";

/// A connection being served.
struct Slot {
    id: u64,
    accepted: Instant,
    /// Set once its request head is read: from then on it is being answered.
    answering: Arc<AtomicBool>,
    /// Ends it early (sent on eviction).
    evict: oneshot::Sender<()>,
}

/// The connections being served, at most [`MAX_CONNECTIONS`]. As the NTS-KE server
/// does (ADVERSARIAL 5), a newcomer that finds no room ends the oldest connection
/// that has not sent its request head yet; if every one is being answered, the
/// newcomer is closed. So idle connections cannot keep a scrape out: a scraper sends
/// its head at once, and is then never ended for a newcomer.
#[derive(Default)]
struct Slots {
    next_id: u64,
    slots: Vec<Slot>,
}

impl Slots {
    /// Admits a connection: its id, its answering flag and what ends it early.
    fn admit(&mut self, now: Instant) -> Option<(u64, Arc<AtomicBool>, oneshot::Receiver<()>)> {
        if self.slots.len() >= MAX_CONNECTIONS {
            let idle = self
                .slots
                .iter()
                .enumerate()
                .filter(|(_, s)| !s.answering.load(Ordering::Relaxed))
                .min_by_key(|(_, s)| s.accepted)
                .map(|(i, _)| i)?;
            let evicted = self.slots.swap_remove(idle);
            let _ = evicted.evict.send(());
        }
        self.next_id += 1;
        let answering = Arc::new(AtomicBool::new(false));
        let (evict, evicted) = oneshot::channel();
        self.slots.push(Slot {
            id: self.next_id,
            accepted: now,
            answering: answering.clone(),
            evict,
        });
        Some((self.next_id, answering, evicted))
    }

    fn finish(&mut self, id: u64) {
        if let Some(i) = self.slots.iter().position(|s| s.id == id) {
            self.slots.swap_remove(i);
        }
    }
}

fn lock(slots: &Mutex<Slots>) -> std::sync::MutexGuard<'_, Slots> {
    slots
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Serves `listener` until the task is aborted.
pub fn spawn(
    listener: std::net::TcpListener,
    observer: Arc<Control>,
) -> std::io::Result<JoinHandle<()>> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let slots = Arc::new(Mutex::new(Slots::default()));
    Ok(tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors, say: wait rather than spin.
                    tracing::debug!("metrics: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Some((id, answering, evicted)) = lock(&slots).admit(Instant::now()) else {
                continue;
            };
            let (slots, observer) = (slots.clone(), observer.clone());
            tokio::spawn(async move {
                tokio::select! {
                    _ = tokio::time::timeout(CONNECTION_TIMEOUT, serve(stream, observer, answering)) => {}
                    _ = evicted => {}
                }
                lock(&slots).finish(id);
            });
        }
    }))
}

async fn serve(stream: tokio::net::TcpStream, observer: Arc<Control>, answering: Arc<AtomicBool>) {
    let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
        answering.store(true, Ordering::Relaxed);
        let observer = observer.clone();
        async move {
            let response = respond(&observer, request.method(), request.uri().path()).await;
            Ok::<_, Infallible>(response)
        }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_REQUEST_HEAD)
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service);
    if let Err(e) = connection.await {
        tracing::debug!("metrics: {e}");
    }
}

/// The answer to `method path`.
pub async fn respond(observer: &Control, method: &Method, path: &str) -> Response<Full<Bytes>> {
    if path != PATH {
        return text(StatusCode::NOT_FOUND, "only /metrics is served\n".into());
    }
    if method != Method::GET {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET"));
        return response;
    }
    // Without an answer from the client role, the servers' metrics are still worth
    // having.
    let snapshot = match observer.snapshot().await {
        Ok(snapshot) => Some(snapshot),
        Err(e) => {
            tracing::debug!("metrics: {e}");
            None
        }
    };
    match encode(snapshot.as_ref(), &observer.server_counters()) {
        Ok(body) => {
            let mut response = text(StatusCode::OK, body);
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(
                    prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                ),
            );
            response
        }
        Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode\n".into()),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

type Labels = Vec<(&'static str, String)>;

/// A metric whose samples are written in the order given (sources in config
/// order), which prometheus-client's `Family`, a hash map, does not keep. Nothing is
/// written without samples.
#[derive(Debug)]
struct Ordered<M> {
    name: &'static str,
    help: &'static str,
    unit: Option<Unit>,
    samples: Vec<(Labels, M)>,
}

impl<M: EncodeMetric + std::fmt::Debug + Send + Sync + 'static> Collector for Ordered<M> {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some((first_labels, first)) = self.samples.first() else {
            return Ok(());
        };
        // The same full stop as the HELP of metrics registered the usual way.
        let help = format!("{}.", self.help);
        let mut metric =
            encoder.encode_descriptor(self.name, &help, self.unit.as_ref(), first.metric_type())?;
        if first_labels.is_empty() {
            return first.encode(metric);
        }
        for (labels, value) in &self.samples {
            value.encode(metric.encode_family(labels)?)?;
        }
        Ok(())
    }
}

/// Registers a labelled metric, its samples in the order given.
fn ordered<M: EncodeMetric + std::fmt::Debug + Send + Sync + 'static>(
    r: &mut Registry,
    name: &'static str,
    help: &'static str,
    unit: Option<Unit>,
    samples: impl IntoIterator<Item = (Labels, M)>,
) {
    r.register_collector(Box::new(Ordered {
        name,
        help,
        unit,
        samples: samples.into_iter().collect(),
    }));
}

/// Registers an unlabelled metric, in its turn among the ordered ones.
fn single<M: EncodeMetric + std::fmt::Debug + Send + Sync + 'static>(
    r: &mut Registry,
    name: &'static str,
    help: &'static str,
    unit: Option<Unit>,
    metric: M,
) {
    ordered(r, name, help, unit, [(Vec::new(), metric)]);
}

/// Labelled counters: `key` = each value.
fn counters(
    key: &'static str,
    samples: &[(&'static str, u64)],
) -> impl Iterator<Item = (Labels, ConstCounter)> {
    samples
        .iter()
        .map(move |&(value, count)| (vec![(key, value.to_string())], ConstCounter::new(count)))
        .collect::<Vec<_>>()
        .into_iter()
}

fn flag(b: bool) -> i64 {
    i64::from(b)
}

/// The exposition: the client role's state from `snapshot` (when the driver
/// answered) and the servers' counters.
pub fn encode(
    snapshot: Option<&Snapshot>,
    counters_now: &ServerCounters,
) -> Result<String, std::fmt::Error> {
    let mut r = Registry::with_prefix("ntimed");
    if let Some(snapshot) = snapshot {
        register_client(&mut r, snapshot);
    }
    register_server(&mut r, counters_now);
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &r)?;
    Ok(out)
}

fn register_client(r: &mut Registry, snapshot: &Snapshot) {
    let s = &snapshot.status;
    single(
        r,
        "synchronized",
        "1 while the clock is synchronized to a source",
        None,
        ConstGauge::new(flag(s.synchronized)),
    );
    single(
        r,
        "stratum",
        "The stratum served (16: unsynchronized)",
        None,
        ConstGauge::new(i64::from(s.stratum)),
    );
    if let Some(offset) = s.offset {
        single(
            r,
            "offset",
            "The reference source's offset estimate, as ntimed ctl status shows it",
            Some(Unit::Seconds),
            ConstGauge::new(offset),
        );
    }
    if let Some(error) = s.offset_error {
        single(
            r,
            "offset_error",
            "The error bound of that offset estimate",
            Some(Unit::Seconds),
            ConstGauge::new(error),
        );
    }
    single(
        r,
        "frequency_ppm",
        "The frequency correction applied to the clock, parts per million",
        None,
        ConstGauge::new(s.frequency_ppm),
    );
    single(
        r,
        "root_delay",
        "The round-trip delay to the stratum-1 source, as served",
        Some(Unit::Seconds),
        ConstGauge::new(s.root_delay),
    );
    single(
        r,
        "root_dispersion",
        "The dispersion to the stratum-1 source, as served",
        Some(Unit::Seconds),
        ConstGauge::new(s.root_dispersion),
    );
    let rows = &snapshot.sources;
    let source = |name: &str| vec![("source", name.to_string())];
    ordered(
        r,
        "source_reach",
        "The source's reachability register (8 polls, 1 bit each; 255: all answered)",
        None,
        rows.iter()
            .map(|s| (source(&s.name), ConstGauge::new(i64::from(s.reach)))),
    );
    ordered(
        r,
        "source_offset",
        "The offset of the source's best sample",
        Some(Unit::Seconds),
        rows.iter()
            .filter_map(|s| Some((source(&s.name), ConstGauge::new(s.offset?)))),
    );
    ordered(
        r,
        "source_delay",
        "The round-trip delay of the source's last sample used",
        Some(Unit::Seconds),
        rows.iter()
            .filter_map(|s| Some((source(&s.name), ConstGauge::new(s.delay?)))),
    );
    ordered(
        r,
        "source_state",
        "1 for the source's selection state, 0 for the others",
        None,
        rows.iter().flat_map(|s| {
            SourceState::ALL.iter().map(|state| {
                let labels = vec![
                    ("source", s.name.clone()),
                    ("state", state.name().to_string()),
                ];
                (labels, ConstGauge::new(flag(s.state == state.name())))
            })
        }),
    );
    ordered(
        r,
        "source_nts_cookies",
        "NTS cookies the source has left",
        None,
        rows.iter().filter_map(|s| {
            let cookies = i64::try_from(s.nts_cookies?).unwrap_or(i64::MAX);
            Some((source(&s.name), ConstGauge::new(cookies)))
        }),
    );
    ordered(
        r,
        "refclock_drops",
        "Readings of a reference clock dropped as bad input (ADVERSARIAL 38)",
        None,
        rows.iter()
            .filter_map(|s| Some((source(&s.name), ConstCounter::new(s.drops?)))),
    );
}

fn register_server(r: &mut Registry, c: &ServerCounters) {
    ordered(
        r,
        "server_requests",
        "NTP requests answered, by how they were authenticated",
        None,
        counters(
            "kind",
            &[
                ("plain", c.answered.plain),
                ("keyed", c.answered.keyed),
                ("nts", c.answered.nts),
            ],
        ),
    );
    single(
        r,
        "server_peer_requests",
        "Of the requests answered plain or keyed, symmetric-active ones from unconfigured peers",
        None,
        ConstCounter::new(c.answered.peer),
    );
    single(
        r,
        "server_interleaved_responses",
        "Of the requests answered, those answered in interleaved mode (RFC 9769)",
        None,
        ConstCounter::new(c.answered.interleaved),
    );
    single(
        r,
        "server_kernel_transmit_times",
        "Replies whose transmit time the kernel reported, which the client's next interleaved answer carries",
        None,
        ConstCounter::new(c.answered.kernel_transmit_times),
    );
    let d = &c.dropped;
    ordered(
        r,
        "server_drops",
        "NTP requests not answered, by reason",
        None,
        counters(
            "reason",
            &[
                ("malformed", d.malformed),
                ("refused", d.refused),
                ("auth_failed", d.auth_failed),
                ("denied", d.denied),
                ("unauthenticated", d.unauthenticated),
                ("rate_limited", c.rate_limited),
            ],
        ),
    );
    ordered(
        r,
        "server_kisses",
        "Kiss-o'-Death and NAK answers sent, by code",
        None,
        counters(
            "code",
            &[
                ("RATE", c.rate_kisses),
                ("DENY", c.deny_kisses),
                ("NTSN", c.nts_naks),
                ("crypto_nak", c.crypto_naks),
            ],
        ),
    );
    let k = &c.nts_ke;
    // No [[nts-ke-server]]: nothing to say (a row of zeros would suggest there is one).
    if k.servers == 0 {
        return;
    }
    single(
        r,
        "nts_ke_exchanges",
        "NTS key exchanges answered with keys and cookies",
        None,
        ConstCounter::new(k.completed),
    );
    let f = &k.failed;
    ordered(
        r,
        "nts_ke_failures",
        "NTS-KE connections that ended without keys, by reason",
        None,
        counters(
            "reason",
            &[
                ("tls", f.tls),
                ("bad_request", f.bad_request),
                ("timeout", f.timeout),
                ("evicted", f.evicted),
                ("refused", f.refused),
                ("io", f.io),
            ],
        ),
    );
    single(
        r,
        "nts_ke_evictions",
        "Stalled NTS-KE exchanges ended to make room for a newcomer",
        None,
        ConstCounter::new(f.evicted),
    );
    single(
        r,
        "nts_ke_in_progress",
        "NTS key exchanges in progress",
        None,
        ConstGauge::new(i64::try_from(k.in_progress).unwrap_or(i64::MAX)),
    );
    if let Some(epoch) = k.cookie_key_epoch {
        single(
            r,
            "nts_cookie_key_epoch",
            "The epoch whose master key seals new NTS cookies (a number, not the key)",
            None,
            ConstGauge::new(i64::from(epoch)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::control::{SourceRow, Status};
    use http_body_util::BodyExt;

    fn snapshot() -> Snapshot {
        Snapshot {
            status: Status {
                synchronized: true,
                stratum: 2,
                reference_id: "192.0.2.1".into(),
                leap: "none".into(),
                poll: 4,
                offset: Some(-1.5e-4),
                offset_error: Some(2e-5),
                frequency_ppm: 12.25,
                root_delay: 1e-3,
                root_dispersion: 2e-3,
            },
            sources: vec![SourceRow {
                name: "ntp.example:123".into(),
                address: Some("192.0.2.1:123".into()),
                peer: false,
                reach: 0o377,
                poll: 4,
                nts_cookies: Some(7),
                samples: 8,
                reachable: true,
                selected: true,
                offset: Some(-1.5e-4),
                bound: Some(2e-5),
                delay: Some(3e-4),
                auth: "nts".into(),
                aead: Some("AES-SIV-CMAC-256".into()),
                key_exchange_age: Some(10.0),
                key_exchange_result: Some("ok".into()),
                key_id: None,
                drops: None,
                last_drop: None,
                state: "reference".into(),
                why: None,
            }],
        }
    }

    fn counters() -> ServerCounters {
        let mut c = ServerCounters::default();
        c.answered.plain = 5;
        c.answered.nts = 2;
        c.dropped.malformed = 1;
        c.nts_ke.servers = 1;
        c.nts_ke.completed = 3;
        c.nts_ke.failed.tls = 4;
        c.nts_ke.cookie_key_epoch = Some(1234);
        c
    }

    /// Every sample's name has a HELP and a TYPE; counters end in `_total`, names
    /// start `ntimed_`, seconds are `_seconds`.
    #[test]
    fn the_exposition_names_and_describes_every_sample() {
        let text = encode(Some(&snapshot()), &counters()).expect("encodes");
        let mut types = std::collections::BTreeMap::new();
        let mut helps = std::collections::BTreeSet::new();
        let mut names = std::collections::BTreeSet::new();
        for line in text.lines() {
            let words: Vec<&str> = line.split(' ').collect();
            match words.as_slice() {
                ["#", "HELP", name, ..] => {
                    helps.insert(name.to_string());
                }
                ["#", "TYPE", name, kind] => {
                    types.insert(name.to_string(), kind.to_string());
                }
                [series, value] => {
                    let name = series.split('{').next().unwrap_or_default();
                    assert!(value.parse::<f64>().is_ok(), "{line}");
                    names.insert(name.to_string());
                }
                _ => panic!("unexpected line {line:?}"),
            }
        }
        for name in &names {
            assert!(name.starts_with("ntimed_"), "{name}");
            assert!(helps.contains(name), "no HELP for {name}");
            let kind = types
                .get(name)
                .unwrap_or_else(|| panic!("no TYPE for {name}"));
            assert_eq!(
                kind == "counter",
                name.ends_with("_total"),
                "{name}: {kind}"
            );
        }
        for expected in [
            "ntimed_synchronized 1",
            "ntimed_stratum 2",
            "ntimed_offset_seconds -0.00015",
            "ntimed_frequency_ppm 12.25",
            "ntimed_source_reach{source=\"ntp.example:123\"} 255",
            "ntimed_source_state{source=\"ntp.example:123\",state=\"reference\"} 1",
            "ntimed_source_state{source=\"ntp.example:123\",state=\"falseticker\"} 0",
            "ntimed_source_nts_cookies{source=\"ntp.example:123\"} 7",
            "ntimed_source_delay_seconds{source=\"ntp.example:123\"} 0.0003",
            "ntimed_server_requests_total{kind=\"plain\"} 5",
            "ntimed_server_drops_total{reason=\"malformed\"} 1",
            "ntimed_nts_ke_exchanges_total 3",
            "ntimed_nts_ke_failures_total{reason=\"tls\"} 4",
            "ntimed_nts_ke_in_progress 0",
            "ntimed_nts_cookie_key_epoch 1234",
        ] {
            assert!(text.lines().any(|l| l == expected), "{expected}:\n{text}");
        }
    }

    /// A reference clock's drop counter; other sources have none.
    #[test]
    fn refclocks_count_their_drops() {
        let mut snapshot = snapshot();
        let mut refclock = snapshot.sources[0].clone();
        refclock.name = "refclock GPS shm:2".into();
        refclock.drops = Some(3);
        snapshot.sources.push(refclock);
        let text = encode(Some(&snapshot), &counters()).expect("encodes");
        let drops: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("ntimed_refclock_drops_total{"))
            .collect();
        assert_eq!(
            drops,
            ["ntimed_refclock_drops_total{source=\"refclock GPS shm:2\"} 3"],
            "{text}"
        );
    }

    /// Metrics come in a fixed order: the client role's, then the sources' in config
    /// order (each source's states together), then the servers'.
    #[test]
    fn samples_keep_the_order_of_the_sources() {
        let mut snapshot = snapshot();
        let mut second = snapshot.sources[0].clone();
        second.name = "a-second.example:123".into();
        second.state = "falseticker".into();
        snapshot.sources.push(second);
        let text = encode(Some(&snapshot), &counters()).expect("encodes");
        let at = |needle: &str| {
            text.find(needle)
                .unwrap_or_else(|| panic!("no {needle}:\n{text}"))
        };
        assert!(at("ntimed_synchronized 1") < at("ntimed_source_reach{"));
        assert!(
            at("ntimed_source_reach{source=\"ntp.example:123\"}")
                < at("ntimed_source_reach{source=\"a-second.example:123\"}")
        );
        assert!(
            at("{source=\"a-second.example:123\",state=\"refused\"}")
                < at("ntimed_source_nts_cookies")
        );
        assert!(at("ntimed_source_nts_cookies") < at("ntimed_server_requests_total"));
        assert!(at("ntimed_server_requests_total") < at("ntimed_nts_ke_exchanges_total"));
        assert!(text.contains(
            "ntimed_source_state{source=\"a-second.example:123\",state=\"falseticker\"} 1\n"
        ));
    }

    /// A newcomer ends the oldest connection that has not sent its head; when every
    /// connection is being answered, the newcomer is refused instead.
    #[test]
    fn newcomers_end_the_oldest_idle_connection_never_one_being_answered() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut slots = Slots::default();
        let mut admitted = Vec::new();
        for i in 0..MAX_CONNECTIONS as u64 {
            admitted.push(slots.admit(at(i)).expect("room"));
        }
        // The two oldest are being answered: the third oldest makes room.
        for (_, answering, _) in admitted.iter().take(2) {
            answering.store(true, Ordering::Relaxed);
        }
        assert!(slots.admit(at(100)).is_some());
        let mut evicted: Vec<u64> = Vec::new();
        for (id, _, rx) in &mut admitted {
            if rx.try_recv().is_ok() {
                evicted.push(*id);
            }
        }
        assert_eq!(evicted, vec![3]);
        assert_eq!(slots.slots.len(), MAX_CONNECTIONS);
        // All being answered: no room.
        for slot in &slots.slots {
            slot.answering.store(true, Ordering::Relaxed);
        }
        assert!(slots.admit(at(200)).is_none());
        slots.finish(1);
        assert!(
            slots.admit(at(300)).is_some(),
            "a finished one frees its slot"
        );
    }

    /// A source name with quotes, a backslash or a line break (it comes from the
    /// config) is escaped: it cannot add lines or labels to the exposition.
    #[test]
    fn label_values_are_escaped() {
        let mut snapshot = snapshot();
        snapshot.sources[0].name = "x\"} 1\nntimed_forged 1\\".into();
        let text = encode(Some(&snapshot), &counters()).expect("encodes");
        assert!(
            !text.lines().any(|l| l.starts_with("ntimed_forged")),
            "{text}"
        );
        assert!(
            text.contains("ntimed_source_reach{source=\"x\\\"} 1\\nntimed_forged 1\\\\\"} 255\n"),
            "{text}"
        );
    }

    /// Without the client role's answer, only the servers' metrics.
    #[test]
    fn without_a_snapshot_only_server_metrics() {
        let text = encode(None, &ServerCounters::default()).expect("encodes");
        assert!(!text.contains("ntimed_synchronized"), "{text}");
        assert!(!text.contains("ntimed_source_"), "{text}");
        assert!(text.contains("ntimed_server_requests_total"), "{text}");
    }

    fn observer() -> Control {
        Control {
            snapshots: None,
            local_stratum: Some(1),
            servers: Vec::new(),
            ke_servers: Vec::new(),
            cookie_keys: None,
            reloads: None,
        }
    }

    async fn body(response: Response<Full<Bytes>>) -> String {
        let bytes = response
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[tokio::test]
    async fn only_get_metrics_is_served() {
        let observer = observer();
        for path in ["/", "/metrics/", "/metricsx", "/favicon.ico", "//metrics"] {
            let response = respond(&observer, &Method::GET, path).await;
            assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        }
        for method in [Method::POST, Method::PUT, Method::DELETE, Method::HEAD] {
            let response = respond(&observer, &method, PATH).await;
            assert_eq!(
                response.status(),
                StatusCode::METHOD_NOT_ALLOWED,
                "{method}"
            );
            assert_eq!(
                response.headers().get(ALLOW),
                Some(&HeaderValue::from_static("GET"))
            );
        }
        let response = respond(&observer, &Method::GET, PATH).await;
        assert_eq!(response.status(), StatusCode::OK);
        let text = body(response).await;
        // `[local]` without a client role: stratum 1, unsynchronized.
        assert!(text.contains("ntimed_stratum 1\n"), "{text}");
    }
}

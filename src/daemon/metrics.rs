//! Prometheus metrics: `GET /metrics` on the `[metrics]` listener (ADVERSARIAL 44).
//!
//! HTTP/1.1 by hyper, one request per connection; the exposition is the Prometheus
//! text format written by prometheus-client, from the same snapshot and counters
//! `ntimed ctl` answers from ([`Control`]). Everything but `GET /metrics` is refused:
//! 404 for another path, 405 for another method. Like the NTS-KE server, what one
//! client can take is bounded: [`MAX_CONNECTIONS`] are served at once and as many more
//! may wait (unread) for their turn, no longer than a request head may take; more are
//! closed at once. A request head must arrive within [`HEADER_TIMEOUT`] and fit in
//! [`MAX_REQUEST_HEAD`] bytes (else 431), and a whole connection lasts at most
//! [`CONNECTION_TIMEOUT`]. Nothing secret is in any metric: key ids and the cookie key
//! epoch are numbers that name keys, never keys.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::{Registry, Unit};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use super::control::{Control, ServerCounters, Snapshot};
use crate::sync::SourceState;

/// Connections served at once (as the control socket).
pub const MAX_CONNECTIONS: usize = 16;
/// Connections that may wait for one of those; more are closed at once.
pub const MAX_WAITING: usize = 16;
/// A request head must arrive whole within this long (and a waiting connection gets
/// no longer to be let in).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
/// A connection is closed after this long, whatever it is doing.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest request head read (hyper's smallest buffer); larger ones get 431.
pub const MAX_REQUEST_HEAD: usize = 8192;
/// The only path served.
pub const PATH: &str = "/metrics";

/// Serves `listener` until the task is aborted.
pub fn spawn(
    listener: std::net::TcpListener,
    observer: Arc<Control>,
) -> std::io::Result<JoinHandle<()>> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let serving = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let waiting = Arc::new(Semaphore::new(MAX_CONNECTIONS + MAX_WAITING));
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
            let Ok(admitted) = waiting.clone().try_acquire_owned() else {
                continue;
            };
            let (serving, observer) = (serving.clone(), observer.clone());
            tokio::spawn(async move {
                let permit =
                    match tokio::time::timeout(HEADER_TIMEOUT, serving.acquire_owned()).await {
                        Ok(Ok(permit)) => permit,
                        _ => return,
                    };
                let _ = tokio::time::timeout(CONNECTION_TIMEOUT, serve(stream, observer)).await;
                drop((permit, admitted));
            });
        }
    }))
}

async fn serve(stream: tokio::net::TcpStream, observer: Arc<Control>) {
    let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
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
type LabelledGauge = Family<Labels, Gauge<f64, AtomicU64>>;
type LabelledCount = Family<Labels, Gauge>;
type LabelledCounter = Family<Labels, prometheus_client::metrics::counter::Counter>;

/// Labelled gauges, one sample per label set.
fn gauges<'a>(samples: impl IntoIterator<Item = (Labels, f64)> + 'a) -> LabelledGauge {
    let family = LabelledGauge::default();
    for (labels, value) in samples {
        family.get_or_create(&labels).set(value);
    }
    family
}

/// Labelled whole-number gauges (flags, registers, counts), one sample per label set.
fn counts<'a>(samples: impl IntoIterator<Item = (Labels, i64)> + 'a) -> LabelledCount {
    let family = LabelledCount::default();
    for (labels, value) in samples {
        family.get_or_create(&labels).set(value);
    }
    family
}

/// Labelled counters, one sample per label set.
fn counters(samples: &[(&'static str, &'static str, u64)]) -> LabelledCounter {
    let family = LabelledCounter::default();
    for &(key, value, count) in samples {
        family
            .get_or_create(&vec![(key, value.to_string())])
            .inc_by(count);
    }
    family
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
    r.register(
        "synchronized",
        "1 while the clock is synchronized to a source",
        ConstGauge::new(flag(s.synchronized)),
    );
    r.register(
        "stratum",
        "The stratum served (16: unsynchronized)",
        ConstGauge::new(i64::from(s.stratum)),
    );
    if let Some(offset) = s.offset {
        r.register_with_unit(
            "offset",
            "The selected source's offset estimate, as ntimed ctl status shows it",
            Unit::Seconds,
            ConstGauge::new(offset),
        );
    }
    if let Some(error) = s.offset_error {
        r.register_with_unit(
            "offset_error",
            "The error bound of that offset estimate",
            Unit::Seconds,
            ConstGauge::new(error),
        );
    }
    r.register(
        "frequency_ppm",
        "The frequency correction applied to the clock, parts per million",
        ConstGauge::new(s.frequency_ppm),
    );
    r.register_with_unit(
        "root_delay",
        "The round-trip delay to the stratum-1 source, as served",
        Unit::Seconds,
        ConstGauge::new(s.root_delay),
    );
    r.register_with_unit(
        "root_dispersion",
        "The dispersion to the stratum-1 source, as served",
        Unit::Seconds,
        ConstGauge::new(s.root_dispersion),
    );
    let rows = &snapshot.sources;
    let source = |name: &str| vec![("source", name.to_string())];
    r.register(
        "source_reach",
        "The source's reachability register (8 polls, 1 bit each; 255: all answered)",
        counts(rows.iter().map(|s| (source(&s.name), i64::from(s.reach)))),
    );
    r.register_with_unit(
        "source_offset",
        "The offset of the source's best sample",
        Unit::Seconds,
        gauges(
            rows.iter()
                .filter_map(|s| Some((source(&s.name), s.offset?))),
        ),
    );
    r.register_with_unit(
        "source_delay",
        "The round-trip delay of the source's last sample used",
        Unit::Seconds,
        gauges(
            rows.iter()
                .filter_map(|s| Some((source(&s.name), s.delay?))),
        ),
    );
    r.register(
        "source_state",
        "1 for the source's selection state, 0 for the others",
        counts(rows.iter().flat_map(|s| {
            SourceState::ALL.iter().map(|state| {
                let labels = vec![
                    ("source", s.name.clone()),
                    ("state", state.name().to_string()),
                ];
                (labels, flag(s.state == state.name()))
            })
        })),
    );
    r.register(
        "source_nts_cookies",
        "NTS cookies the source has left",
        counts(rows.iter().filter_map(|s| {
            let cookies = i64::try_from(s.nts_cookies?).unwrap_or(i64::MAX);
            Some((source(&s.name), cookies))
        })),
    );
}

fn register_server(r: &mut Registry, c: &ServerCounters) {
    r.register(
        "server_requests",
        "NTP requests answered, by how they were authenticated",
        counters(&[
            ("kind", "plain", c.answered.plain),
            ("kind", "keyed", c.answered.keyed),
            ("kind", "nts", c.answered.nts),
        ]),
    );
    r.register(
        "server_peer_requests",
        "Of the requests answered plain or keyed, symmetric-active ones from unconfigured peers",
        ConstCounter::new(c.answered.peer),
    );
    let d = &c.dropped;
    r.register(
        "server_drops",
        "NTP requests not answered, by reason",
        counters(&[
            ("reason", "malformed", d.malformed),
            ("reason", "refused", d.refused),
            ("reason", "auth_failed", d.auth_failed),
            ("reason", "denied", d.denied),
            ("reason", "unauthenticated", d.unauthenticated),
            ("reason", "rate_limited", c.rate_limited),
        ]),
    );
    r.register(
        "server_kisses",
        "Kiss-o'-Death and NAK answers sent, by code",
        counters(&[
            ("code", "RATE", c.rate_kisses),
            ("code", "DENY", c.deny_kisses),
            ("code", "NTSN", c.nts_naks),
            ("code", "crypto_nak", c.crypto_naks),
        ]),
    );
    let k = &c.nts_ke;
    // No [[nts-ke-server]]: nothing to say (a row of zeros would suggest there is one).
    if k.servers == 0 {
        return;
    }
    r.register(
        "nts_ke_exchanges",
        "NTS key exchanges answered with keys and cookies",
        ConstCounter::new(k.completed),
    );
    let f = &k.failed;
    r.register(
        "nts_ke_failures",
        "NTS-KE connections that ended without keys, by reason",
        counters(&[
            ("reason", "tls", f.tls),
            ("reason", "bad_request", f.bad_request),
            ("reason", "timeout", f.timeout),
            ("reason", "evicted", f.evicted),
            ("reason", "refused", f.refused),
            ("reason", "io", f.io),
        ]),
    );
    r.register(
        "nts_ke_evictions",
        "Stalled NTS-KE exchanges ended to make room for a newcomer",
        ConstCounter::new(f.evicted),
    );
    r.register(
        "nts_ke_in_progress",
        "NTS key exchanges in progress",
        ConstGauge::new(i64::try_from(k.in_progress).unwrap_or(i64::MAX)),
    );
    if let Some(epoch) = k.cookie_key_epoch {
        r.register(
            "nts_cookie_key_epoch",
            "The epoch whose master key seals new NTS cookies (a number, not the key)",
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

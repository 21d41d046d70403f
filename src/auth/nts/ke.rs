//! NTS-KE negotiation (RFC 8915 §4), sans-IO: records in, decisions and records out.
//! The TLS session, and the key export it performs, stay in the daemon.

use super::aead::AeadAlgorithm;
use crate::wire::ke::{Record, RecordBody};

/// Protocol id of NTPv4 in Next Protocol records.
pub const NTPV4: u16 = 0;
/// TLS exporter label for NTS keys.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-network-time-security";
/// Cookies sent per response (RFC 8915 §4.1.6).
pub const COOKIES_PER_RESPONSE: usize = 8;
/// Cookies kept by a client, and sent in one NTP reply; more are ignored
/// (ADVERSARIAL 8, 14).
pub const MAX_COOKIES: usize = 8;
/// Cookies longer than this are refused by clients (ADVERSARIAL 8).
pub const MAX_COOKIE_LEN: usize = 1024;

/// Error codes of the Error record.
pub const ERROR_UNRECOGNIZED_CRITICAL: u16 = 0;
pub const ERROR_BAD_REQUEST: u16 = 1;

/// TLS exporter context: protocol id ‖ AEAD id ‖ 0 (client to server) or 1.
pub fn exporter_context(aead: AeadAlgorithm, server_to_client: bool) -> [u8; 5] {
    let [a, b] = aead.id().to_be_bytes();
    [0, 0, a, b, u8::from(server_to_client)]
}

/// What the server makes of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeDecision {
    /// Export keys for this AEAD and send cookies.
    Accept {
        aead: AeadAlgorithm,
        /// The client asked (chrony record 1024) for the RFC-compliant GCM-SIV export,
        /// which ntimed always uses; echo the record so it knows.
        echo_compliant_gcm_siv: bool,
    },
    /// NTPv4 was not offered: answer with an empty Next Protocol record.
    NoCommonProtocol,
    /// No AEAD in common: answer with an empty AEAD record and no cookies.
    NoCommonAead,
    /// Answer with an Error record of this code.
    Refuse { code: u16, why: &'static str },
}

fn bad(why: &'static str) -> KeDecision {
    KeDecision::Refuse {
        code: ERROR_BAD_REQUEST,
        why,
    }
}

/// Applies RFC 8915's rules to a client's request (ADVERSARIAL 2–4). `records` is a
/// whole message as `wire::ke::parse_message` returned it; `trailing` is whether bytes
/// followed its End of Message.
pub fn evaluate_request(records: &[Record<'_>], trailing: bool) -> KeDecision {
    let mut protocols: Option<&[u16]> = None;
    let mut aeads: Option<&[u16]> = None;
    let mut compliant_gcm_siv = false;
    for record in records {
        match &record.body {
            RecordBody::EndOfMessage if !record.critical => {
                return bad("End of Message must be critical");
            }
            RecordBody::EndOfMessage => {}
            RecordBody::NextProtocol(_) if protocols.is_some() => {
                return bad("two Next Protocol records");
            }
            RecordBody::NextProtocol(_) if !record.critical => {
                return bad("Next Protocol must be critical");
            }
            RecordBody::NextProtocol(list) if list.is_empty() => {
                return bad("empty Next Protocol list");
            }
            RecordBody::NextProtocol(list) => protocols = Some(list),
            RecordBody::AeadAlgorithm(_) if aeads.is_some() => return bad("two AEAD records"),
            RecordBody::AeadAlgorithm(list) if list.is_empty() => {
                return bad("empty AEAD list");
            }
            RecordBody::AeadAlgorithm(list) => aeads = Some(list),
            RecordBody::Error(_) | RecordBody::Warning(_) | RecordBody::NewCookie(_) => {
                return bad("Error, Warning or New Cookie from a client");
            }
            // A client may state a preference; ntimed decides from its config.
            RecordBody::Server(_) | RecordBody::Port(_) => {}
            RecordBody::ChronyCompliantGcmSiv(_) => compliant_gcm_siv = true,
            RecordBody::Unknown { .. } if record.critical => {
                return KeDecision::Refuse {
                    code: ERROR_UNRECOGNIZED_CRITICAL,
                    why: "unrecognized critical record",
                };
            }
            RecordBody::Unknown { .. } => {}
        }
    }
    if trailing {
        return bad("data after End of Message");
    }
    if records.last().map(|r| &r.body) != Some(&RecordBody::EndOfMessage) {
        return bad("no End of Message");
    }
    let Some(protocols) = protocols else {
        return bad("no Next Protocol record");
    };
    let Some(aeads) = aeads else {
        return bad("no AEAD record");
    };
    if !protocols.contains(&NTPV4) {
        return KeDecision::NoCommonProtocol;
    }
    // The client's order, except that GCM-SIV is chosen only for clients that say they
    // export its keys as the RFC does (older chrony does not).
    let chosen = aeads
        .iter()
        .filter_map(|&id| AeadAlgorithm::from_id(id))
        .find(|&a| a != AeadAlgorithm::AesGcmSiv128 || compliant_gcm_siv);
    match chosen {
        Some(aead) => KeDecision::Accept {
            aead,
            echo_compliant_gcm_siv: compliant_gcm_siv && aead == AeadAlgorithm::AesGcmSiv128,
        },
        None => KeDecision::NoCommonAead,
    }
}

/// Where the server sends clients for NTP, if not to itself on port 123.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NtpEndpoint {
    pub server: Option<String>,
    pub port: Option<u16>,
}

/// Where clients are sent, for logs: `host:port`, with "this host" and port 123 for
/// what is left to the client's defaults.
impl std::fmt::Display for NtpEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let server = self.server.as_deref().unwrap_or("this host");
        write!(f, "{server}:{}", self.port.unwrap_or(123))
    }
}

/// Writes the server's response for `decision`; `cookies` are sent only on Accept.
pub fn write_response(
    decision: &KeDecision,
    cookies: &[Vec<u8>],
    endpoint: &NtpEndpoint,
    out: &mut Vec<u8>,
) {
    let mut records = Vec::new();
    match decision {
        KeDecision::Refuse { code, .. } => {
            records.push(Record::new(true, RecordBody::Error(*code)));
        }
        KeDecision::NoCommonProtocol => {
            records.push(Record::new(true, RecordBody::NextProtocol(vec![])));
        }
        KeDecision::NoCommonAead => {
            records.push(Record::new(true, RecordBody::NextProtocol(vec![NTPV4])));
            records.push(Record::new(true, RecordBody::AeadAlgorithm(vec![])));
        }
        KeDecision::Accept {
            aead,
            echo_compliant_gcm_siv,
        } => {
            records.push(Record::new(true, RecordBody::NextProtocol(vec![NTPV4])));
            records.push(Record::new(
                true,
                RecordBody::AeadAlgorithm(vec![aead.id()]),
            ));
            if *echo_compliant_gcm_siv {
                records.push(Record::new(false, RecordBody::ChronyCompliantGcmSiv(&[])));
            }
            if let Some(server) = &endpoint.server {
                records.push(Record::new(true, RecordBody::Server(server)));
            }
            if let Some(port) = endpoint.port {
                records.push(Record::new(true, RecordBody::Port(port)));
            }
            for cookie in cookies.iter().take(COOKIES_PER_RESPONSE) {
                records.push(Record::new(false, RecordBody::NewCookie(cookie)));
            }
        }
    }
    records.push(Record::new(true, RecordBody::EndOfMessage));
    crate::wire::ke::write_message(&records, out);
}

/// The client's request: NTPv4, AEADs in ntimed's order, and chrony's record saying
/// GCM-SIV keys are exported as the RFC says.
pub fn write_request(out: &mut Vec<u8>) {
    let aeads = AeadAlgorithm::PREFERENCE.iter().map(|a| a.id()).collect();
    let records = [
        Record::new(true, RecordBody::NextProtocol(vec![NTPV4])),
        Record::new(true, RecordBody::AeadAlgorithm(aeads)),
        Record::new(false, RecordBody::ChronyCompliantGcmSiv(&[])),
        Record::new(true, RecordBody::EndOfMessage),
    ];
    crate::wire::ke::write_message(&records, out);
}

/// What a client takes from a good response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeResponse {
    pub aead: AeadAlgorithm,
    pub cookies: Vec<Vec<u8>>,
    /// NTP server and port to use; `None` means the KE server's host and port 123.
    pub endpoint: NtpEndpoint,
}

/// Why a client discards a response (ADVERSARIAL 7, 8).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeClientError {
    #[error("server sent Error {0}")]
    ServerError(u16),
    #[error("server sent Warning {0}")]
    Warning(u16),
    #[error("unrecognized critical record type {0}")]
    UnknownCritical(u16),
    #[error("server did not agree to NTPv4")]
    NoProtocol,
    #[error("no AEAD in common")]
    NoAead,
    #[error("server chose AEAD {0}, which was not offered")]
    AeadNotOffered(u16),
    #[error("duplicated {0} record")]
    Duplicate(&'static str),
    #[error("no cookies")]
    NoCookies,
    #[error("cookie of {0} bytes (must be 1 to {MAX_COOKIE_LEN})")]
    BadCookie(usize),
    #[error("malformed response: {0}")]
    Malformed(&'static str),
}

/// Checks a server's response to `write_request`.
pub fn handle_response(records: &[Record<'_>]) -> Result<KeResponse, KeClientError> {
    let mut protocol: Option<&[u16]> = None;
    let mut aead: Option<&[u16]> = None;
    let mut endpoint = NtpEndpoint::default();
    let mut cookies = Vec::new();
    let mut compliant_gcm_siv = false;
    for record in records {
        match &record.body {
            RecordBody::EndOfMessage | RecordBody::NextProtocol(_) if !record.critical => {
                return Err(KeClientError::Malformed(
                    "End of Message or Next Protocol not critical",
                ));
            }
            RecordBody::EndOfMessage => {}
            RecordBody::Error(code) => return Err(KeClientError::ServerError(*code)),
            // RFC 8915 defines no warnings: any is unknown, and unknown means stop.
            RecordBody::Warning(code) => return Err(KeClientError::Warning(*code)),
            RecordBody::NextProtocol(_) if protocol.is_some() => {
                return Err(KeClientError::Duplicate("Next Protocol"));
            }
            RecordBody::NextProtocol(list) => protocol = Some(list),
            RecordBody::AeadAlgorithm(_) if aead.is_some() => {
                return Err(KeClientError::Duplicate("AEAD"));
            }
            RecordBody::AeadAlgorithm(list) => aead = Some(list),
            RecordBody::NewCookie(c) if c.is_empty() || c.len() > MAX_COOKIE_LEN => {
                return Err(KeClientError::BadCookie(c.len()));
            }
            RecordBody::NewCookie(c) => {
                if cookies.len() < MAX_COOKIES {
                    cookies.push(c.to_vec());
                }
            }
            RecordBody::Server(_) if endpoint.server.is_some() => {
                return Err(KeClientError::Duplicate("Server"));
            }
            RecordBody::Server("") => {
                return Err(KeClientError::Malformed("empty Server record"));
            }
            RecordBody::Server(s) => endpoint.server = Some(s.to_string()),
            RecordBody::Port(_) if endpoint.port.is_some() => {
                return Err(KeClientError::Duplicate("Port"));
            }
            RecordBody::Port(p) => endpoint.port = Some(*p),
            RecordBody::ChronyCompliantGcmSiv(_) => compliant_gcm_siv = true,
            RecordBody::Unknown { record_type, .. } if record.critical => {
                return Err(KeClientError::UnknownCritical(*record_type));
            }
            RecordBody::Unknown { .. } => {}
        }
    }
    match protocol {
        Some([NTPV4]) => {}
        Some(_) | None => return Err(KeClientError::NoProtocol),
    }
    let aead = match aead {
        // Without chrony's record 1024 echoed, a GCM-SIV server may be an older chrony
        // that exports its keys differently: every packet would fail.
        Some([30]) if !compliant_gcm_siv => {
            return Err(KeClientError::Malformed(
                "AES-128-GCM-SIV chosen without confirming RFC key export",
            ));
        }
        Some([id]) => AeadAlgorithm::from_id(*id).ok_or(KeClientError::AeadNotOffered(*id))?,
        Some([]) => return Err(KeClientError::NoAead),
        Some(_) => return Err(KeClientError::Malformed("more than one AEAD")),
        None => return Err(KeClientError::NoAead),
    };
    if cookies.is_empty() {
        return Err(KeClientError::NoCookies);
    }
    Ok(KeResponse {
        aead,
        cookies,
        endpoint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ke::parse_message;

    fn rec(critical: bool, body: RecordBody<'static>) -> Record<'static> {
        Record::new(critical, body)
    }

    fn eom() -> Record<'static> {
        rec(true, RecordBody::EndOfMessage)
    }

    fn request(aeads: Vec<u16>) -> Vec<Record<'static>> {
        vec![
            rec(true, RecordBody::NextProtocol(vec![0])),
            rec(true, RecordBody::AeadAlgorithm(aeads)),
            eom(),
        ]
    }

    #[test]
    fn ntimed_request_is_accepted_by_ntimed() {
        let mut bytes = Vec::new();
        write_request(&mut bytes);
        let (records, _) = parse_message(&bytes).unwrap().unwrap();
        assert_eq!(
            evaluate_request(&records, false),
            KeDecision::Accept {
                aead: AeadAlgorithm::AesSivCmac256,
                echo_compliant_gcm_siv: false
            }
        );
    }

    #[test]
    fn chrony_request_with_compliant_gcm_siv_gets_it() {
        let mut records = request(vec![30, 15]);
        records.insert(2, rec(false, RecordBody::ChronyCompliantGcmSiv(&[])));
        assert_eq!(
            evaluate_request(&records, false),
            KeDecision::Accept {
                aead: AeadAlgorithm::AesGcmSiv128,
                echo_compliant_gcm_siv: true
            }
        );
        // Without the record, GCM-SIV is skipped: old chrony exports its keys wrongly.
        assert_eq!(
            evaluate_request(&request(vec![30, 15]), false),
            KeDecision::Accept {
                aead: AeadAlgorithm::AesSivCmac256,
                echo_compliant_gcm_siv: false
            }
        );
    }

    /// ADVERSARIAL 2.
    #[test]
    fn unknown_records_follow_the_critical_bit() {
        let mut critical = request(vec![15]);
        critical.insert(
            0,
            rec(
                true,
                RecordBody::Unknown {
                    record_type: 0x1234,
                    body: b"x",
                },
            ),
        );
        assert!(matches!(
            evaluate_request(&critical, false),
            KeDecision::Refuse {
                code: ERROR_UNRECOGNIZED_CRITICAL,
                ..
            }
        ));
        let mut quiet = request(vec![15]);
        quiet.insert(
            0,
            rec(
                false,
                RecordBody::Unknown {
                    record_type: 0x1234,
                    body: b"x",
                },
            ),
        );
        assert!(matches!(
            evaluate_request(&quiet, false),
            KeDecision::Accept { .. }
        ));
    }

    /// ADVERSARIAL 3: every malformed request is a Bad Request.
    #[test]
    fn malformed_requests_are_bad_requests() {
        let np = || rec(true, RecordBody::NextProtocol(vec![0]));
        let aead = || rec(true, RecordBody::AeadAlgorithm(vec![15]));
        let cases: Vec<(Vec<Record<'static>>, bool)> = vec![
            (vec![np(), aead()], false), // no EOM
            (
                vec![np(), aead(), rec(false, RecordBody::EndOfMessage)],
                false,
            ), // non-critical EOM
            (vec![np(), aead(), eom()], true), // data after EOM
            (vec![aead(), eom()], false), // no Next Protocol
            (vec![np(), np(), aead(), eom()], false), // two
            (
                vec![rec(false, RecordBody::NextProtocol(vec![0])), aead(), eom()],
                false,
            ),
            (
                vec![rec(true, RecordBody::NextProtocol(vec![])), aead(), eom()],
                false,
            ),
            (vec![np(), eom()], false), // no AEAD
            (vec![np(), aead(), aead(), eom()], false),
            (
                vec![np(), rec(true, RecordBody::AeadAlgorithm(vec![])), eom()],
                false,
            ),
            (
                vec![np(), aead(), rec(true, RecordBody::Error(0)), eom()],
                false,
            ),
            (
                vec![np(), aead(), rec(false, RecordBody::Warning(0)), eom()],
                false,
            ),
            (
                vec![np(), aead(), rec(false, RecordBody::NewCookie(b"c")), eom()],
                false,
            ),
        ];
        for (i, (records, trailing)) in cases.iter().enumerate() {
            assert!(
                matches!(
                    evaluate_request(records, *trailing),
                    KeDecision::Refuse {
                        code: ERROR_BAD_REQUEST,
                        ..
                    }
                ),
                "case {i}"
            );
        }
    }

    /// ADVERSARIAL 4 and 6.
    #[test]
    fn responses_hold_what_the_rfc_requires() {
        let endpoint = NtpEndpoint::default();
        let mut out = Vec::new();
        write_response(
            &evaluate_request(&request(vec![99, 100]), false),
            &[vec![1; 100]],
            &endpoint,
            &mut out,
        );
        let (records, _) = parse_message(&out).unwrap().unwrap();
        assert!(
            records
                .iter()
                .any(|r| r.body == RecordBody::AeadAlgorithm(vec![]))
        );
        assert!(
            !records
                .iter()
                .any(|r| matches!(r.body, RecordBody::NewCookie(_)))
        );

        let cookies: Vec<Vec<u8>> = (0..12u8).map(|i| vec![i; 100]).collect();
        let endpoint = NtpEndpoint {
            server: Some("ntp.example".into()),
            port: Some(11123),
        };
        let decision = evaluate_request(&request(vec![17, 15]), false);
        out.clear();
        write_response(&decision, &cookies, &endpoint, &mut out);
        let (records, _) = parse_message(&out).unwrap().unwrap();
        let got = handle_response(&records).unwrap();
        assert_eq!(got.aead, AeadAlgorithm::AesSivCmac512);
        assert_eq!(got.cookies.len(), 8);
        assert_eq!(got.endpoint, endpoint);
    }

    /// ADVERSARIAL 7 and 8.
    #[test]
    fn clients_discard_bad_responses() {
        let good = || {
            vec![
                rec(true, RecordBody::NextProtocol(vec![0])),
                rec(true, RecordBody::AeadAlgorithm(vec![15])),
                rec(false, RecordBody::NewCookie(b"cookie")),
                eom(),
            ]
        };
        assert!(handle_response(&good()).is_ok());
        let with = |i: usize, r: Record<'static>| {
            let mut v = good();
            v.insert(i, r);
            v
        };
        let replace = |i: usize, r: Record<'static>| {
            let mut v = good();
            v[i] = r;
            v
        };
        let big = Box::leak(vec![0u8; 2048].into_boxed_slice());
        let cases = [
            (
                with(0, rec(true, RecordBody::Error(2))),
                KeClientError::ServerError(2),
            ),
            (
                with(0, rec(false, RecordBody::Warning(7))),
                KeClientError::Warning(7),
            ),
            (
                with(
                    0,
                    rec(
                        true,
                        RecordBody::Unknown {
                            record_type: 77,
                            body: b"",
                        },
                    ),
                ),
                KeClientError::UnknownCritical(77),
            ),
            (
                replace(1, rec(true, RecordBody::AeadAlgorithm(vec![16]))),
                KeClientError::AeadNotOffered(16),
            ),
            (
                replace(0, rec(true, RecordBody::NextProtocol(vec![1]))),
                KeClientError::NoProtocol,
            ),
            (
                with(0, rec(true, RecordBody::NextProtocol(vec![0]))),
                KeClientError::Duplicate("Next Protocol"),
            ),
            (
                with(0, rec(true, RecordBody::AeadAlgorithm(vec![15]))),
                KeClientError::Duplicate("AEAD"),
            ),
            (
                replace(
                    2,
                    rec(
                        false,
                        RecordBody::Unknown {
                            record_type: 9,
                            body: b"",
                        },
                    ),
                ),
                KeClientError::NoCookies,
            ),
            (
                replace(2, rec(false, RecordBody::NewCookie(b""))),
                KeClientError::BadCookie(0),
            ),
            (
                replace(2, rec(false, RecordBody::NewCookie(big))),
                KeClientError::BadCookie(2048),
            ),
        ];
        for (records, expected) in cases {
            assert_eq!(handle_response(&records), Err(expected));
        }
        let mut many = good();
        for _ in 0..20 {
            many.insert(2, rec(false, RecordBody::NewCookie(b"more")));
        }
        assert_eq!(handle_response(&many).unwrap().cookies.len(), 8);
    }

    #[test]
    fn exporter_context_is_protocol_aead_direction() {
        assert_eq!(
            exporter_context(AeadAlgorithm::AesSivCmac256, false),
            [0, 0, 0, 15, 0]
        );
        assert_eq!(
            exporter_context(AeadAlgorithm::AesGcmSiv128, true),
            [0, 0, 0, 30, 1]
        );
    }
}

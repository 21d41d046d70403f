//! What happened in the coordinator, for the driver's logs.

use std::fmt;
use std::net::SocketAddr;

use crate::sync::Ignored;
use crate::wire::{KissCode, ReferenceId};

use super::AssociationId;

/// How much an event matters to an operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Debug,
    Info,
    Warn,
}

/// Something that happened to one source or peer.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub association: AssociationId,
    /// Its configured name, so that the event reads on its own.
    pub name: String,
    pub kind: EventKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum EventKind {
    /// Became reachable or unreachable, selected or not.
    StateChanged {
        reachable: bool,
        selected: bool,
    },
    /// An authentic kiss-o'-death, already acted on.
    Kiss(KissCode),
    /// A peer's measurement says it is synchronized to us: not used until it stops.
    Loop(ReferenceId),
    /// A packet that was not accepted, and why. Nothing changed.
    Dropped(String),
    /// A measurement, and why the engine did not use it (if it did not).
    Sample {
        offset: f64,
        delay: f64,
        ignored: Option<Ignored>,
    },
    Resolved(SocketAddr),
    /// Resolution failed; a peer tries again after `retry` seconds.
    ResolveFailed {
        error: String,
        retry: Option<f64>,
    },
    /// NTS-KE succeeded; NTP goes to this address.
    KeyExchanged(SocketAddr),
    KeyExchangeFailed(String),
}

impl Event {
    pub fn new(association: AssociationId, name: &str, kind: EventKind) -> Self {
        Self {
            association,
            name: name.to_string(),
            kind,
        }
    }

    pub fn level(&self) -> Level {
        match &self.kind {
            EventKind::Dropped(_) | EventKind::Sample { .. } | EventKind::Resolved(_) => {
                Level::Debug
            }
            EventKind::StateChanged { .. }
            | EventKind::Kiss(_)
            | EventKind::Loop(_)
            | EventKind::KeyExchanged(_) => Level::Info,
            EventKind::ResolveFailed { .. } | EventKind::KeyExchangeFailed(_) => Level::Warn,
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = &self.name;
        match &self.kind {
            EventKind::StateChanged {
                reachable,
                selected,
            } => write!(
                f,
                "{name}: {}, {}",
                if *reachable {
                    "reachable"
                } else {
                    "unreachable"
                },
                if *selected {
                    "selected"
                } else {
                    "not selected"
                }
            ),
            EventKind::Kiss(code) => {
                let what = match code {
                    KissCode::Deny | KissCode::Restrict => "source stopped",
                    KissCode::Rate => "polling less often",
                    KissCode::NtsNak => "cookies refused",
                    KissCode::Other(_) => "ignored",
                };
                write!(f, "{name}: kiss-o'-death {code}: {what}")
            }
            EventKind::Loop(id) => write!(
                f,
                "{name}: synchronized to us (reference id {}); not used",
                id.describe(2)
            ),
            EventKind::Dropped(why) => write!(f, "{name}: dropped packet: {why}"),
            EventKind::Sample {
                offset,
                delay,
                ignored,
            } => {
                write!(f, "{name}: offset {offset:+.6} s delay {delay:.6} s")?;
                match ignored {
                    Some(why) => write!(f, " (not used: {why})"),
                    None => Ok(()),
                }
            }
            EventKind::Resolved(address) => write!(f, "{name}: at {address}"),
            EventKind::ResolveFailed { error, retry } => match retry {
                Some(seconds) => write!(f, "{name}: {error}; trying again in {seconds} s"),
                None => write!(f, "{name}: {error}"),
            },
            EventKind::KeyExchanged(address) => {
                write!(f, "{name}: NTS-KE done, NTP at {address}")
            }
            EventKind::KeyExchangeFailed(error) => write!(f, "{name}: NTS-KE failed: {error}"),
        }
    }
}

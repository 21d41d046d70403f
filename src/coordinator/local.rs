//! `[local]`: serving the local clock when no source gives time. A server with
//! sources serves its own clock only once they have had `wait` seconds to answer and
//! while what they give is worse than `distance` (or nothing); in orphan mode the
//! sources at our stratum are a site's other servers, and the engine follows the one
//! with the lowest id (see `SyncConfig::orphan_stratum`).

use crate::proto::server::SyncState;
use crate::wire::Leap;

/// The `[local]` settings the coordinator acts on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LocalReference {
    /// The stratum served from the local clock (1..=15).
    pub stratum: u8,
    /// Serve the local clock once the synchronized root distance exceeds this (s).
    pub distance: f64,
    /// Seconds after start during which only the sources' time is served.
    pub wait: f64,
    /// Orphan mode: sources at `stratum` are the site's other servers.
    pub orphan: bool,
}

impl LocalReference {
    /// `[local]` with chrony's defaults: a distance of 1 s, no wait.
    pub fn at_stratum(stratum: u8) -> Self {
        Self {
            stratum,
            distance: 1.0,
            wait: 0.0,
            orphan: false,
        }
    }

    /// Whether the local clock is served instead of `engine` (the sources' state),
    /// `elapsed` seconds after start.
    pub fn replaces(&self, engine: &SyncState, elapsed: f64) -> bool {
        if elapsed < self.wait {
            return false;
        }
        let unsynchronized =
            engine.leap == Leap::Unsynchronized || engine.stratum == 0 || engine.stratum >= 16;
        unsynchronized || engine.root_delay / 2.0 + engine.root_dispersion >= self.distance
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::NtpTimestamp;

    fn synchronized(root_dispersion: f64) -> SyncState {
        SyncState {
            root_dispersion,
            ..SyncState::local_reference(3, NtpTimestamp::from_unix(1_800_000_000, 0), -20)
        }
    }

    #[test]
    fn the_local_clock_stands_in_only_after_the_wait_and_beyond_the_distance() {
        let local = LocalReference {
            wait: 60.0,
            ..LocalReference::at_stratum(10)
        };
        let none = SyncState::unsynchronized(-20);
        assert!(
            !local.replaces(&none, 59.0),
            "sources get their time to answer"
        );
        assert!(local.replaces(&none, 60.0));
        assert!(!local.replaces(&synchronized(0.01), 600.0));
        assert!(
            local.replaces(&synchronized(1.5), 600.0),
            "a source gone stale"
        );
    }
}

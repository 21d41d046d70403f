//! The server's memory for interleaved mode (RFC 9769 §2, docs/PROTOCOL.md#interleaved-mode),
//! sans-IO: per client address, when its last request arrived and when the reply to it
//! left.
//!
//! A fixed table of buckets of [`WAYS`] entries, indexed by a keyed hash of the client's
//! address (an IPv4-mapped address is its IPv4 address): memory is bounded whatever the
//! traffic. A newcomer takes a free entry of its bucket or overwrites one in turn, and
//! the client it displaces simply gets a basic answer next time. An entry answers only
//! its own address, and only to a request naming its receive timestamp exactly, so no
//! client can obtain another's timestamps (ADVERSARIAL 36).

use std::hash::BuildHasher;
use std::net::IpAddr;

use crate::wire::NtpTimestamp;

/// Entries per bucket: a client is displaced only when four others share its bucket.
pub const WAYS: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    client: IpAddr,
    /// The caller's receive time of the last request, which [`InterleaveTable::handle_sent`] names.
    arrived: NtpTimestamp,
    /// The receive timestamp the reply carried: `arrived`, nudged to be unique.
    served: NtpTimestamp,
    /// When the reply left: the estimate it carried until the send reports back.
    transmitted: NtpTimestamp,
}

/// What the table says about one request, and what its reply must carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exchange {
    /// The transmit time of the reply to the client's previous request, if the request
    /// asked for it correctly: the reply is then interleaved.
    pub previous_transmit: Option<NtpTimestamp>,
    /// The receive timestamp to put in the reply.
    pub received: NtpTimestamp,
    /// The transmit timestamp to put in a basic reply.
    pub transmit: NtpTimestamp,
    /// What [`InterleaveTable::commit`] stores once the reply is known to go out.
    entry: Entry,
}

#[derive(Debug)]
pub struct InterleaveTable {
    entries: Vec<Option<Entry>>,
    hasher: std::collections::hash_map::RandomState,
    /// Picks the entry a newcomer overwrites in a full bucket, in turn.
    evictions: usize,
}

impl InterleaveTable {
    /// A table remembering up to `slots` clients (rounded up to a power of two, at least
    /// one bucket).
    pub fn new(slots: usize) -> Self {
        Self {
            entries: vec![None; slots.max(WAYS).next_power_of_two()],
            hasher: std::collections::hash_map::RandomState::new(),
            evictions: 0,
        }
    }

    /// Bytes the table holds.
    pub fn memory(&self) -> usize {
        self.entries.len() * std::mem::size_of::<Option<Entry>>()
    }

    fn bucket_range(&self, client: IpAddr) -> std::ops::Range<usize> {
        let buckets = self.entries.len() / WAYS;
        let index = (self.hasher.hash_one(client) as usize) & (buckets - 1);
        index * WAYS..(index + 1) * WAYS
    }

    fn bucket(&mut self, client: IpAddr) -> &mut [Option<Entry>] {
        let range = self.bucket_range(client);
        self.entries.get_mut(range).unwrap_or_default()
    }

    /// [`Self::plan`] and [`Self::commit`] at once.
    pub fn handle_request(
        &mut self,
        client: IpAddr,
        origin: NtpTimestamp,
        receive_field: NtpTimestamp,
        transmit_field: NtpTimestamp,
        arrived: NtpTimestamp,
        now: NtpTimestamp,
    ) -> Exchange {
        let exchange = self.plan(client, origin, receive_field, transmit_field, arrived, now);
        self.commit(&exchange);
        exchange
    }

    /// Records a request from `client` that arrived at `arrived` and names `origin`,
    /// `receive_field` and `transmit_field`, to be answered at `now`. The request is
    /// interleaved if its origin is the receive timestamp of the client's last reply
    /// and its receive and transmit fields differ (RFC 9769 §2); either way it becomes
    /// the client's last request. Call only for a request that passed every check.
    /// Nothing changes until [`Self::commit`], which the caller does once the reply is
    /// built and goes out (a reply dropped after all leaves the table as it was).
    pub fn plan(
        &self,
        client: IpAddr,
        origin: NtpTimestamp,
        receive_field: NtpTimestamp,
        transmit_field: NtpTimestamp,
        arrived: NtpTimestamp,
        now: NtpTimestamp,
    ) -> Exchange {
        let client = client.to_canonical();
        let bucket = self
            .entries
            .get(self.bucket_range(client))
            .unwrap_or_default();
        let known = bucket
            .iter()
            .flatten()
            .find(|e| e.client == client)
            .copied();
        let previous_transmit = known
            .filter(|e| !origin.is_zero() && e.served == origin && receive_field != transmit_field)
            .map(|e| e.transmitted);
        // Timestamps that could be mistaken for one another are nudged by 2^-32 s: a
        // repeated receive timestamp would name two requests, and a transmit equal to a
        // receive timestamp would make a basic client's next request look interleaved.
        let mut received = arrived;
        while known.is_some_and(|e| e.served == received) || previous_transmit == Some(received) {
            received = NtpTimestamp::from_bits(received.to_bits().wrapping_add(1));
        }
        let mut transmit = now;
        if transmit == received {
            transmit = NtpTimestamp::from_bits(transmit.to_bits().wrapping_add(1));
        }
        let entry = Entry {
            client,
            arrived,
            served: received,
            transmitted: transmit,
        };
        Exchange {
            previous_transmit,
            received,
            transmit,
            entry,
        }
    }

    /// Makes `exchange` (from [`Self::plan`]) the client's last request.
    pub fn commit(&mut self, exchange: &Exchange) {
        let entry = exchange.entry;
        let client = entry.client;
        let turn = self.evictions;
        let bucket = self.bucket(client);
        // The client's own entry, else a free one, else the next in turn.
        let own_or_free = bucket
            .iter()
            .position(|e| e.is_some_and(|e| e.client == client))
            .or_else(|| bucket.iter().position(Option::is_none));
        let mut evicted = false;
        let index = own_or_free.unwrap_or_else(|| {
            evicted = true;
            turn % WAYS
        });
        if let Some(slot) = bucket.get_mut(index) {
            *slot = Some(entry);
        }
        if evicted {
            self.evictions = self.evictions.wrapping_add(1);
        }
    }

    /// The reply to `client`'s request that arrived at `arrived` left at `transmitted`
    /// (read after the send returned): the next interleaved reply carries it. Ignored
    /// if the client has sent another request since.
    pub fn handle_sent(
        &mut self,
        client: IpAddr,
        arrived: NtpTimestamp,
        transmitted: NtpTimestamp,
    ) {
        let client = client.to_canonical();
        let entry = self
            .bucket(client)
            .iter_mut()
            .flatten()
            .find(|e| e.client == client && e.arrived == arrived);
        if let Some(entry) = entry
            && transmitted != entry.served
        {
            entry.transmitted = transmitted;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    fn t(n: u64) -> NtpTimestamp {
        NtpTimestamp::from_bits(0xe000_0000_0000_0000 + (n << 20))
    }

    /// A basic request (origin zero), then one naming the first reply's receive
    /// timestamp: the second gets the first reply's precise transmit time.
    #[test]
    fn a_planned_reply_that_never_went_out_changes_nothing() {
        let mut table = InterleaveTable::new(16);
        table.handle_request(A, NtpTimestamp::ZERO, t(0), t(1), t(10), t(11));
        // Planned, then dropped (too long to send, say): not committed.
        let dropped = table.plan(A, t(10), t(5), t(6), t(20), t(21));
        assert_eq!(dropped.previous_transmit, Some(t(11)));
        let named_dropped = table.plan(A, t(20), t(7), t(8), t(30), t(31));
        assert_eq!(named_dropped.previous_transmit, None);
        let named_sent = table.plan(A, t(10), t(7), t(8), t(30), t(31));
        assert_eq!(named_sent.previous_transmit, Some(t(11)));
    }

    #[test]
    fn a_request_naming_the_last_receive_timestamp_is_interleaved() {
        let mut table = InterleaveTable::new(16);
        let first = table.handle_request(A, NtpTimestamp::ZERO, t(0), t(1), t(10), t(11));
        assert_eq!(first.previous_transmit, None);
        assert_eq!((first.received, first.transmit), (t(10), t(11)));
        table.handle_sent(A, t(10), t(12));
        let second = table.handle_request(A, t(10), t(5), t(6), t(20), t(21));
        assert_eq!(second.previous_transmit, Some(t(12)));
        // Without the send report the estimate is what the next reply carries.
        let third = table.handle_request(A, t(20), t(7), t(8), t(30), t(31));
        assert_eq!(third.previous_transmit, Some(t(21)));
    }

    /// ADVERSARIAL 36: another address, a wrong origin, equal receive and transmit
    /// fields, an origin of zero or a receive timestamp already used: a basic answer.
    #[test]
    fn only_the_same_client_naming_the_right_timestamp_is_interleaved() {
        let mut table = InterleaveTable::new(16);
        table.handle_request(A, NtpTimestamp::ZERO, t(0), t(1), t(10), t(11));
        let other = table.handle_request(B, t(10), t(5), t(6), t(20), t(21));
        assert_eq!(other.previous_transmit, None);
        let wrong = table.handle_request(A, t(11), t(5), t(6), t(30), t(31));
        assert_eq!(wrong.previous_transmit, None);
        let equal = table.handle_request(A, t(30), t(6), t(6), t(40), t(41));
        assert_eq!(equal.previous_transmit, None);
        // The last request's receive time (40) is named: interleaved, once.
        let good = table.handle_request(A, t(40), t(5), t(6), t(50), t(51));
        assert_eq!(good.previous_transmit, Some(t(41)));
        let replay = table.handle_request(A, t(40), t(5), t(6), t(60), t(61));
        assert_eq!(replay.previous_transmit, None);
        // The IPv4-mapped form is the same client.
        let mapped = IpAddr::V6(std::net::Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped());
        let same = table.handle_request(mapped, t(60), t(5), t(6), t(70), t(71));
        assert_eq!(same.previous_transmit, Some(t(61)));
    }

    /// A frozen clock: receive timestamps stay unique per client and never equal the
    /// transmit timestamp beside them (RFC 9769 §2).
    #[test]
    fn timestamps_that_could_be_confused_are_nudged() {
        let mut table = InterleaveTable::new(16);
        let first = table.handle_request(A, NtpTimestamp::ZERO, t(0), t(1), t(10), t(10));
        assert_eq!(first.received, t(10));
        assert_ne!(first.transmit, first.received);
        let second = table.handle_request(A, NtpTimestamp::ZERO, t(0), t(2), t(10), t(10));
        assert_ne!(second.received, first.received);
        assert_ne!(second.transmit, second.received);
        // The send report names the caller's receive time, not the nudged one.
        table.handle_sent(A, t(10), t(15));
        let third = table.handle_request(A, second.received, t(3), t(4), t(20), t(21));
        assert_eq!(third.previous_transmit, Some(t(15)));
    }

    /// Memory is fixed: many clients in a small table displace one another, and a
    /// displaced client gets a basic answer, never someone else's timestamps.
    #[test]
    fn a_flood_of_clients_stays_in_the_table_it_was_given() {
        let mut table = InterleaveTable::new(8);
        let bytes = table.memory();
        table.handle_request(A, NtpTimestamp::ZERO, t(0), t(1), t(10), t(11));
        for i in 0..10_000u32 {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            table.handle_request(ip, t(10), t(0), t(1), t(10), t(11));
        }
        assert_eq!(table.memory(), bytes);
        // What the daemon's default costs per socket (docs: 3 MiB).
        assert_eq!(std::mem::size_of::<Option<Entry>>(), 48);
        let after = table.handle_request(A, t(10), t(5), t(6), t(20), t(21));
        assert_eq!(after.previous_transmit, None);
    }
}

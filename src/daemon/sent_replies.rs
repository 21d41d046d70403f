//! Which reply a kernel transmit time belongs to. The kernel reports each on the
//! socket's error queue with a copy of the packet as it left (link, network and
//! transport headers, then the reply), so a report is matched by the reply's length and
//! its origin, receive and transmit timestamps, which together are unique to one reply.
//! Matching by content, not by a count of packets sent, keeps a send the kernel
//! refused or a report it dropped from shifting every later time onto the wrong client.

use std::collections::VecDeque;
use std::net::IpAddr;

use crate::wire::NtpTimestamp;

/// Bytes 24..48 of an NTP header: the origin, receive and transmit timestamps.
const FINGERPRINT: std::ops::Range<usize> = 24..48;

#[derive(Debug)]
struct Sent {
    client: IpAddr,
    /// The request's receive time, which names the client's interleave entry.
    received: NtpTimestamp,
    len: usize,
    fingerprint: [u8; 24],
}

/// Replies sent that asked for their transmit time and have not had it yet, oldest
/// first; at most `capacity`, the oldest forgotten first (its report never came).
#[derive(Debug)]
pub struct SentReplies {
    waiting: VecDeque<Sent>,
    capacity: usize,
}

impl SentReplies {
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            waiting: VecDeque::with_capacity(capacity),
            capacity,
        }
    }

    /// Remembers `reply`, answering `client`'s request received at `received`, as
    /// waiting for its transmit time. A reply too short to be an NTP packet is ignored.
    pub fn handle_sent(&mut self, client: IpAddr, received: NtpTimestamp, reply: &[u8]) {
        let Some(fingerprint) = reply
            .get(FINGERPRINT)
            .and_then(|bytes| <[u8; 24]>::try_from(bytes).ok())
        else {
            return;
        };
        if self.waiting.len() == self.capacity {
            self.waiting.pop_front();
        }
        self.waiting.push_back(Sent {
            client,
            received,
            len: reply.len(),
            fingerprint,
        });
    }

    /// The client and request receive time of the reply `packet` (as the kernel looped
    /// it back) carried, forgetting it; None if no waiting reply matches.
    pub fn handle_report(&mut self, packet: &[u8]) -> Option<(IpAddr, NtpTimestamp)> {
        let index = self.waiting.iter().position(|sent| {
            packet
                .len()
                .checked_sub(sent.len)
                .and_then(|start| packet.get(start + FINGERPRINT.start..start + FINGERPRINT.end))
                .is_some_and(|bytes| bytes == sent.fingerprint)
        })?;
        let sent = self.waiting.remove(index)?;
        Some((sent.client, sent.received))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    fn reply(tag: u8, len: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; len];
        bytes[24..48].fill(tag);
        bytes
    }

    /// The packet as the kernel loops it back: 14 bytes of link header, 20 of IPv4, 8
    /// of UDP, then the reply.
    fn looped(reply: &[u8]) -> Vec<u8> {
        let mut packet = vec![0xee; 42];
        packet.extend_from_slice(reply);
        packet
    }

    fn t(n: u64) -> NtpTimestamp {
        NtpTimestamp::from_bits(n << 32)
    }

    #[test]
    fn a_report_finds_its_reply_whatever_the_order_and_only_once() {
        let mut sent = SentReplies::new(8);
        sent.handle_sent(A, t(1), &reply(1, 48));
        sent.handle_sent(B, t(2), &reply(2, 48));
        sent.handle_sent(A, t(3), &reply(3, 120));
        assert_eq!(sent.handle_report(&looped(&reply(2, 48))), Some((B, t(2))));
        assert_eq!(sent.handle_report(&looped(&reply(3, 120))), Some((A, t(3))));
        assert_eq!(sent.handle_report(&looped(&reply(2, 48))), None);
        assert_eq!(sent.handle_report(&looped(&reply(1, 48))), Some((A, t(1))));
        assert_eq!(sent.waiting.len(), 0);
    }

    #[test]
    fn a_report_of_another_packet_or_cut_short_matches_nothing() {
        let mut sent = SentReplies::new(8);
        sent.handle_sent(A, t(1), &reply(1, 48));
        // Same timestamps, another length: another packet.
        assert_eq!(sent.handle_report(&looped(&reply(1, 68))), None);
        assert_eq!(sent.handle_report(&looped(&reply(9, 48))), None);
        assert_eq!(sent.handle_report(&[]), None);
        assert_eq!(sent.handle_report(&reply(1, 48)[..40]), None);
        assert_eq!(sent.waiting.len(), 1);
    }

    #[test]
    fn replies_whose_report_never_comes_are_forgotten_oldest_first() {
        let mut sent = SentReplies::new(2);
        for n in 1..=3 {
            sent.handle_sent(A, t(n.into()), &reply(n, 48));
        }
        assert_eq!(sent.waiting.len(), 2);
        assert_eq!(sent.handle_report(&looped(&reply(1, 48))), None);
        assert_eq!(sent.handle_report(&looped(&reply(3, 48))), Some((A, t(3))));
        // Too short to be NTP: not remembered.
        sent.handle_sent(A, t(4), &[0; 40]);
        assert_eq!(sent.waiting.len(), 1);
    }
}

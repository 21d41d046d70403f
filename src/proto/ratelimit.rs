//! Per-source request rate limiting for the server (ADVERSARIAL 26), sans-IO: the
//! caller passes the source address and the time.
//!
//! Each source (an IPv4 address, also when it arrives IPv4-mapped as `::ffff:a.b.c.d`,
//! or an IPv6 /64) has a token bucket: `burst` requests at once, refilled at one per
//! `interval` seconds. Over the limit, a plain request gets a RATE kiss-o'-death one
//! time in `kiss_one_in`, and a source gets at most one kiss per `interval` whatever it
//! sends: a flood with a victim's address as its source earns the victim no more than a
//! client at the limit would get. Sources live in a fixed table indexed by a keyed hash: memory is
//! bounded whatever the traffic, and a collision only gives the newcomer a fresh bucket.

use std::hash::BuildHasher;
use std::net::IpAddr;

/// What to do with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Over the limit: answer with a RATE kiss (if the request is plain).
    Kiss,
    /// Over the limit: stay silent.
    Drop,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Seconds per request on average, per source.
    pub interval: f64,
    /// Requests allowed at once.
    pub burst: u32,
    /// Over the limit, one request in this many gets a RATE kiss (but a source at most
    /// one per `interval`); 0 for none.
    pub kiss_one_in: u32,
}

#[derive(Clone, Copy)]
struct Bucket {
    source: SourceKey,
    tokens: f64,
    updated: f64,
    limited: u32,
    /// When this source was last sent a kiss.
    kissed: f64,
}

pub struct RateLimiter {
    limit: RateLimit,
    buckets: Vec<Option<Bucket>>,
    hasher: std::collections::hash_map::RandomState,
}

impl RateLimiter {
    /// A limiter tracking up to `slots` sources (rounded up to a power of two).
    pub fn new(limit: RateLimit, slots: usize) -> Self {
        Self {
            limit,
            buckets: vec![None; slots.max(1).next_power_of_two()],
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    /// Decides on one request from `source` at `now` (seconds, any monotonic origin).
    pub fn check(&mut self, source: IpAddr, now: f64) -> Verdict {
        let key = source_key(source);
        let slot = (self.hasher.hash_one(key) as usize) & (self.buckets.len() - 1);
        let limit = self.limit;
        let Some(entry) = self.buckets.get_mut(slot) else {
            return Verdict::Allow;
        };
        let bucket = match entry {
            Some(b) if b.source == key => b,
            _ => entry.insert(Bucket {
                source: key,
                tokens: f64::from(limit.burst),
                updated: now,
                limited: 0,
                kissed: f64::NEG_INFINITY,
            }),
        };
        let elapsed = (now - bucket.updated).max(0.0);
        bucket.updated = now;
        bucket.tokens =
            (bucket.tokens + elapsed / limit.interval.max(1e-6)).min(f64::from(limit.burst));
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Verdict::Allow;
        }
        bucket.limited = bucket.limited.wrapping_add(1);
        if limit.kiss_one_in > 0
            && bucket.limited % limit.kiss_one_in == 1 % limit.kiss_one_in
            && now - bucket.kissed >= limit.interval
        {
            bucket.kissed = now;
            Verdict::Kiss
        } else {
            Verdict::Drop
        }
    }
}

/// At most one kiss per source and `interval` seconds, for kisses not tied to a rate
/// (DENY, for sources the access list refuses). A fixed table indexed by a keyed hash;
/// a slot whose source was kissed within the interval is kept, and a newcomer colliding
/// with it gets no kiss, so no flood of addresses can earn any source a second kiss.
pub struct KissThrottle {
    interval: f64,
    slots: Vec<Option<(SourceKey, f64)>>,
    hasher: std::collections::hash_map::RandomState,
}

impl KissThrottle {
    /// A throttle tracking up to `slots` sources (rounded up to a power of two).
    pub fn new(interval: f64, slots: usize) -> Self {
        Self {
            interval,
            slots: vec![None; slots.max(1).next_power_of_two()],
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    /// Whether `source` may be sent a kiss at `now` (seconds, any monotonic origin);
    /// if so, it is counted as kissed.
    pub fn allow(&mut self, source: IpAddr, now: f64) -> bool {
        let key = source_key(source);
        let slot = (self.hasher.hash_one(key) as usize) & (self.slots.len() - 1);
        let interval = self.interval;
        match self.slots.get_mut(slot) {
            Some(Some((_, kissed))) if now - *kissed < interval => false,
            Some(entry) => {
                *entry = Some((key, now));
                true
            }
            None => false,
        }
    }
}

/// The unit per-source limits count in, here and for NTS-KE connections: an IPv4
/// address, or the /64 of an IPv6 address (one host's usual share).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceKey {
    V4([u8; 4]),
    /// The first four 16-bit groups.
    V6([u16; 4]),
}

/// The source `ip` counts as. An IPv4-mapped address (`::ffff:a.b.c.d`, how an IPv6
/// socket that also takes IPv4 sees an IPv4 client) is that IPv4 address: by its /64
/// every IPv4 client would be one source.
pub fn source_key(ip: IpAddr) -> SourceKey {
    match ip.to_canonical() {
        IpAddr::V4(v4) => SourceKey::V4(v4.octets()),
        IpAddr::V6(v6) => {
            let [a, b, c, d, ..] = v6.segments();
            SourceKey::V6([a, b, c, d])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: RateLimit = RateLimit {
        interval: 1.0,
        burst: 4,
        kiss_one_in: 4,
    };

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([198, 51, 100, last])
    }

    /// ADVERSARIAL 26: a flood is limited and kissed sparingly; others are served.
    #[test]
    fn a_flood_is_limited_and_others_are_served() {
        let mut limiter = RateLimiter::new(LIMIT, 1024);
        let verdicts: Vec<Verdict> = (0..100)
            .map(|i| limiter.check(ip(1), f64::from(i) * 0.001))
            .collect();
        assert!(
            verdicts[..4].iter().all(|v| *v == Verdict::Allow),
            "the burst passes"
        );
        let kisses = verdicts.iter().filter(|v| **v == Verdict::Kiss).count();
        let allowed = verdicts.iter().filter(|v| **v == Verdict::Allow).count();
        assert_eq!(allowed, 4);
        assert_eq!(kisses, 1, "one kiss in the interval");
        assert_eq!(limiter.check(ip(2), 0.1), Verdict::Allow, "another source");
        assert_eq!(
            limiter.check(ip(1), 2.5),
            Verdict::Allow,
            "tokens come back"
        );
    }

    /// ADVERSARIAL 26: spoofing a victim's address at any rate sends the victim at most
    /// one RATE kiss per interval, and the flood's kisses do not add up over time.
    #[test]
    fn a_flood_gets_at_most_one_kiss_per_interval() {
        let mut limiter = RateLimiter::new(LIMIT, 1024);
        let kisses_in = |limiter: &mut RateLimiter, start: f64| {
            (0..10_000)
                .map(|i| limiter.check(ip(1), start + f64::from(i) * 0.9e-4))
                .filter(|v| *v == Verdict::Kiss)
                .count()
        };
        assert_eq!(kisses_in(&mut limiter, 0.0), 1, "10 000 requests in 0.9 s");
        assert_eq!(
            kisses_in(&mut limiter, 1.0),
            1,
            "the next interval: one more"
        );
        assert_eq!(
            limiter.check(ip(2), 1.95),
            Verdict::Allow,
            "others are served"
        );
    }

    /// A client only a little over the limit is still told so, one time in
    /// `kiss_one_in`, as long as that is no more than once per interval.
    #[test]
    fn a_client_slightly_over_the_limit_is_kissed_one_time_in_four() {
        let mut limiter = RateLimiter::new(LIMIT, 1024);
        let verdicts: Vec<Verdict> = (0..404)
            .map(|i| limiter.check(ip(1), f64::from(i) * 0.5))
            .collect();
        let limited = verdicts.iter().filter(|v| **v != Verdict::Allow).count();
        let kisses = verdicts.iter().filter(|v| **v == Verdict::Kiss).count();
        assert!(limited > 150, "about every other request is over the limit");
        assert_eq!(kisses, limited.div_ceil(4), "one in four of the limited");
    }

    /// ADVERSARIAL 37: a denied source gets at most one DENY kiss per interval, however
    /// much it sends and however many other addresses flood at the same time.
    #[test]
    fn kiss_throttle_allows_one_kiss_per_source_and_interval() {
        let mut throttle = KissThrottle::new(1.0, 64);
        assert_eq!(throttle.slots.len(), 64);
        let kisses = |t: &mut KissThrottle, start: f64| {
            (0..1000)
                .filter(|&i| t.allow(ip(1), start + f64::from(i) * 0.9e-3))
                .count()
        };
        assert_eq!(kisses(&mut throttle, 0.0), 1);
        assert_eq!(kisses(&mut throttle, 1.0), 1, "the next interval: one more");
        // A flood of other addresses never frees the victim for a second kiss.
        let mut throttle = KissThrottle::new(1.0, 64);
        assert!(throttle.allow(ip(1), 0.0));
        for i in 0..100_000u32 {
            throttle.allow(IpAddr::from(i.to_be_bytes()), 0.5);
        }
        assert!(!throttle.allow(ip(1), 0.9));
        assert_eq!(throttle.slots.len(), 64, "memory is bounded");
    }

    #[test]
    fn a_steady_client_within_the_rate_is_never_limited() {
        let mut limiter = RateLimiter::new(LIMIT, 16);
        for i in 0..1000 {
            assert_eq!(limiter.check(ip(3), f64::from(i) * 1.01), Verdict::Allow);
        }
    }

    #[test]
    fn memory_is_bounded_whatever_the_sources() {
        let mut limiter = RateLimiter::new(LIMIT, 100);
        assert_eq!(limiter.buckets.len(), 128);
        for i in 0..100_000u32 {
            limiter.check(IpAddr::from(i.to_be_bytes()), 0.0);
        }
        assert_eq!(limiter.buckets.len(), 128);
    }

    #[test]
    fn ipv6_hosts_share_their_64() {
        let mut limiter = RateLimiter::new(LIMIT, 1024);
        for i in 0..4u16 {
            let addr = IpAddr::from([0x2001, 0xdb8, 0, 1, 0, 0, 0, i]);
            assert_eq!(limiter.check(addr, 0.0), Verdict::Allow);
        }
        let same_64 = IpAddr::from([0x2001, 0xdb8, 0, 1, 9, 9, 9, 9]);
        assert_ne!(limiter.check(same_64, 0.0), Verdict::Allow);
    }

    /// On an IPv6 socket that also takes IPv4, an IPv4 client arrives IPv4-mapped: it is
    /// the same source as itself unmapped, and distinct IPv4 clients stay distinct.
    #[test]
    fn ipv4_mapped_clients_are_their_ipv4_address() {
        let mapped =
            |last: u8| IpAddr::from(std::net::Ipv4Addr::new(198, 51, 100, last).to_ipv6_mapped());
        let mut limiter = RateLimiter::new(LIMIT, 1024);
        for _ in 0..2 {
            assert_eq!(limiter.check(ip(1), 0.0), Verdict::Allow);
            assert_eq!(limiter.check(mapped(1), 0.0), Verdict::Allow);
        }
        assert_ne!(
            limiter.check(mapped(1), 0.0),
            Verdict::Allow,
            "mapped and plain share one bucket of 4"
        );
        assert_ne!(limiter.check(ip(1), 0.0), Verdict::Allow);
        for last in 2..=200 {
            assert_eq!(
                limiter.check(mapped(last), 0.0),
                Verdict::Allow,
                "198.51.100.{last}, mapped, has a bucket of its own"
            );
        }
        assert_eq!(source_key(mapped(7)), source_key(ip(7)));
        assert_ne!(source_key(mapped(7)), source_key(mapped(8)));
    }
}

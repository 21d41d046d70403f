//! Access control for the server, sans-IO: `allow` and `deny` lists of CIDR blocks and
//! the decision for one client address (ADVERSARIAL 37).
//!
//! As chrony's `allow`/`deny`: the most specific matching entry decides (a longer
//! prefix beats a shorter one, and on an equal prefix `deny` wins). With neither list
//! everyone is allowed; with an `allow` list, an address matching nothing is denied.
//! An IPv4-mapped client (`::ffff:a.b.c.d`, on a dual-stack socket) is matched as its
//! IPv4 address, and so is an IPv4-mapped entry, so a deny list holds either way.

use std::net::IpAddr;

/// Entries an access list may hold in all: each request is checked against every one.
pub const MAX_ENTRIES: usize = 1024;

/// A CIDR block: an address and a prefix length, host bits cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

/// Why an entry or a list was refused; names the entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    #[error("{0:?} is not an IPv4 or IPv6 address, with or without /prefix")]
    BadAddress(String),
    #[error("{0:?}: the prefix must be 0 to {1}")]
    BadPrefix(String, u8),
    #[error("more than {MAX_ENTRIES} allow and deny entries")]
    TooMany,
}

/// At most this many characters of a bad entry are quoted back.
const QUOTED: usize = 64;

fn quoted(text: &str) -> String {
    text.chars().take(QUOTED).collect()
}

impl Cidr {
    /// `a.b.c.d/n`, `v6/n`, or a bare address (a /32 or /128). Host bits are cleared,
    /// as chrony does: `10.1.2.3/8` is `10.0.0.0/8`.
    pub fn parse(text: &str) -> Result<Self, AccessError> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let address: IpAddr = address
            .parse()
            .map_err(|_| AccessError::BadAddress(quoted(text)))?;
        let bits = match address {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        let prefix = match prefix {
            None => bits,
            Some(p) if (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()) => p
                .parse::<u8>()
                .ok()
                .filter(|&p| p <= bits)
                .ok_or_else(|| AccessError::BadPrefix(quoted(text), bits))?,
            Some(_) => return Err(AccessError::BadPrefix(quoted(text), bits)),
        };
        Ok(Self::new(address, prefix))
    }

    /// The block of `address` with a `prefix` no longer than its family's width; an
    /// IPv4-mapped block of at least /96 becomes the IPv4 block it maps.
    fn new(address: IpAddr, prefix: u8) -> Self {
        match address {
            IpAddr::V6(v6) if prefix >= 96 && v6.to_ipv4_mapped().is_some() => {
                let v4 = v6.to_ipv4_mapped().map_or(0, u32::from);
                Self::v4(v4, prefix - 96)
            }
            IpAddr::V4(v4) => Self::v4(u32::from(v4), prefix),
            IpAddr::V6(v6) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                Self {
                    network: IpAddr::from((u128::from(v6) & mask).to_be_bytes()),
                    prefix,
                }
            }
        }
    }

    fn v4(address: u32, prefix: u8) -> Self {
        let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
        Self {
            network: IpAddr::from((address & mask).to_be_bytes()),
            prefix,
        }
    }

    /// Whether the block holds `ip`, an address already made canonical.
    fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                Self::v4(u32::from(ip), self.prefix).network == IpAddr::V4(net)
            }
            (IpAddr::V6(net), IpAddr::V6(_)) => {
                Self::new(ip, self.prefix).network == IpAddr::V6(net)
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// A fixed `allow`/`deny` list for one server socket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessList {
    /// `None`: no allow list, so everyone not denied is allowed.
    allow: Option<Vec<Cidr>>,
    deny: Vec<Cidr>,
}

impl AccessList {
    /// From parsed lists (`allow` is `None` when there is no allow list at all).
    fn new(allow: Option<Vec<Cidr>>, deny: Vec<Cidr>) -> Result<Self, AccessError> {
        if allow.as_ref().map_or(0, Vec::len) + deny.len() > MAX_ENTRIES {
            return Err(AccessError::TooMany);
        }
        Ok(Self { allow, deny })
    }

    /// From the config's text entries; the first bad one is named.
    pub fn parse<S: AsRef<str>>(allow: Option<&[S]>, deny: &[S]) -> Result<Self, AccessError> {
        let parse_all = |list: &[S]| {
            list.iter()
                .map(|s| Cidr::parse(s.as_ref()))
                .collect::<Result<Vec<_>, _>>()
        };
        let allow = allow.map(parse_all).transpose()?;
        Self::new(allow, parse_all(deny)?)
    }

    /// Whether everyone is allowed, so no request needs a check.
    pub fn allows_all(&self) -> bool {
        self.allow.is_none() && self.deny.is_empty()
    }

    /// Whether requests from `ip` may be answered.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        let longest = |list: &[Cidr]| {
            list.iter()
                .filter(|c| c.contains(ip))
                .map(|c| c.prefix)
                .max()
        };
        let denied = longest(&self.deny);
        match (self.allow.as_deref().map(longest), denied) {
            // On an equal prefix, deny wins.
            (Some(Some(allowed)), Some(denied)) => allowed > denied,
            (_, Some(_)) => false,
            (Some(Some(_)), None) => true,
            (Some(None), None) => false,
            (None, None) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn list(allow: Option<&[&str]>, deny: &[&str]) -> AccessList {
        AccessList::parse(allow, deny).unwrap()
    }

    #[test]
    fn good_entries_parse_with_host_bits_cleared() {
        for (text, shown) in [
            ("10.0.0.0/8", "10.0.0.0/8"),
            ("10.1.2.3/8", "10.0.0.0/8"),
            ("192.0.2.7", "192.0.2.7/32"),
            ("0.0.0.0/0", "0.0.0.0/0"),
            ("2001:db8::/32", "2001:db8::/32"),
            ("2001:db8::1", "2001:db8::1/128"),
            ("::/0", "::/0"),
            ("2001:db8:ffff::1/33", "2001:db8:8000::/33"),
            ("::ffff:10.1.0.0/112", "10.1.0.0/16"),
            ("::ffff:192.0.2.1", "192.0.2.1/32"),
            ("10.0.0.0/008", "10.0.0.0/8"),
        ] {
            assert_eq!(Cidr::parse(text).unwrap().to_string(), shown, "{text}");
        }
    }

    #[test]
    fn bad_entries_are_refused_by_name() {
        for text in [
            "",
            "/",
            "/8",
            "10.0.0.0/",
            "10.0.0.0/33",
            "::1/129",
            "10.0.0.0/+8",
            "10.0.0.0/-1",
            "10.0.0.0/ 8",
            " 10.0.0.0",
            "10.0.0.0/8/8",
            "10.0.0.0/0008",
            "10.0.0",
            "fe80::1%eth0",
            "garbage",
            "example.com",
            "10.0.0.0/256",
        ] {
            let err = Cidr::parse(text).unwrap_err();
            assert!(err.to_string().contains(&format!("{text:?}")), "{err}");
        }
        let long = "x".repeat(10_000);
        assert!(Cidr::parse(&long).unwrap_err().to_string().len() < 200);
        let err = AccessList::parse(Some(&["10.0.0.0/8", "::1/129"]), &[]).unwrap_err();
        assert_eq!(err, AccessError::BadPrefix("::1/129".into(), 128));
        let many = vec!["10.0.0.1"; MAX_ENTRIES + 1];
        assert_eq!(AccessList::parse(None, &many), Err(AccessError::TooMany));
    }

    #[test]
    fn without_lists_everyone_is_allowed() {
        let open = AccessList::default();
        assert!(open.allows_all());
        assert!(open.allows(ip("192.0.2.1")) && open.allows(ip("2001:db8::1")));
    }

    #[test]
    fn the_most_specific_entry_wins() {
        let acl = list(Some(&["10.0.0.0/8", "10.1.2.0/24"]), &["10.1.0.0/16"]);
        assert!(acl.allows(ip("10.9.9.9")), "/8 allows");
        assert!(!acl.allows(ip("10.1.9.9")), "/16 deny beats /8 allow");
        assert!(acl.allows(ip("10.1.2.3")), "/24 allow beats /16 deny");
        let deny_only = list(None, &["192.0.2.0/24"]);
        assert!(!deny_only.allows(ip("192.0.2.9")));
        assert!(
            deny_only.allows(ip("198.51.100.1")),
            "no allow list: allowed"
        );
        assert!(!deny_only.allows_all());
    }

    #[test]
    fn on_an_equal_prefix_deny_wins() {
        let acl = list(Some(&["192.0.2.0/24"]), &["192.0.2.0/24"]);
        assert!(!acl.allows(ip("192.0.2.1")));
        let acl = list(Some(&["2001:db8::1"]), &["2001:db8::1/128"]);
        assert!(!acl.allows(ip("2001:db8::1")));
    }

    #[test]
    fn an_allow_list_denies_what_it_does_not_match() {
        let acl = list(Some(&["127.0.0.0/8", "2001:db8::/32"]), &[]);
        assert!(acl.allows(ip("127.0.0.2")) && acl.allows(ip("2001:db8:1::5")));
        assert!(!acl.allows(ip("192.0.2.1")));
        assert!(!acl.allows(ip("2001:db9::1")));
        assert!(!acl.allows(ip("::1")));
        let empty = list(Some(&[]), &[]);
        assert!(!empty.allows(ip("127.0.0.1")), "allow = [] allows no one");
        // An IPv4 entry never matches IPv6 clients, nor the other way round.
        let all_v4 = list(Some(&["0.0.0.0/0"]), &[]);
        assert!(!all_v4.allows(ip("::")));
    }

    #[test]
    fn mapped_clients_and_entries_are_their_ipv4_addresses() {
        let acl = list(Some(&["0.0.0.0/0", "::/0"]), &["192.0.2.0/24"]);
        assert!(!acl.allows(ip("::ffff:192.0.2.7")), "mapped client denied");
        assert!(acl.allows(ip("::ffff:198.51.100.7")));
        let acl = list(None, &["::ffff:192.0.2.0/120"]);
        assert!(!acl.allows(ip("192.0.2.7")), "mapped entry denies IPv4");
        assert!(!acl.allows(ip("::ffff:192.0.2.7")));
        assert!(acl.allows(ip("192.0.3.7")));
        let acl = list(Some(&["10.0.0.0/8"]), &[]);
        assert!(acl.allows(ip("::ffff:10.2.3.4")));
        assert!(!acl.allows(ip("::ffff:11.2.3.4")));
    }
}

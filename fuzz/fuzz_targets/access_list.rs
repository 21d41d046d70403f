//! Any text as `allow`/`deny` entries (split at newlines; the first byte picks which
//! lines are deny entries): a list or an error quoting at most 64 characters, never a
//! panic. An accepted entry prints as a canonical CIDR that parses to itself, and the
//! decision for any address is the same for its IPv4-mapped form.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ntimed::proto::access::{AccessList, Cidr};
use std::net::{IpAddr, Ipv4Addr};

fuzz_target!(|data: &[u8]| {
    let Some((&select, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let (mut allow, mut deny) = (Vec::new(), Vec::new());
    for (i, line) in text.split('\n').enumerate() {
        match Cidr::parse(line) {
            Ok(cidr) => {
                let shown = cidr.to_string();
                assert_eq!(Cidr::parse(&shown), Ok(cidr), "{line:?} → {shown}");
            }
            // At most 64 characters quoted, each escaped to at most 10 ("\u{10ffff}").
            Err(e) => assert!(e.to_string().chars().count() < 64 * 10 + 100, "{e}"),
        }
        if select & (1 << (i % 8)) != 0 {
            deny.push(line);
        } else {
            allow.push(line);
        }
    }
    let allow = (select & 1 == 0).then_some(allow.as_slice());
    if let Ok(list) = AccessList::parse(allow, &deny) {
        let probe = rest
            .get(..4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map_or(Ipv4Addr::LOCALHOST, Ipv4Addr::from);
        assert_eq!(
            list.allows(IpAddr::V4(probe)),
            list.allows(IpAddr::V6(probe.to_ipv6_mapped()))
        );
    }
});

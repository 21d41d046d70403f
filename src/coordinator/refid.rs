//! The reference id announced when an address is our reference (RFC 5905 §7.3).

use std::net::SocketAddr;

use md5::Digest;

use crate::wire::ReferenceId;

/// The IPv4 address itself, or the first four bytes of the MD5 of the IPv6 address
/// (what a peer synchronized to us names as its reference, so loops are recognised).
pub fn reference_id(address: SocketAddr) -> ReferenceId {
    match address {
        SocketAddr::V4(v4) => ReferenceId(v4.ip().octets()),
        SocketAddr::V6(v6) => {
            let digest = md5::Md5::digest(v6.ip().octets());
            let mut id = [0; 4];
            id.copy_from_slice(digest.get(..4).unwrap_or(&[0; 4]));
            ReferenceId(id)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_is_itself_and_ipv6_is_hashed() {
        let v4: SocketAddr = "192.0.2.7:123".parse().unwrap();
        assert_eq!(reference_id(v4), ReferenceId([192, 0, 2, 7]));
        let v6: SocketAddr = "[2001:db8::1]:123".parse().unwrap();
        let other: SocketAddr = "[2001:db8::2]:123".parse().unwrap();
        assert_ne!(reference_id(v6), reference_id(other));
        assert_eq!(
            reference_id(v6),
            reference_id("[2001:db8::1]:9".parse().unwrap())
        );
    }
}

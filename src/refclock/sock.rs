//! chrony's refclock socket protocol (SOCK): a program (gpsd) sends one datagram per
//! sample to a Unix datagram socket the daemon listens on. The datagram is chrony's
//! `struct sock_sample` (refclock_sock.c), 40 bytes on x86_64, native byte order:
//!
//! ```text
//!  0 tv.tv_sec (8)   8 tv.tv_usec (8)   16 offset (double)
//! 24 pulse (int)    28 leap (int)       32 _pad (int)   36 magic (int, "SOCK")
//! ```
//!
//! `tv` is when the sender received the reference, on the system clock; `offset` is
//! the reference time minus `tv`. A `pulse` sample carries only the offset within a
//! second (a PPS edge); it needs a PPS refclock to pair with, which SOCK alone is not,
//! so it is dropped.

use crate::wire::Leap;

/// The datagram's size on x86_64.
pub const SAMPLE_LEN: usize = 40;
/// `SOCK` as chrony writes it.
pub const MAGIC: i32 = 0x534F_434B;
/// Offsets beyond this (seconds) are a sender's garbage, not a clock that is off.
const MAX_OFFSET: f64 = 1e9;

/// One sample from the socket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SockReading {
    /// Reference time minus the receive time `receive`, seconds.
    pub offset: f64,
    /// When the sender received it, Unix seconds and nanoseconds (system clock).
    pub receive: (i64, u32),
    pub leap: Leap,
}

/// Why a datagram was not taken as a sample. Each is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SockDrop {
    #[error("{0} bytes, not {SAMPLE_LEN}")]
    Size(usize),
    #[error("magic {0:#x}, not SOCK")]
    Magic(i32),
    #[error("tv_sec out of range")]
    Seconds,
    #[error("tv_usec not in 0..1000000")]
    Microseconds,
    #[error("offset not a finite number under 1e9 s")]
    Offset,
    #[error("leap {0} is not 0 to 3")]
    Leap(i32),
    #[error("a pulse sample needs a PPS refclock")]
    Pulse,
}

fn field<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    bytes
        .get(at..at + N)
        .and_then(|b| b.try_into().ok())
        .unwrap_or([0; N])
}

/// Parses one datagram.
pub fn parse(bytes: &[u8]) -> Result<SockReading, SockDrop> {
    if bytes.len() != SAMPLE_LEN {
        return Err(SockDrop::Size(bytes.len()));
    }
    let magic = i32::from_ne_bytes(field(bytes, 36));
    if magic != MAGIC {
        return Err(SockDrop::Magic(magic));
    }
    let seconds = i64::from_ne_bytes(field(bytes, 0));
    // The same bound as SHM's: up to the year 2500.
    if !(0..=16_725_225_600).contains(&seconds) {
        return Err(SockDrop::Seconds);
    }
    let micros = u32::try_from(i64::from_ne_bytes(field(bytes, 8)))
        .ok()
        .filter(|&us| us < 1_000_000)
        .ok_or(SockDrop::Microseconds)?;
    let offset = f64::from_ne_bytes(field(bytes, 16));
    if !(offset.is_finite() && offset.abs() < MAX_OFFSET) {
        return Err(SockDrop::Offset);
    }
    if i32::from_ne_bytes(field(bytes, 24)) != 0 {
        return Err(SockDrop::Pulse);
    }
    let leap = match i32::from_ne_bytes(field(bytes, 28)) {
        0 => Leap::NoWarning,
        1 => Leap::AddSecond,
        2 => Leap::DeleteSecond,
        3 => Leap::Unsynchronized,
        other => return Err(SockDrop::Leap(other)),
    };
    Ok(SockReading {
        offset,
        receive: (seconds, micros * 1000),
        leap,
    })
}

/// The datagram chrony's protocol sends (for tests and the fuzzer's seeds).
pub fn encode(receive: (i64, i64), offset: f64, pulse: i32, leap: i32) -> [u8; SAMPLE_LEN] {
    let mut bytes = [0u8; SAMPLE_LEN];
    let parts: [(usize, &[u8]); 6] = [
        (0, &receive.0.to_ne_bytes()),
        (8, &receive.1.to_ne_bytes()),
        (16, &offset.to_ne_bytes()),
        (24, &pulse.to_ne_bytes()),
        (28, &leap.to_ne_bytes()),
        (36, &MAGIC.to_ne_bytes()),
    ];
    for (at, part) in parts {
        if let Some(slot) = bytes.get_mut(at..at + part.len()) {
            slot.copy_from_slice(part);
        }
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_good_sample_parses() {
        let reading = parse(&encode((1_800_000_000, 250_000), -0.002, 0, 1)).unwrap();
        assert_eq!(reading.offset, -0.002);
        assert_eq!(reading.receive, (1_800_000_000, 250_000_000));
        assert_eq!(reading.leap, Leap::AddSecond);
    }

    /// ADVERSARIAL 38: each bad datagram gets its named drop.
    #[test]
    fn bad_datagrams_are_dropped_with_a_reason() {
        let good = encode((1_800_000_000, 1), 0.0, 0, 0);
        assert_eq!(parse(&good[..39]), Err(SockDrop::Size(39)));
        assert_eq!(parse(&[0u8; 41]), Err(SockDrop::Size(41)));
        assert_eq!(parse(&[]), Err(SockDrop::Size(0)));
        let mut wrong_magic = good;
        wrong_magic[36] ^= 0xff;
        assert!(matches!(parse(&wrong_magic), Err(SockDrop::Magic(_))));
        let cases = [
            (encode((-1, 0), 0.0, 0, 0), SockDrop::Seconds),
            (encode((1, 1_000_000), 0.0, 0, 0), SockDrop::Microseconds),
            (encode((1, -1), 0.0, 0, 0), SockDrop::Microseconds),
            (encode((1, 0), f64::NAN, 0, 0), SockDrop::Offset),
            (encode((1, 0), f64::INFINITY, 0, 0), SockDrop::Offset),
            (encode((1, 0), 2e9, 0, 0), SockDrop::Offset),
            (encode((1, 0), 0.0, 1, 0), SockDrop::Pulse),
            (encode((1, 0), 0.0, 0, 7), SockDrop::Leap(7)),
        ];
        for (bytes, expected) in cases {
            assert_eq!(parse(&bytes), Err(expected));
        }
    }
}

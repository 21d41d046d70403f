//! The messages between the engine and the clock process: one fixed 32-byte frame per
//! message, in both directions, over a `SOCK_SEQPACKET` pair (so a frame arrives whole
//! or not at all, and a short or long one is seen as such).
//!
//! ```text
//! request (engine → clock)              reply (clock → engine)
//!  0     kind                            0     kind: 1 applied, 2 refused
//!  1     flag: leap 0–3 / synchronized   1     refusal code (refused), else 0
//!  2..4  zero                            2..4  zero
//!  4..8  request id, big-endian          4..8  the request's id, echoed
//!  8..16 a: f64, big-endian              8..16 at: f64, seconds since the epoch the
//! 16..24 b: f64, big-endian                    command was applied at (applied)
//! 24..32 zero                           16..32 zero
//! ```
//!
//! The id lets the engine tell a late reply from the one it waits for. Decoding is
//! strict, because a frame that is not exactly what the engine would send
//! means the engine is no longer the engine: any malformed request is fatal for the
//! clock process (ADVERSARIAL 27). Numbers must be finite and within coarse bounds here;
//! the policy ([`super::policy`]) applies the real limits.

use crate::clock::ClockCommand;
use crate::wire::Leap;
use crate::wire::reader::Reader;

pub const FRAME_LEN: usize = 32;
pub type Frame = [u8; FRAME_LEN];

/// Coarse bounds, far beyond anything the policy allows: they only keep absurd numbers
/// out of clock arithmetic.
const MAX_OFFSET: f64 = 1e9;
const MAX_DURATION: f64 = 1e7;
const MAX_PPM: f64 = 1e6;
const MAX_ERROR: f64 = 1e9;

mod kind {
    pub const STEP: u8 = 1;
    pub const SLEW: u8 = 2;
    pub const SET_FREQUENCY: u8 = 3;
    pub const SET_LEAP: u8 = 4;
    pub const SET_STATUS: u8 = 5;
    pub const APPLIED: u8 = 1;
    pub const REFUSED: u8 = 2;
}

/// Why a frame was rejected; each names the field at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes, not {FRAME_LEN}")]
    Length(usize),
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    #[error("reserved byte {0} is not zero")]
    Reserved(usize),
    #[error("flag {value} is not valid for {field}")]
    Flag { field: &'static str, value: u8 },
    #[error("{field} is {value}, outside its bounds")]
    OutOfRange { field: &'static str, value: f64 },
}

/// Why the clock process did not apply a command. Unknown codes are kept, not
/// rejected: a newer clock process may know more reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("steps are not allowed by policy")]
    StepsNotAllowed,
    #[error("the start-up step is over (one step, before the first slew)")]
    StartupOver,
    #[error("the step is beyond the panic threshold")]
    StepTooLarge,
    #[error("steps would add up to more than the panic threshold")]
    StepBudgetSpent,
    #[error("the slew is larger or faster than policy allows")]
    SlewTooLarge,
    #[error("the frequency is beyond the maximum frequency")]
    FrequencyTooLarge,
    #[error("a leap second can only be announced on the last day of a month")]
    LeapNotAtMonthEnd,
    #[error("too many commands in too short a time")]
    RateLimited,
    #[error("no clock is steered ([clock] is not configured)")]
    NoClock,
    #[error("the kernel refused the change")]
    System,
    /// The per-boot policy record could not be written first (a full disk, say), so
    /// a change that counts against this boot's steps is not made.
    #[error("the step could not be recorded in the per-boot policy record")]
    NotRecorded,
    #[error("refusal code {0}")]
    Unknown(u8),
}

/// Refusals and their codes on the wire: one table for both directions. Code 0 is
/// never sent, so a zeroed frame cannot pass for a refusal.
const REFUSAL_CODES: [(Refusal, u8); 11] = [
    (Refusal::StepsNotAllowed, 1),
    (Refusal::StartupOver, 2),
    (Refusal::StepTooLarge, 3),
    (Refusal::StepBudgetSpent, 4),
    (Refusal::SlewTooLarge, 5),
    (Refusal::FrequencyTooLarge, 6),
    (Refusal::LeapNotAtMonthEnd, 7),
    (Refusal::RateLimited, 8),
    (Refusal::NoClock, 9),
    (Refusal::System, 10),
    (Refusal::NotRecorded, 11),
];

impl Refusal {
    fn code(self) -> u8 {
        match self {
            Self::Unknown(code) => code,
            known => REFUSAL_CODES
                .iter()
                .find(|(r, _)| *r == known)
                .map_or(0, |&(_, code)| code),
        }
    }

    fn from_code(code: u8) -> Self {
        REFUSAL_CODES
            .iter()
            .find(|&&(_, c)| c == code)
            .map_or(Self::Unknown(code), |&(r, _)| r)
    }
}

/// The clock process's answer to one command.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reply {
    /// Applied at `at` seconds since the shared epoch (the engine's mirror of a
    /// software clock applies it at the same instant, and so stays exact).
    Applied {
        at: f64,
    },
    Refused(Refusal),
}

fn frame(kind: u8, flag: u8, id: u32, a: f64, b: f64) -> Frame {
    let mut out = [0u8; FRAME_LEN];
    out[0] = kind;
    out[1] = flag;
    out[4..8].copy_from_slice(&id.to_be_bytes());
    out[8..16].copy_from_slice(&a.to_be_bytes());
    out[16..24].copy_from_slice(&b.to_be_bytes());
    out
}

pub fn encode_command(id: u32, command: &ClockCommand) -> Frame {
    match *command {
        ClockCommand::Step { offset } => frame(kind::STEP, 0, id, offset, 0.0),
        ClockCommand::Slew { offset, duration } => frame(kind::SLEW, 0, id, offset, duration),
        ClockCommand::SetFrequency { ppm } => frame(kind::SET_FREQUENCY, 0, id, ppm, 0.0),
        ClockCommand::SetLeap(leap) => frame(kind::SET_LEAP, leap.to_bits(), id, 0.0, 0.0),
        ClockCommand::SetStatus {
            synchronized,
            estimated_error,
            max_error,
        } => frame(
            kind::SET_STATUS,
            u8::from(synchronized),
            id,
            estimated_error,
            max_error,
        ),
    }
}

pub fn encode_reply(id: u32, reply: &Reply) -> Frame {
    match *reply {
        Reply::Applied { at } => frame(kind::APPLIED, 0, id, at, 0.0),
        Reply::Refused(why) => frame(kind::REFUSED, why.code(), id, 0.0, 0.0),
    }
}

/// A frame split into its fields, with the length and reserved bytes checked.
struct Fields {
    kind: u8,
    flag: u8,
    id: u32,
    a: f64,
    b: f64,
}

fn split(bytes: &[u8]) -> Result<Fields, FrameError> {
    if bytes.len() != FRAME_LEN {
        return Err(FrameError::Length(bytes.len()));
    }
    let mut r = Reader::new(bytes);
    let (kind, flag) = (r.u8(), r.u8());
    let head = r.array::<2>();
    let id = r.u32();
    let (a, b) = (r.u64(), r.u64());
    let tail = r.array::<8>();
    let (Some(kind), Some(flag), Some(head), Some(id), Some(a), Some(b), Some(tail)) =
        (kind, flag, head, id, a, b, tail)
    else {
        return Err(FrameError::Length(bytes.len()));
    };
    if let Some(i) = head.iter().position(|&x| x != 0) {
        return Err(FrameError::Reserved(2 + i));
    }
    if let Some(i) = tail.iter().position(|&x| x != 0) {
        return Err(FrameError::Reserved(24 + i));
    }
    Ok(Fields {
        kind,
        flag,
        id,
        a: f64::from_bits(a),
        b: f64::from_bits(b),
    })
}

/// `value` if it is finite and within `min..=max`.
fn bounded(field: &'static str, value: f64, min: f64, max: f64) -> Result<f64, FrameError> {
    if value.is_finite() && (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(FrameError::OutOfRange { field, value })
    }
}

/// An unused number field must be exactly +0.0 (no NaN payloads, no −0.0).
fn unused(field: &'static str, value: f64) -> Result<(), FrameError> {
    if value.to_bits() == 0 {
        Ok(())
    } else {
        Err(FrameError::OutOfRange { field, value })
    }
}

fn no_flag(field: &'static str, flag: u8) -> Result<(), FrameError> {
    if flag == 0 {
        Ok(())
    } else {
        Err(FrameError::Flag { field, value: flag })
    }
}

/// Decodes an engine's request and its id. Every byte is checked.
pub fn decode_command(bytes: &[u8]) -> Result<(u32, ClockCommand), FrameError> {
    let f = split(bytes)?;
    command_fields(&f).map(|command| (f.id, command))
}

fn command_fields(f: &Fields) -> Result<ClockCommand, FrameError> {
    match f.kind {
        kind::STEP => {
            no_flag("step", f.flag)?;
            unused("step b", f.b)?;
            let offset = bounded("step offset", f.a, -MAX_OFFSET, MAX_OFFSET)?;
            Ok(ClockCommand::Step { offset })
        }
        kind::SLEW => {
            no_flag("slew", f.flag)?;
            let offset = bounded("slew offset", f.a, -MAX_OFFSET, MAX_OFFSET)?;
            let duration = bounded("slew duration", f.b, 0.0, MAX_DURATION)?;
            Ok(ClockCommand::Slew { offset, duration })
        }
        kind::SET_FREQUENCY => {
            no_flag("frequency", f.flag)?;
            unused("frequency b", f.b)?;
            let ppm = bounded("frequency", f.a, -MAX_PPM, MAX_PPM)?;
            Ok(ClockCommand::SetFrequency { ppm })
        }
        kind::SET_LEAP => {
            let leap = match f.flag {
                flag @ 0..=3 => Leap::from_bits(flag),
                value => {
                    return Err(FrameError::Flag {
                        field: "leap",
                        value,
                    });
                }
            };
            unused("leap a", f.a)?;
            unused("leap b", f.b)?;
            Ok(ClockCommand::SetLeap(leap))
        }
        kind::SET_STATUS => {
            let synchronized = match f.flag {
                0 => false,
                1 => true,
                value => {
                    return Err(FrameError::Flag {
                        field: "synchronized",
                        value,
                    });
                }
            };
            Ok(ClockCommand::SetStatus {
                synchronized,
                estimated_error: bounded("estimated error", f.a, 0.0, MAX_ERROR)?,
                max_error: bounded("maximum error", f.b, 0.0, MAX_ERROR)?,
            })
        }
        other => Err(FrameError::UnknownKind(other)),
    }
}

/// Decodes the clock process's reply and the id it answers.
pub fn decode_reply(bytes: &[u8]) -> Result<(u32, Reply), FrameError> {
    let f = split(bytes)?;
    unused("reply b", f.b)?;
    let reply = match f.kind {
        kind::APPLIED => {
            no_flag("applied", f.flag)?;
            let at = bounded("applied at", f.a, -MAX_DURATION * 1e3, MAX_DURATION * 1e3)?;
            Reply::Applied { at }
        }
        kind::REFUSED if f.flag == 0 => {
            return Err(FrameError::Flag {
                field: "refusal",
                value: 0,
            });
        }
        kind::REFUSED => {
            unused("refused a", f.a)?;
            Reply::Refused(Refusal::from_code(f.flag))
        }
        other => return Err(FrameError::UnknownKind(other)),
    };
    Ok((f.id, reply))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commands() -> Vec<ClockCommand> {
        vec![
            ClockCommand::Step { offset: -0.3 },
            ClockCommand::Slew {
                offset: 0.0012,
                duration: 16.0,
            },
            ClockCommand::SetFrequency { ppm: -41.5 },
            ClockCommand::SetLeap(Leap::AddSecond),
            ClockCommand::SetLeap(Leap::Unsynchronized),
            ClockCommand::SetStatus {
                synchronized: true,
                estimated_error: 1e-4,
                max_error: 0.02,
            },
        ]
    }

    #[test]
    fn every_command_and_reply_round_trips() {
        for (id, command) in (7..).zip(commands()) {
            assert_eq!(
                decode_command(&encode_command(id, &command)),
                Ok((id, command))
            );
        }
        let refusals = REFUSAL_CODES.iter().map(|&(r, _)| Reply::Refused(r));
        for reply in [
            Reply::Applied { at: 12.5 },
            Reply::Refused(Refusal::Unknown(200)),
        ]
        .into_iter()
        .chain(refusals)
        {
            assert_eq!(
                decode_reply(&encode_reply(u32::MAX, &reply)),
                Ok((u32::MAX, reply))
            );
        }
    }

    /// The engine decodes replies as strictly: a reply it cannot read makes it exit.
    #[test]
    fn malformed_replies_are_rejected() {
        let good = encode_reply(3, &Reply::Applied { at: 1.0 });
        assert_eq!(decode_reply(&good[..16]), Err(FrameError::Length(16)));
        let mut kind = good;
        kind[0] = 9;
        assert_eq!(decode_reply(&kind), Err(FrameError::UnknownKind(9)));
        let mut b = good;
        b[16] = 1;
        assert!(
            matches!(decode_reply(&b), Err(FrameError::OutOfRange { .. })),
            "{:?}",
            decode_reply(&b)
        );
        let far = encode_reply(3, &Reply::Applied { at: 1e12 });
        assert!(matches!(
            decode_reply(&far),
            Err(FrameError::OutOfRange { .. })
        ));
        let refused = encode_reply(3, &Reply::Refused(Refusal::StartupOver));
        let mut a = refused;
        a[8..16].copy_from_slice(&1.0f64.to_be_bytes());
        assert!(decode_reply(&a).is_err(), "a number in a refusal");
        let mut zero = refused;
        zero[1] = 0;
        assert!(
            matches!(decode_reply(&zero), Err(FrameError::Flag { .. })),
            "refusal code 0"
        );
        let mut nan = good;
        nan[8..16].copy_from_slice(&f64::NAN.to_be_bytes());
        assert!(matches!(
            decode_reply(&nan),
            Err(FrameError::OutOfRange { .. })
        ));
        let mut flagged = good;
        flagged[1] = 1;
        assert!(matches!(
            decode_reply(&flagged),
            Err(FrameError::Flag { .. })
        ));
    }

    #[test]
    fn short_and_long_frames_are_rejected() {
        let good = encode_command(1, &ClockCommand::Step { offset: 1.0 });
        assert_eq!(decode_command(&good[..31]), Err(FrameError::Length(31)));
        assert_eq!(decode_command(&[]), Err(FrameError::Length(0)));
        let mut long = good.to_vec();
        long.push(0);
        assert_eq!(decode_command(&long), Err(FrameError::Length(33)));
    }

    #[test]
    fn unknown_kinds_reserved_bytes_and_flags_are_rejected() {
        let mut f = encode_command(1, &ClockCommand::SetFrequency { ppm: 1.0 });
        f[0] = 9;
        assert_eq!(decode_command(&f), Err(FrameError::UnknownKind(9)));
        for i in (2..4).chain(24..32) {
            let mut f = encode_command(1, &ClockCommand::SetFrequency { ppm: 1.0 });
            f[i] = 1;
            assert_eq!(decode_command(&f), Err(FrameError::Reserved(i)));
        }
        let mut f = encode_command(1, &ClockCommand::SetLeap(Leap::NoWarning));
        f[1] = 4;
        assert!(matches!(decode_command(&f), Err(FrameError::Flag { .. })));
        // A flag on every command that has none, and a third value for "synchronized".
        let status = ClockCommand::SetStatus {
            synchronized: true,
            estimated_error: 0.0,
            max_error: 0.0,
        };
        for (command, flag) in [
            (ClockCommand::Step { offset: 1.0 }, 1),
            (
                ClockCommand::Slew {
                    offset: 0.1,
                    duration: 1.0,
                },
                1,
            ),
            (ClockCommand::SetFrequency { ppm: 1.0 }, 1),
            (status, 2),
        ] {
            let mut f = encode_command(1, &command);
            f[1] = flag;
            assert!(
                matches!(decode_command(&f), Err(FrameError::Flag { .. })),
                "{command:?}"
            );
        }
    }

    /// Numbers hidden in the fields a command does not use.
    #[test]
    fn numbers_in_unused_fields_are_rejected() {
        for (command, at) in [
            (ClockCommand::Step { offset: 1.0 }, 16),
            (ClockCommand::SetFrequency { ppm: 1.0 }, 16),
            (ClockCommand::SetLeap(Leap::AddSecond), 8),
            (ClockCommand::SetLeap(Leap::AddSecond), 16),
        ] {
            let mut f = encode_command(1, &command);
            f[at..at + 8].copy_from_slice(&1.0f64.to_be_bytes());
            assert!(
                matches!(decode_command(&f), Err(FrameError::OutOfRange { .. })),
                "{command:?} at {at}"
            );
        }
    }

    #[test]
    fn nan_infinity_and_absurd_numbers_are_rejected() {
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 1e300] {
            for command in [
                ClockCommand::Step { offset: bad },
                ClockCommand::Slew {
                    offset: bad,
                    duration: 1.0,
                },
                ClockCommand::Slew {
                    offset: 0.1,
                    duration: bad,
                },
                ClockCommand::SetFrequency { ppm: bad },
                ClockCommand::SetStatus {
                    synchronized: false,
                    estimated_error: bad,
                    max_error: 1.0,
                },
            ] {
                assert!(
                    matches!(
                        decode_command(&encode_command(1, &command)),
                        Err(FrameError::OutOfRange { .. })
                    ),
                    "{command:?}"
                );
            }
        }
        // Negative durations and errors, errors beyond their bound, and a number hidden
        // in an unused field.
        let status = |estimated_error, max_error| ClockCommand::SetStatus {
            synchronized: true,
            estimated_error,
            max_error,
        };
        for bad in [
            ClockCommand::Slew {
                offset: 0.1,
                duration: -1.0,
            },
            status(-1.0, 1.0),
            status(1.0, -1.0),
            status(1.0, MAX_ERROR * 2.0),
            ClockCommand::Step {
                offset: MAX_OFFSET * 2.0,
            },
        ] {
            assert!(
                matches!(
                    decode_command(&encode_command(1, &bad)),
                    Err(FrameError::OutOfRange { .. })
                ),
                "{bad:?}"
            );
        }
        let mut f = encode_command(1, &ClockCommand::Step { offset: 1.0 });
        f[16..24].copy_from_slice(&(-0.0f64).to_be_bytes());
        assert!(decode_command(&f).is_err());
    }
}

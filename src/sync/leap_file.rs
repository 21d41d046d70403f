//! The IERS/NIST `leap-seconds.list` (tzdata ships it as
//! `/usr/share/zoneinfo/leap-seconds.list`), and which leap second it announces when.
//!
//! ```text
//! #$   3960835200          when the file was last updated (NTP seconds)
//! #@   3991593600          when it expires
//! 2272060800   10   # 1 Jan 1972      from this instant, TAI − UTC is 10 s
//! ...
//! #h   49db2447 571e5e1b 2f002a53 9c8da8e4 39b8e49e      SHA-1 of the data
//! ```
//!
//! The hash covers the digits of the `#$` and `#@` values and of the first two fields
//! of every data line, concatenated without whitespace. A file whose hash does not
//! match, that does not parse, or whose entries are out of order or change TAI − UTC by
//! more than a second is refused whole; an expired one parses but announces nothing.
//! Comments (`#` followed by anything else) are ignored.

use sha1::{Digest, Sha1};

use crate::wire::{Leap, NtpTimestamp};

/// Files are a few KiB; anything larger is refused unread.
pub const MAX_LEAP_FILE_LEN: usize = 64 * 1024;
/// More entries than a century of leap seconds could need.
const MAX_ENTRIES: usize = 1000;
/// A leap second is announced during the last day before it (RFC 5905's LI).
pub const ANNOUNCE_BEFORE: u64 = 86_400;
/// Seconds from 1900 (NTP's era 0) to 1970.
const NTP_TO_UNIX: i64 = 2_208_988_800;

/// Why a leap-seconds file was refused, naming the line where there is one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeapFileError {
    #[error("larger than {MAX_LEAP_FILE_LEN} bytes")]
    TooLarge,
    #[error("line {line}: {problem}")]
    Line { line: usize, problem: String },
    #[error("no {0} line")]
    Missing(&'static str),
    #[error("the #h hash does not match the data (a damaged or altered file)")]
    HashMismatch,
    #[error("no entries")]
    Empty,
}

/// A checked leap-seconds file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeapFile {
    /// When it was last updated, NTP seconds.
    pub updated: u64,
    /// When it stops being trusted, NTP seconds.
    pub expires: u64,
    /// (from, TAI − UTC) in ascending order of `from`.
    entries: Vec<(u64, i32)>,
}

impl LeapFile {
    /// Parses and checks `text` (see the module's notes).
    pub fn parse(text: &str) -> Result<Self, LeapFileError> {
        if text.len() > MAX_LEAP_FILE_LEN {
            return Err(LeapFileError::TooLarge);
        }
        let (mut updated, mut expires, mut hash) = (None, None, None);
        let mut entries: Vec<(u64, i32)> = Vec::new();
        let mut hashed = Sha1::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let bad = |problem: &str| LeapFileError::Line {
                line,
                problem: problem.into(),
            };
            if let Some(rest) = raw.strip_prefix("#$") {
                let value = number(rest.trim()).ok_or_else(|| bad("#$ is not a number"))?;
                hashed.update(rest.trim().as_bytes());
                updated = Some(value);
            } else if let Some(rest) = raw.strip_prefix("#@") {
                let value = number(rest.trim()).ok_or_else(|| bad("#@ is not a number"))?;
                hashed.update(rest.trim().as_bytes());
                expires = Some(value);
            } else if let Some(rest) = raw.strip_prefix("#h") {
                hash = Some(parse_hash(rest).ok_or_else(|| bad("#h is not a SHA-1 hash"))?);
            } else if raw.starts_with('#') || raw.trim().is_empty() {
                continue;
            } else {
                let mut fields = raw.split('#').next().unwrap_or_default().split_whitespace();
                let (Some(from), Some(offset), None) =
                    (fields.next(), fields.next(), fields.next())
                else {
                    return Err(bad("a data line is two numbers and a comment"));
                };
                let at = number(from).ok_or_else(|| bad("the time is not a number"))?;
                let tai = number(offset)
                    .and_then(|o| i32::try_from(o).ok())
                    .ok_or_else(|| bad("TAI − UTC is not a number"))?;
                check_entry(entries.last().copied(), at, tai).map_err(|p| bad(&p))?;
                if entries.len() == MAX_ENTRIES {
                    return Err(bad("too many entries"));
                }
                hashed.update(from.as_bytes());
                hashed.update(offset.as_bytes());
                entries.push((at, tai));
            }
        }
        let hash = hash.ok_or(LeapFileError::Missing("#h"))?;
        if hashed.finalize().as_slice() != hash {
            return Err(LeapFileError::HashMismatch);
        }
        if entries.is_empty() {
            return Err(LeapFileError::Empty);
        }
        Ok(Self {
            updated: updated.ok_or(LeapFileError::Missing("#$"))?,
            expires: expires.ok_or(LeapFileError::Missing("#@"))?,
            entries,
        })
    }

    pub fn is_expired(&self, now: u64) -> bool {
        now >= self.expires
    }

    /// What to announce at `now` (NTP seconds): a leap second during the last
    /// [`ANNOUNCE_BEFORE`] seconds before it, else no warning. Nothing (`None`) from an
    /// expired file. Only leaps at the end of June or December are announced: those are
    /// the only ones the clock process accepts.
    pub fn announcement(&self, now: u64) -> Option<Leap> {
        if self.is_expired(now) {
            return None;
        }
        // Asked per served packet: the next entry by binary search, not a scan.
        let next = self.entries.partition_point(|&(at, _)| at <= now);
        let leap = match (
            next.checked_sub(1).and_then(|i| self.entries.get(i)),
            self.entries.get(next),
        ) {
            (Some(&(_, before)), Some(&(at, tai)))
                if at - now <= ANNOUNCE_BEFORE && matches!(civil_date(at), Some((_, 1 | 7, 1))) =>
            {
                match tai - before {
                    1 => Leap::AddSecond,
                    _ => Leap::DeleteSecond,
                }
            }
            _ => Leap::NoWarning,
        };
        Some(leap)
    }

    /// [`announcement`](Self::announcement) at a clock reading.
    pub fn announcement_at(&self, now: NtpTimestamp) -> Option<Leap> {
        self.announcement(ntp_seconds(now))
    }

    /// TAI − UTC at `now` (NTP seconds), from the last entry at or before it.
    pub fn tai_offset(&self, now: u64) -> Option<i32> {
        self.entries
            .iter()
            .take_while(|(at, _)| *at <= now)
            .last()
            .map(|&(_, tai)| tai)
    }

    /// The leap second within `reach` seconds of `now` (NTP seconds), nearest first:
    /// its midnight and whether it inserts a second. Only leaps at the end of June or
    /// December (as [`announcement`](Self::announcement)). Unlike an announcement, this
    /// holds after the file expires: a leap it lists was announced by the IERS, and a
    /// smear under way must not end halfway because the file expired.
    pub fn leap_near(&self, now: u64, reach: u64) -> Option<(u64, bool)> {
        let next = self.entries.partition_point(|&(at, _)| at <= now);
        // The entry at or before `now` and the one after it; the first is no leap.
        let candidates = [next.checked_sub(1), Some(next)];
        candidates
            .into_iter()
            .flatten()
            .filter(|&i| i > 0)
            .filter_map(|i| Some((self.entries.get(i - 1)?.1, *self.entries.get(i)?)))
            .filter(|&(_, (at, _))| {
                at.abs_diff(now) <= reach && matches!(civil_date(at), Some((_, 1 | 7, 1)))
            })
            .min_by_key(|&(_, (at, _))| at.abs_diff(now))
            .map(|(before, (at, tai))| (at, tai > before))
    }

    /// The latest leap second the file knows of, NTP seconds (the first entry is the
    /// start of the table, not a leap).
    pub fn last_leap(&self) -> Option<u64> {
        self.entries.iter().skip(1).last().map(|&(at, _)| at)
    }
}

/// Whether `now` is in June or December (UTC): the only months whose end has ever had,
/// or may have, a leap second that the clock process accepts, so the only ones in which
/// the sources' announcement of one is believed.
pub fn in_leap_month(now: NtpTimestamp) -> bool {
    matches!(civil_date(ntp_seconds(now)), Some((_, 6 | 12, _)))
}

/// The midnight (NTP seconds) at the end of the day of `now`, if a leap second may
/// happen there: the day is 30 June or 31 December (UTC).
pub fn leap_midnight_after(now: NtpTimestamp) -> Option<u64> {
    let midnight = (ntp_seconds(now) / 86_400 + 1) * 86_400;
    matches!(civil_date(midnight), Some((_, 1 | 7, 1))).then_some(midnight)
}

/// Seconds since 1900 as the file counts them (past 2036 too), reading `now` in the
/// era around 2023.
pub fn ntp_seconds(now: NtpTimestamp) -> u64 {
    const PIVOT_UNIX: i64 = 1_700_000_000;
    let (unix, _) = now.to_unix(PIVOT_UNIX);
    u64::try_from(unix.saturating_add(NTP_TO_UNIX)).unwrap_or(0)
}

/// Digits only: no sign, no spaces, at most 20 of them.
fn number(text: &str) -> Option<u64> {
    if text.is_empty() || text.len() > 20 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Five groups of up to eight hex digits (leading zeros of a group may be left out).
fn parse_hash(text: &str) -> Option<[u8; 20]> {
    let mut hash = [0u8; 20];
    let mut groups = text.split_whitespace();
    for chunk in hash.chunks_exact_mut(4) {
        let group = groups.next()?;
        if group.len() > 8 {
            return None;
        }
        chunk.copy_from_slice(&u32::from_str_radix(group, 16).ok()?.to_be_bytes());
    }
    groups.next().is_none().then_some(hash)
}

/// An entry must come after the one before it, at midnight UTC on the first of a
/// month, with TAI − UTC one second away from the one before.
fn check_entry(previous: Option<(u64, i32)>, at: u64, tai: i32) -> Result<(), String> {
    match civil_date(at) {
        Some((_, _, 1)) if at.is_multiple_of(86_400) => {}
        _ => return Err("not midnight UTC on the first of a month".into()),
    }
    if let Some((before, before_tai)) = previous {
        if at <= before {
            return Err("not after the entry before it".into());
        }
        if (tai - before_tai).abs() != 1 {
            return Err("TAI − UTC changes by other than one second".into());
        }
    }
    Ok(())
}

/// The UTC civil date (year, month, day) of `ntp` seconds (H. Hinnant's algorithm).
fn civil_date(ntp: u64) -> Option<(i64, u32, u32)> {
    let days = (i64::try_from(ntp).ok()? - NTP_TO_UNIX).div_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = u32::try_from(doy - (153 * mp + 2) / 5 + 1).ok()?;
    let month = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).ok()?;
    Some((yoe + era * 400 + i64::from(month <= 2), month, day))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file of `lines`, with a hash made for it.
    fn file(lines: &[(u64, i32)], updated: u64, expires: u64) -> String {
        let mut text = format!("# test\n#$\t{updated}\n#@\t{expires}\n");
        let mut hashed = Sha1::new();
        hashed.update(updated.to_string());
        hashed.update(expires.to_string());
        for (at, tai) in lines {
            text += &format!("{at}\t{tai}\t# comment\n");
            hashed.update(at.to_string());
            hashed.update(tai.to_string());
        }
        let hash = hashed.finalize();
        let groups: Vec<String> = hash
            .chunks(4)
            .map(|c| format!("{:x}", u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
            .collect();
        text + &format!("#h\t{}\n", groups.join(" "))
    }

    const JAN_2017: u64 = 3_692_217_600;
    const JUL_2015: u64 = 3_644_697_600;

    #[test]
    fn the_tzdata_file_on_this_machine_parses_if_present() {
        let Ok(text) = std::fs::read_to_string("/usr/share/zoneinfo/leap-seconds.list") else {
            return;
        };
        let file = LeapFile::parse(&text).unwrap();
        assert_eq!(file.tai_offset(JAN_2017), Some(37));
        assert_eq!(file.last_leap(), Some(JAN_2017));
    }

    #[test]
    fn a_leap_is_announced_during_the_last_day_only() {
        let text = file(
            &[(JUL_2015, 36), (JAN_2017, 37)],
            JUL_2015,
            JAN_2017 + 86_400 * 100,
        );
        let f = LeapFile::parse(&text).unwrap();
        assert_eq!(f.announcement(JAN_2017 - 86_401), Some(Leap::NoWarning));
        assert_eq!(f.announcement(JAN_2017 - 86_400), Some(Leap::AddSecond));
        assert_eq!(f.announcement(JAN_2017 - 1), Some(Leap::AddSecond));
        assert_eq!(f.announcement(JAN_2017), Some(Leap::NoWarning));
        assert_eq!(f.tai_offset(JAN_2017 - 1), Some(36));
        assert_eq!(f.tai_offset(JAN_2017), Some(37));
        // The first entry starts the table; it is no leap to announce.
        assert_eq!(f.announcement(JUL_2015 - 10), Some(Leap::NoWarning));
        assert_eq!(f.announcement(JAN_2017 + 86_400 * 100), None, "expired");
        let negative = file(&[(JUL_2015, 36), (JAN_2017, 35)], 1, JAN_2017 + 1);
        let f = LeapFile::parse(&negative).unwrap();
        assert_eq!(f.announcement(JAN_2017 - 5), Some(Leap::DeleteSecond));
    }

    #[test]
    fn the_leap_near_a_time_is_found_on_both_sides_of_it() {
        const JUN_2012: u64 = 3_550_089_600;
        let text = file(
            &[(JUN_2012, 35), (JUL_2015, 36), (JAN_2017, 37)],
            1,
            JAN_2017 + 86_400 * 100,
        );
        let f = LeapFile::parse(&text).unwrap();
        assert_eq!(
            f.leap_near(JAN_2017 - 43_200, 43_200),
            Some((JAN_2017, true))
        );
        assert_eq!(
            f.leap_near(JAN_2017 + 43_200, 43_200),
            Some((JAN_2017, true))
        );
        assert_eq!(f.leap_near(JAN_2017 + 43_201, 43_200), None);
        assert_eq!(f.leap_near(JAN_2017 - 43_201, 43_200), None);
        assert_eq!(f.leap_near(JUL_2015 + 5, 43_200), Some((JUL_2015, true)));
        assert_eq!(
            f.leap_near(JUN_2012, 43_200),
            None,
            "the first entry is no leap"
        );
        let expired = JAN_2017 + 86_400 * 100;
        assert_eq!(
            f.leap_near(expired, 1 << 40),
            Some((JAN_2017, true)),
            "still listed"
        );
        let negative = file(&[(JUL_2015, 36), (JAN_2017, 35)], 1, JAN_2017 + 1);
        let f = LeapFile::parse(&negative).unwrap();
        assert_eq!(f.leap_near(JAN_2017 - 5, 10), Some((JAN_2017, false)));
    }

    #[test]
    fn bad_files_are_refused_with_the_line() {
        let good = file(&[(JUL_2015, 36), (JAN_2017, 37)], 1, 2);
        let tampered = good.replace("\t37\t", "\t38\t");
        assert!(LeapFile::parse(&tampered).is_err());
        let changed = good.replace(&format!("{JAN_2017}"), &format!("{}", JAN_2017 + 86_400));
        assert!(matches!(
            LeapFile::parse(&changed),
            Err(LeapFileError::Line { line: 5, .. })
        ));
        assert_eq!(
            LeapFile::parse(&file(&[(JAN_2017, 37), (JUL_2015, 36)], 1, 2)),
            Err(LeapFileError::Line {
                line: 5,
                problem: "not after the entry before it".into()
            })
        );
        assert!(LeapFile::parse(&file(&[(JUL_2015, 36), (JAN_2017, 38)], 1, 2)).is_err());
        let no_hash: String = good.lines().filter(|l| !l.starts_with("#h")).collect();
        assert!(LeapFile::parse(&no_hash).is_err());
        let no_expiry = file(&[(JUL_2015, 36)], 1, 2).replace("#@\t2\n", "");
        assert!(LeapFile::parse(&no_expiry).is_err());
        assert_eq!(
            LeapFile::parse(&"#".repeat(MAX_LEAP_FILE_LEN + 1)),
            Err(LeapFileError::TooLarge)
        );
        for garbage in ["#$ -1\n", "#@ 1e9\n", "12 x\n", "1 2 3\n", "#h 1 2\n"] {
            assert!(LeapFile::parse(garbage).is_err(), "{garbage:?}");
        }
    }

    #[test]
    fn june_and_december_are_the_leap_months() {
        let at = |unix| NtpTimestamp::from_unix(unix, 0);
        assert!(in_leap_month(at(1_435_708_799))); // 2015-06-30 23:59:59
        assert!(!in_leap_month(at(1_435_708_800))); // 2015-07-01
        assert!(in_leap_month(at(1_483_228_799))); // 2016-12-31 23:59:59
        assert!(!in_leap_month(at(1_800_000_000))); // 2027-01-15
    }

    #[test]
    fn a_leap_midnight_ends_30_june_or_31_december_only() {
        let at = |ntp: u64| NtpTimestamp::from_unix(i64::try_from(ntp).unwrap() - NTP_TO_UNIX, 0);
        assert_eq!(leap_midnight_after(at(JAN_2017 - 3600)), Some(JAN_2017));
        assert_eq!(leap_midnight_after(at(JUL_2015 - 1)), Some(JUL_2015));
        assert_eq!(
            leap_midnight_after(at(JAN_2017 - 86_400 - 3600)),
            None,
            "30 December"
        );
        assert_eq!(leap_midnight_after(at(JAN_2017)), None, "1 January");
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_date(JAN_2017), Some((2017, 1, 1)));
        assert_eq!(civil_date(JUL_2015), Some((2015, 7, 1)));
        assert_eq!(civil_date(u64::MAX), None);
    }
}

//! The `[leap] file`, read at start and on reload, and the leap it adds to what the
//! servers announce.

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwapOption;

use crate::sync::leap_file::{LeapFile, MAX_LEAP_FILE_LEN};
use crate::util::Problems;
use crate::wire::{Leap, NtpTimestamp};

/// The leap-seconds file in use, if any; a reload swaps it.
pub type SharedLeapFile = Arc<ArcSwapOption<LeapFile>>;

/// Reads `path` (a regular file of at most [`MAX_LEAP_FILE_LEN`] bytes).
pub fn read(path: &Path) -> Result<Vec<u8>, String> {
    crate::util::read_bounded(path, MAX_LEAP_FILE_LEN as u64)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Parses what [`read`] read: `Err` names the file and the problem. An expired file is
/// returned with a warning recorded: it announces nothing.
pub fn parse(
    path: &Path,
    bytes: &[u8],
    now: NtpTimestamp,
    problems: &mut Problems,
) -> Result<LeapFile, String> {
    let shown = path.display();
    let text = std::str::from_utf8(bytes).map_err(|_| format!("{shown}: not text"))?;
    let file = LeapFile::parse(text).map_err(|e| format!("{shown}: {e}"))?;
    if file.is_expired(crate::sync::leap_file::ntp_seconds(now)) {
        problems.warning(format!(
            "{shown}: expired (update tzdata or fetch a new list); no leap second is announced from it"
        ));
    }
    Ok(file)
}

/// Reads and parses `path` at start. A file that cannot be used is a warning, not an
/// error: time is served without it, and no leap second is taken from it.
pub fn load(path: &Path, now: NtpTimestamp, problems: &mut Problems) -> Option<LeapFile> {
    let parsed = read(path).and_then(|bytes| parse(path, &bytes, now, problems));
    match parsed {
        Ok(file) => Some(file),
        Err(e) => {
            problems.warning(format!("{e}; no leap second is announced from it"));
            None
        }
    }
}

/// What a server announces at `now`: an unsynchronized clock says so; otherwise a
/// usable file decides (so a leap announced by the sources is withdrawn the moment the
/// file says it has passed), and without one the clock's own indicator.
pub fn served(leap: Leap, file: &SharedLeapFile, now: NtpTimestamp) -> Leap {
    if leap == Leap::Unsynchronized {
        return leap;
    }
    let file = file.load();
    file.as_deref()
        .and_then(|f| f.announcement_at(now))
        .unwrap_or(leap)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::KeyStore;
    use crate::clock::SoftwareClock;
    use crate::daemon::serve::{Admission, Reference};
    use crate::proto::server::{Server, ServerOptions};
    use crate::wire::packet::Header;
    use sha1::{Digest, Sha1};

    const JUL_2015: u64 = 3_644_697_600;
    /// 2030-01-01 00:00:00 UTC.
    const JAN_2030: u64 = 4_102_444_800;

    fn file(expires: u64) -> LeapFile {
        let mut text = format!("#$ 1\n#@ {expires}\n{JUL_2015} 36\n{JAN_2030} 37\n");
        let hash = Sha1::digest(format!("1{expires}{JUL_2015}36{JAN_2030}37"));
        let groups: Vec<String> = hash.chunks(4).map(hex::encode_group).collect();
        text += &format!("#h {}\n", groups.join(" "));
        LeapFile::parse(&text).unwrap()
    }

    mod hex {
        pub fn encode_group(c: &[u8]) -> String {
            c.iter().map(|b| format!("{b:02x}")).collect()
        }
    }

    /// The reply a local stratum-1 server gives, its clock set to `clock_at` (NTP
    /// seconds), with `leap_file` in use and leaps smeared over `smear_window`; and the
    /// time its clock read when the reply was sent.
    async fn served_reply(
        reference: Reference,
        leap_file: Option<LeapFile>,
        smear_window: Option<f64>,
        clock_at: u64,
    ) -> (Header, NtpTimestamp) {
        let now_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let target = clock_at as f64 - crate::wire::timestamp::NTP_UNIX_OFFSET as f64;
        let clock = Arc::new(SoftwareClock::simulated(target - now_unix, 0.0));
        let admission = Admission {
            leap_file: Arc::new(ArcSwapOption::from_pointee(leap_file)),
            smear_window,
            ..Admission::default()
        };
        let server = Server::new(KeyStore::default(), ServerOptions::default());
        let listen = "127.0.0.1:0".parse().unwrap();
        let running =
            crate::daemon::serve::start(listen, server, reference, admission, clock.clone())
                .await
                .unwrap();
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut request = Vec::new();
        Header::client_request(6, NtpTimestamp::from_bits(42)).write(&mut request);
        socket.send_to(&request, running.local_addr).await.unwrap();
        let mut reply = [0u8; 128];
        let len = tokio::time::timeout(std::time::Duration::from_secs(5), socket.recv(&mut reply))
            .await
            .unwrap()
            .unwrap();
        let read = crate::clock::Clock::now(&*clock);
        (Header::parse(&reply[..len]).unwrap(), read)
    }

    const LOCAL: Reference = Reference::Local { stratum: 1 };

    async fn served_leap_bits(leap_file: Option<LeapFile>) -> u8 {
        let (header, _) = served_reply(LOCAL, leap_file, None, JAN_2030 - 43_200).await;
        header.leap.to_bits()
    }

    #[tokio::test]
    async fn a_local_server_announces_the_files_leap_the_day_before() {
        assert_eq!(served_leap_bits(None).await, 0);
        assert_eq!(served_leap_bits(Some(file(JAN_2030 + 86_400))).await, 1);
        let expired = file(JAN_2030 - 86_400);
        assert_eq!(served_leap_bits(Some(expired)).await, 0, "an expired file");
    }

    #[tokio::test]
    async fn a_smearing_server_serves_smeared_time_and_announces_no_leap() {
        // An hour before the leap, 11/24 of the second is smeared away.
        let file = Some(file(JAN_2030 + 86_400));
        let (header, read) =
            served_reply(LOCAL, file.clone(), Some(86_400.0), JAN_2030 - 3_600).await;
        assert_eq!(header.leap.to_bits(), 0, "no leap announced");
        let behind = read.seconds_since(header.transmit_time);
        assert!(
            (behind - 39_600.0 / 86_400.0).abs() < 0.05,
            "{behind} s behind"
        );
        assert!(header.transmit_time.seconds_since(header.receive_time) >= 0.0);
        // Outside the window, time is served as read.
        let (header, read) =
            served_reply(LOCAL, file.clone(), Some(86_400.0), JAN_2030 - 50_000).await;
        assert!(read.seconds_since(header.transmit_time).abs() < 0.05);
        // Unsynchronized, the reference time stays zero and LI stays 3.
        let (header, _) = served_reply(
            Reference::Unsynchronized,
            file,
            Some(86_400.0),
            JAN_2030 - 3_600,
        )
        .await;
        assert!(header.reference_time.is_zero());
        assert_eq!(header.leap, crate::wire::Leap::Unsynchronized);
    }

    #[tokio::test]
    async fn served_time_runs_on_through_the_repeated_second() {
        use crate::clock::{Clock, ClockCommand};
        // The clock 1.5 s before the leap; the test steps it back a second at midnight,
        // as the kernel does, while a client asks every 20 ms.
        let leap = NtpTimestamp::from_bits(JAN_2030 << 32);
        let now_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let target = JAN_2030 as f64 - 1.5 - crate::wire::timestamp::NTP_UNIX_OFFSET as f64;
        let clock = Arc::new(SoftwareClock::simulated(target - now_unix, 0.0));
        let admission = Admission {
            leap_file: Arc::new(ArcSwapOption::from_pointee(Some(file(JAN_2030 + 86_400)))),
            smear_window: Some(86_400.0),
            ..Admission::default()
        };
        let server = Server::new(KeyStore::default(), ServerOptions::default());
        let running = crate::daemon::serve::start(
            "127.0.0.1:0".parse().unwrap(),
            server,
            Reference::Local { stratum: 1 },
            admission,
            clock.clone(),
        )
        .await
        .unwrap();
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        let mut request = Vec::new();
        Header::client_request(6, NtpTimestamp::from_bits(42)).write(&mut request);
        let mut stepped = false;
        let mut served = Vec::new();
        while served.len() < 150 {
            if !stepped && clock.now().seconds_since(leap) >= 0.0 {
                clock.apply(ClockCommand::Step { offset: -1.0 }).unwrap();
                stepped = true;
            }
            socket.send_to(&request, running.local_addr).unwrap();
            let mut reply = [0u8; 128];
            let len = socket.recv(&mut reply).unwrap();
            let header = Header::parse(&reply[..len]).unwrap();
            // Real time from the leap: the clock reads a second less once stepped.
            let real = clock.now().seconds_since(leap) + if stepped { 1.0 } else { 0.0 };
            let received = header.receive_time.seconds_since(leap);
            let transmitted = header.transmit_time.seconds_since(leap);
            assert!(
                received <= transmitted,
                "{real}: received {received}, sent {transmitted}"
            );
            served.push((real, transmitted, received));
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(stepped, "the clock passed the leap");
        for &(real, shown, _) in &served {
            let share = (real + 43_200.0) / 86_400.0;
            assert!(
                (shown - (real - share)).abs() < 0.02,
                "{real}: served {shown}"
            );
        }
        for pair in served.windows(2) {
            assert!(pair[1].1 > pair[0].1, "served time went back: {pair:?}");
            assert!(pair[1].2 > pair[0].2, "receive times went back: {pair:?}");
        }
    }
}

//! The supervisor's end of the reload link (see [`crate::daemon::reload`]): it reads
//! and checks the files as root and sends them to the sandboxed engine, when the
//! engine asks (`ntimed ctl reload`) and unasked on SIGHUP.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::mpsc::Receiver;
use std::time::{Duration, SystemTime};

use crate::config::Loaded;
use crate::daemon::reload::Material;
use crate::daemon::reload::codec::Frame;

/// How often the thread looks for a SIGHUP while no request arrives.
const WAKE: Duration = Duration::from_millis(200);
/// The engine asks with bodies of 5 bytes; anything longer is not a request.
const MAX_REQUEST_BODY: usize = 64;
/// A stuck engine must not hold the supervisor's thread for ever.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the link until the engine closes it or sends something that is not a
/// request. `hangups` carries the supervisor's SIGHUPs.
pub fn serve(mut link: UnixStream, loaded: &Loaded, hangups: &Receiver<()>) {
    if let Err(e) = link
        .set_read_timeout(Some(WAKE))
        .and_then(|()| link.set_write_timeout(Some(WRITE_TIMEOUT)))
    {
        tracing::error!("reload link: {e}; reloads are off");
        return;
    }
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 256];
    loop {
        while hangups.try_recv().is_ok() {
            tracing::info!("SIGHUP: reloading");
            if send(&mut link, loaded, 0).is_err() {
                return;
            }
        }
        match link.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => buffer.extend_from_slice(chunk.get(..n).unwrap_or_default()),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::warn!("reload link: {e}; reloads are off");
                return;
            }
        }
        loop {
            match next_request(&mut buffer) {
                Ok(None) => break,
                Ok(Some(id)) => {
                    if send(&mut link, loaded, id).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!("reload link: {e}; reloads are off");
                    return;
                }
            }
        }
    }
}

/// Takes one whole `Fetch` off the front of `buffer`: its id, or `None` until more
/// bytes arrive.
fn next_request(buffer: &mut Vec<u8>) -> Result<Option<u32>, String> {
    let Some(prefix) = buffer.first_chunk::<4>() else {
        return Ok(None);
    };
    let len = Frame::body_len(*prefix).map_err(|e| e.to_string())?;
    if len > MAX_REQUEST_BODY {
        return Err(format!("a request of {len} bytes"));
    }
    let Some(body) = buffer.get(4..4 + len) else {
        return Ok(None);
    };
    let frame = Frame::decode(body).map_err(|e| e.to_string())?;
    buffer.drain(..4 + len);
    match frame {
        Frame::Fetch { id } => Ok(Some(id)),
        _ => Err("the engine sent something other than a request".into()),
    }
}

/// Reads and checks the files, and sends them, or why they were refused.
fn send(link: &mut UnixStream, loaded: &Loaded, id: u32) -> std::io::Result<()> {
    let checked = Material::read(loaded)
        .and_then(|material| material.check(loaded, SystemTime::now()).map(|_| material));
    let encoded = checked.and_then(|material| {
        let encoded = Frame::Material { id, material }.encode();
        // What the engine would refuse (too large, too many certificates) is refused
        // here, rather than end the link and every later reload with it.
        match encoded.get(4..).map(Frame::decode) {
            Some(Ok(_)) => Ok(encoded),
            _ => Err("the files are too large to hand to the engine".to_string()),
        }
    });
    let encoded = encoded.unwrap_or_else(|reason| {
        tracing::warn!("reload refused, the old files stay in use: {reason}");
        Frame::Refused { id, reason }.encode()
    });
    link.write_all(&encoded).inspect_err(|e| {
        tracing::warn!("reload link: {e}; reloads are off");
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_taken_whole_and_anything_else_ends_the_link() {
        let mut buffer = Frame::Fetch { id: 3 }.encode().to_vec();
        buffer.extend_from_slice(&Frame::Fetch { id: 4 }.encode()[..6]);
        assert_eq!(next_request(&mut buffer), Ok(Some(3)));
        assert_eq!(
            next_request(&mut buffer),
            Ok(None),
            "the second is incomplete"
        );
        let refused = Frame::Refused {
            id: 1,
            reason: "x".into(),
        };
        let mut wrong = refused.encode().to_vec();
        assert!(next_request(&mut wrong).is_err());
        let mut huge = 1000u32.to_be_bytes().to_vec();
        assert!(next_request(&mut huge).is_err());
    }
}

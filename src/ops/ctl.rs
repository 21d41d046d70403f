//! `ntimed ctl`: asks the running daemon over its control socket
//! ([`crate::daemon::control`]) and prints the reply: a table made from the daemon's
//! JSON, or (`--json`) that JSON as it came.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::daemon::control::{
    Query, ServerCounters, Sources, render_server, render_sources, render_status,
};
use crate::daemon::reload::Reloaded;

/// Longest reply read (a large `sources` table is a few KiB).
const MAX_REPLY: u64 = 1 << 20;
const TIMEOUT: Duration = Duration::from_secs(5);

/// Sends `query` to the daemon at `socket`: exit status 0 with its answer on standard
/// output, 1 with its error (or the connection's) on standard error.
pub fn main(socket: &Path, query: Query, json: bool) -> ExitCode {
    match answer(socket, query, json) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("ntimed ctl: {message}");
            ExitCode::FAILURE
        }
    }
}

/// What `ntimed ctl QUERY` prints, or why it cannot (the demo shows it this way too).
/// Blocking: at most [`TIMEOUT`] per read and write (a reload, longer).
pub fn answer(socket: &Path, query: Query, json: bool) -> Result<String, String> {
    ask(socket, query).and_then(|reply| format(query, json, reply))
}

fn ask(socket: &Path, query: Query) -> Result<String, String> {
    let fail = |e: std::io::Error| format!("{}: {e}", socket.display());
    let mut stream = UnixStream::connect(socket).map_err(fail)?;
    // A reload may take the daemon up to its own limit (and a second); ctl waits longer.
    let read_timeout = match query {
        Query::Reload => crate::daemon::reload::RELOAD_TIMEOUT + TIMEOUT,
        _ => TIMEOUT,
    };
    stream.set_read_timeout(Some(read_timeout)).map_err(fail)?;
    stream.set_write_timeout(Some(TIMEOUT)).map_err(fail)?;
    let request = format!("{} json\n", query.word());
    stream.write_all(request.as_bytes()).map_err(fail)?;
    let mut reply = Vec::new();
    stream
        .take(MAX_REPLY)
        .read_to_end(&mut reply)
        .map_err(fail)?;
    let reply = String::from_utf8(reply).map_err(|_| "the reply is not UTF-8".to_string())?;
    match reply.strip_prefix("error: ") {
        Some(error) => Err(error.trim_end().to_string()),
        None if reply.is_empty() => Err("the daemon closed the connection".into()),
        None => Ok(reply),
    }
}

fn format(query: Query, json: bool, reply: String) -> Result<String, String> {
    if json {
        return Ok(reply);
    }
    match query {
        Query::Status => table(&reply, render_status),
        Query::Sources => table::<Sources>(&reply, render_sources),
        Query::Server => table::<ServerCounters>(&reply, render_server),
        Query::Reload => table::<Reloaded>(&reply, |done| format!("{done}\n")),
    }
}

fn table<T: DeserializeOwned>(reply: &str, render: fn(&T) -> String) -> Result<String, String> {
    let value: T =
        serde_json::from_str(reply).map_err(|e| format!("cannot read the daemon's reply: {e}"))?;
    Ok(render(&value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::control::Status;

    #[test]
    fn status_json_becomes_a_table() {
        let status = Status {
            synchronized: true,
            stratum: 2,
            reference_id: "127.0.0.1".into(),
            leap: "none".into(),
            poll: 6,
            offset: Some(0.001),
            offset_error: Some(0.0002),
            frequency_ppm: -3.5,
            root_delay: 0.0001,
            root_dispersion: 0.001,
        };
        let json = serde_json::to_string(&status).unwrap_or_default();
        let text = format(Query::Status, false, json).unwrap_or_default();
        assert!(text.contains("synchronized    yes"), "{text}");
        assert!(text.contains("127.0.0.1"), "{text}");
        assert!(format(Query::Status, false, "{".into()).is_err());
    }
}

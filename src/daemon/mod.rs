//! The tokio shell around the sans-IO core. It moves bytes between sockets and
//! the `proto` state machines and reads the system clock for them; it decides nothing
//! about packets itself.
//!
//! * [`client`]: the sources, the sync engine and the clock (`[[source]]`).
//! * [`control`]: the control socket `ntimed ctl` talks to.
//! * [`leap`]: the `[leap] file`, and the leap second it adds to served packets.
//! * [`net`]: address parsing and sockets with random source ports.
//! * [`nts`]: NTS-KE over TLS, server and client, and the cookie master keys.
//! * [`peer`]: routing `[[peer]]` packets between the server sockets and the client task.
//! * [`refclock`]: reading `[[refclock]]` devices (SHM segments, SOCK sockets).
//! * [`serve`]: the UDP server loop.
//! * [`reload`]: SIGHUP and `ctl reload`: new keys, certificates and files, swapped in whole.
//! * [`run`]: `ntimed run` put together: listeners, roles from the config, start and stop.
//! * [`query`]: one-shot client exchanges (`ntimed query`).

pub mod client;
pub mod control;
pub mod leap;
pub mod metrics;
pub mod net;
pub mod nts;
pub mod peer;
pub mod query;
pub mod refclock;
pub mod reload;
pub mod run;
pub mod sent_replies;
pub mod serve;

use crate::wire::NtpTimestamp;

/// The system clock as an NTP timestamp.
pub fn now() -> NtpTimestamp {
    NtpTimestamp::from_system_time(std::time::SystemTime::now())
}

/// log2 of the smallest step seen between system-clock reads, as NTP's precision field
/// wants it (RFC 5905 §7.3): the clock's resolution or the cost of reading it,
/// whichever is larger.
pub fn measure_precision() -> i8 {
    let mut best = f64::MAX;
    let mut last = now();
    for _ in 0..1000 {
        let t = now();
        let step = t.seconds_since(last);
        if step > 0.0 {
            best = best.min(step);
        }
        last = t;
    }
    if best == f64::MAX {
        return -20;
    }
    best.log2().ceil().clamp(-30.0, 0.0) as i8
}

//! Layer 3: sans-IO protocol state machines. Time is passed in, never read from the OS;
//! bytes go in through `handle_*` and come out as return values.
//!
//! * [`server`]: the stateless responder for client requests.
//! * [`client`]: one client exchange with its on-wire checks, used by `ntimed query`
//!   and by every source.
//! * [`source`]: an upstream source's association: polling, reachability, kisses,
//!   NTS re-keying.
//! * [`peer`]: a symmetric association (modes 1/2) with a configured peer.
//! * [`ratelimit`]: per-client request rate limits for the server.

pub mod client;
pub mod peer;
pub mod ratelimit;
pub mod server;
pub mod source;

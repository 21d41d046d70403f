//! Layer 3: sans-IO protocol state machines. Time is passed in, never read from the OS;
//! bytes go in through `handle_*` and come out as return values.
//!
//! * [`server`]: the stateless responder for client requests.
//! * [`client`]: one client exchange with its on-wire checks, used by `ntimed query`
//!   and, later, by every source association.

pub mod client;
pub mod ratelimit;
pub mod server;

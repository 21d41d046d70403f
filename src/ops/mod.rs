//! Commands for operators, beside the daemon: `ntimed check` reports every problem
//! `ntimed run` would stop at (and what is about to become one), `ntimed keygen` writes
//! symmetric key files that ntimed, chrony and NTPsec all read, `ntimed ctl` asks the
//! running daemon over its control socket, `ntimed generate` (hidden) writes the man
//! pages and shell completions packages ship, `ntimed bench` loads an NTP server on
//! loopback from many client addresses.

pub mod bench;
pub mod check;
pub mod ctl;
pub mod generate;
pub mod keygen;

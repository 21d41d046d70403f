//! Commands for operators, beside the daemon: `ntimed check` reports every problem
//! `ntimed run` would stop at (and what is about to become one), `ntimed keygen` writes
//! symmetric key files that ntimed, chrony and NTPsec all read.

pub mod check;
pub mod keygen;

//! Commands for operators, beside the daemon: `ntimed check` reports every problem
//! `ntimed run` would stop at (and what is about to become one).

pub mod check;

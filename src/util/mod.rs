//! Small helpers with no protocol in them, usable from every layer (the
//! privileged clock process included).

mod atomic_file;
mod bounded_read;
mod log_limit;
mod problems;

pub use atomic_file::write_atomic;
pub use bounded_read::{open_regular, read_bounded};
pub use log_limit::LogLimit;
pub use problems::{Problem, Problems, Severity};

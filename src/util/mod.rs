//! Small helpers with no protocol in them, usable from every layer (the
//! privileged clock process included).

mod atomic_file;
mod log_limit;
mod problems;

pub use atomic_file::write_atomic;
pub use log_limit::LogLimit;
pub use problems::{Problem, Problems, Severity};

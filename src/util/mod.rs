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

/// Set to `1` by the clknetsim harness, which replaces the clock and network calls of
/// the process it starts (LD_PRELOAD) and can follow one thread in one process only.
/// For `ntimed run` it switches exactly four things: a current-thread runtime, no
/// privilege separation although `geteuid()` reads 0 there, `[clock] mode =
/// "system"` steered in this one process (the simulated kernel clock), and no owner
/// check on SHM units 0 and 1 (the simulator's segments are not the kernel's).
pub const CLKNETSIM_ENV: &str = "NTIMED_CLKNETSIM";

/// Whether [`CLKNETSIM_ENV`] is set to `1`.
pub fn under_clknetsim() -> bool {
    std::env::var_os(CLKNETSIM_ENV).is_some_and(|v| v == "1")
}

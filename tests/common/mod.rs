//! Shared harness for the integration tests: the `ntimed` daemon and command line, and
//! the interoperability peers (chrony 4.3 and NTPsec 1.2.2), following /work/shared/LAB.md.
//!
//! Safety rules enforced here for every process the tests start:
//! * it runs under `setpriv --pdeathsig KILL --bounding-set -sys_time -- …`, so it can
//!   never set the clock and dies with the test thread that spawned it;
//! * chronyd always runs with `-x` (server) or `-Q` (one-shot client);
//! * ntpd's configuration always contains `disable ntp`;
//! * traffic stays on 127.0.0.1 or inside network namespaces created here, which are
//!   deleted by a Drop guard (also when a test panics);
//! * daemons are stopped by their pid (the Drop guard of [`process::Daemon`]), never by
//!   name.
//!
//! Where to look:
//! * [`process`]: `safe_command` (the rules above), one-shot commands with a deadline,
//!   `Daemon` (a long-running child, killed on Drop), `wait_until`;
//! * [`ntimed_run`]: `NtimedRun`, the one way to start the daemon `ntimed run`;
//! * [`ntimed_cli`]: the one-shot commands `ntimed query` and `ntimed ke`;
//! * [`chrony`]: `chronyd -x` servers and `ChronydQuery`, the one way to run `chronyd -Q`;
//! * [`ntpsec`]: ntpd (`Ntpd`, `NtpsecServer`), ntpdig and ntpq;
//! * [`nts`]: test certificates, `ntimed ke --export`, hand-made NTS packets;
//! * [`keys`]: the symmetric keys every peer shares, in chrony and NTPsec formats;
//! * [`net`]: free loopback ports, "is it listening?", raw UDP probes;
//! * [`netns`]: private network namespaces (NTPsec only uses port 123);
//! * [`files`]: test directories under /tmp/ntimed-tests, secret files;
//! * [`require`]: skip a test (or fail, under `CI=true`) when a peer is missing.

// Each test binary uses its own subset of every module, so unused items are expected.
#[allow(dead_code)]
pub mod chrony;
#[allow(dead_code)]
pub mod files;
#[allow(dead_code)]
pub mod keys;
#[allow(dead_code)]
pub mod net;
#[allow(dead_code)]
pub mod netns;
#[allow(dead_code)]
pub mod ntimed_cli;
#[allow(dead_code)]
pub mod ntimed_run;
#[allow(dead_code)]
pub mod ntpsec;
#[allow(dead_code)]
pub mod nts;
#[allow(dead_code)]
pub mod process;
#[allow(dead_code)]
pub mod require;

//! `ntimed run`, unmodified, as a client node in clknetsim (the simulator of chrony's
//! test suite, ../shared/clknetsim/README.md): one short scenario, one seed, ntimed
//! only, and the simulated clock must end synchronized. This checks that ntimed runs
//! there at all (one thread, one process: `NTIMED_CLKNETSIM=1`, set by the harness), not
//! how well it keeps time; `run.sh` in ../shared/clknetsim measures that.
//!
//! clknetsim is GPL and not part of this repository: it is copied from ../shared (which
//! is read-only in CI) into a temporary directory and built there. The simulated
//! servers are chronyd; every simulated daemon runs without CAP_SYS_TIME and only ever
//! sees the simulated clock.
//!
//! Skipped when ../shared/clknetsim, gcc, g++, make or chronyd is missing, except under
//! `CI=true`, where that fails.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::files::tempdir;
use common::ntimed_cli::ntimed_bin;
use common::process::{run_with_deadline, safe_command};
use common::require::{require_chrony, require_clknetsim};

/// Simulated seconds the scenario runs.
const LIMIT: f64 = 1200.0;
/// The clock must have stayed within 1 ms (and 500 ppm) of the truth for at least this
/// long at the end: the harness's sync time must be below `LIMIT - SETTLED`.
const SETTLED: f64 = 300.0;
/// RMS offset over the second half of the run, generous: ntimed's is tens of µs.
const STEADY_RMS: f64 = 1e-3;
/// Building clknetsim and running the scenario take a few seconds; this leaves room
/// for a busy two-core CI machine.
const DEADLINE: Duration = Duration::from_secs(240);

/// One client (node 2) of one chronyd server, 0.1 s off and 100 ppm fast with no drift
/// file, polling with iburst and allowed one step at start: it has to step, then learn
/// the frequency. `check_sync` prints the line `run.sh` reads its figures from.
fn scenario() -> String {
    format!(
        "#!/usr/bin/env bash\n\
         . ./test.common\n\
         test_start \"ntimed smoke\"\n\
         limit={LIMIT}\n\
         client_conf=\"makestep 1e-2 1\"\n\
         client_server_options=\"iburst\"\n\
         max_sync_time={max_sync}\n\
         run_test || test_fail\n\
         check_sync || true\n\
         test_pass\n",
        max_sync = LIMIT - SETTLED,
    )
}

fn copy_dir(from: &Path, to: &Path) {
    let out = run_with_deadline(
        {
            let mut cp = Command::new("cp");
            cp.arg("-r").arg(from).arg(to);
            cp
        },
        Duration::from_secs(30),
    )
    .expect("cp -r");
    assert!(out.status.success(), "cp -r: {}", out.describe());
    let out = run_with_deadline(
        {
            let mut chmod = Command::new("chmod");
            chmod.args(["-R", "u+w"]).arg(to);
            chmod
        },
        Duration::from_secs(30),
    )
    .expect("chmod -R u+w");
    assert!(out.status.success(), "chmod: {}", out.describe());
}

/// One result row of `run.sh` (scenario daemon runs sync_s max_off rms_off rms_freq
/// poll_s ss_rms) and ntimed's log, for `scenario` (named `name`) run with one seed.
struct Run {
    row: Vec<String>,
    ntimed_log: String,
    context: String,
}

impl Run {
    fn field(&self, i: usize) -> f64 {
        self.row
            .get(i)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("column {i} of {:?}: {}", self.row, self.context))
    }
}

fn run_scenario(name: &str, scenario: &str, deadline: Duration) -> Option<Run> {
    let shared = require_clknetsim()?;
    if !require_chrony() {
        return None;
    }
    let dir = tempdir("clknetsim");
    let copy = dir.path().join("clknetsim");
    copy_dir(&shared, &copy);
    std::fs::write(copy.join("scenarios").join(name), scenario).expect("write scenario");
    let work = dir.path().join("work");

    let mut cmd = safe_command(None, "bash");
    cmd.arg(copy.join("run.sh"))
        .arg(ntimed_bin())
        .args(["-n", "1", "--ntimed-only", name])
        .env("CLKNETSIM_WORK", &work);
    let out = run_with_deadline(cmd, deadline).unwrap_or_else(|e| panic!("run.sh: {e}"));
    let ntimed_log = std::fs::read_to_string(work.join("test/simulation/tmp/log.2"))
        .unwrap_or_else(|e| format!("(no ntimed log: {e})"));
    let context = format!("{}\n--- ntimed (node 2) ---\n{ntimed_log}", out.describe());
    assert!(out.status.success(), "run.sh failed: {context}");
    let row: Vec<String> = out
        .stdout
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no result row: {context}"))
        .split_whitespace()
        .map(String::from)
        .collect();
    assert_eq!(row.get(1).map(String::as_str), Some("ntimed"), "{context}");
    Some(Run {
        row,
        ntimed_log,
        context,
    })
}

#[test]
fn ntimed_synchronizes_under_clknetsim() {
    let Some(run) = run_scenario("ntimed-smoke", &scenario(), DEADLINE) else {
        return;
    };
    let context = &run.context;
    assert_eq!(run.field(2), 1.0, "one run: {context}");
    let sync = run.field(3);
    assert!(
        sync < LIMIT - SETTLED,
        "ntimed was not within 1 ms for the last {SETTLED} s (sync time {sync} s of {LIMIT}): {context}"
    );
    let steady = run.field(8);
    assert!(
        steady < STEADY_RMS,
        "steady-state RMS offset {steady} s: {context}"
    );
    assert!(
        run.ntimed_log.contains("NTIMED_CLKNETSIM set"),
        "the switch was not noticed: {context}"
    );
}

/// Runs one of `clknetsim/scenarios` and checks the client's clock was right (within
/// 1 ms, the harness's limit) from `right_from` simulated seconds to the end.
fn leap_scenario(name: &str, right_from: f64) {
    let script = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("clknetsim/scenarios")
            .join(name),
    )
    .expect("the leap scenario");
    let Some(run) = run_scenario(name, &script, DEADLINE) else {
        return;
    };
    let context = &run.context;
    let sync = run.field(3);
    assert!(
        sync <= right_from,
        "the clock was off after the leap (right only from {sync} s, not {right_from}): {context}"
    );
    let max_offset = run.field(4);
    assert!(max_offset < 1e-3, "max offset {max_offset} s: {context}");
}

/// Simulated seconds from the start to the leap second at the end of 2008.
const LEAP: f64 = 2.0 * 86_400.0;

/// The leap second at the end of 2008 (`clknetsim/scenarios/911-leap-second`, after
/// chrony's test 113): the server announces it and the kernel inserts it; ntimed's
/// clock must be right from the leap to the end, four simulated days in.
#[test]
fn a_leap_second_is_inserted_under_clknetsim() {
    leap_scenario("911-leap-second", LEAP);
}

/// The same leap second with `[leap] mode = "slew"` (`913-leap-slew`): the kernel is
/// never told, and the clock is right again within 15 s of the leap.
#[test]
fn a_leap_second_is_slewed_away_under_clknetsim() {
    leap_scenario("913-leap-slew", LEAP + 15.0);
}

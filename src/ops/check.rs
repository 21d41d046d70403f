//! `ntimed check`: everything `ntimed run` checks before it binds, every problem at
//! once, through the same code (`Config::load_all`, `run::prepare_all`, the sandbox's
//! checks), changing nothing on disk; plus what will soon be a problem (a certificate
//! about to expire) and what `run` would quietly ignore (a drift file it cannot read).

use std::path::Path;
use std::time::SystemTime;

use crate::config::{Config, Loaded};
use crate::daemon::run::{self, Purpose};
use crate::util::{Problems, Severity};

/// Checks the config at `path` as `ntimed run` started now by this user (`as_root`:
/// with privileges separated) would, and returns what it found.
pub fn check(path: &Path, as_root: bool, now: SystemTime) -> Problems {
    let mut problems = Problems::default();
    let mut config_errors = Vec::new();
    let loaded = Config::load_all(path, &mut config_errors);
    for e in config_errors {
        problems.error(e.to_string());
    }
    let Some(loaded) = loaded else {
        return problems;
    };
    if as_root {
        crate::privsep::check_sandbox(&loaded, &mut problems);
    } else if let Some(refusal) = run::unprivileged_refusal(path, &loaded) {
        problems.error(refusal);
    }
    check_drift_file(&loaded, &mut problems);
    problems.take(crate::daemon::control::settings(&loaded, as_root));
    if let Some(metrics) = &loaded.config.metrics {
        let listen = metrics.listen.get_ref();
        if !listen.ip().is_loopback() {
            problems.warning(format!(
                "[metrics] listen {listen} is not a loopback address: anyone who reaches it \
                 reads the metrics (there is no authentication)"
            ));
        }
    }
    run::prepare_all(loaded, Purpose::Check, now, &mut problems);
    problems
}

/// What `ntimed run` does first: [`check`], so that every problem is reported at once
/// and before anything is bound or split, rather than one per attempt (the last only
/// from the engine, after the split). Warnings are left to `run`, which logs them.
pub fn before_run(path: &Path, as_root: bool) -> Result<(), String> {
    let problems = check(path, as_root, SystemTime::now());
    let errors: Vec<String> = problems
        .iter()
        .filter(|p| p.severity == Severity::Error)
        .map(|p| p.text.clone())
        .collect();
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.concat()),
        n => Err(format!(
            "{n} problems stop the start:\n  {}",
            errors.join("\n  ")
        )),
    }
}

/// `FILE: ok`, `FILE: ok, 1 warning`, `FILE: 2 errors, 1 warning`.
pub fn summary(path: &Path, problems: &Problems) -> String {
    let count = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    let errors = problems.count(Severity::Error);
    let warnings = problems.count(Severity::Warning);
    let mut line = format!("{}: ", path.display());
    line += &match errors {
        0 => "ok".to_string(),
        n => count(n, "error"),
    };
    if warnings > 0 {
        line += &format!(", {}", count(warnings, "warning"));
    }
    line
}

/// The drift file's directory must exist (the file is created there), and the file,
/// if there, must be a regular file, never a symbolic link (the clock process opens
/// it with `O_NOFOLLOW`). A frequency `run` would ignore is a warning.
fn check_drift_file(loaded: &Loaded, problems: &mut Problems) {
    let Some(clock) = loaded.config.clock.as_ref().map(|c| c.get_ref()) else {
        return;
    };
    let Some(path) = clock.drift_file.as_ref().map(|p| loaded.path(p)) else {
        return;
    };
    let shown = path.display();
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
    if parent.is_some_and(|dir| !dir.is_dir()) {
        problems.error(format!("{shown}: drift file: its directory does not exist"));
        return;
    }
    let meta = match std::fs::symlink_metadata(&path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => return problems.error(format!("{shown}: drift file: {e}")),
    };
    if !meta.is_file() {
        let what = if meta.is_symlink() {
            "a symbolic link (refused)"
        } else {
            "not a regular file"
        };
        return problems.error(format!("{shown}: drift file: {what}"));
    }
    let limit = clock.max_frequency.unwrap_or(500.0);
    match std::fs::read_to_string(&path) {
        Ok(text) if text.trim().is_empty() => {}
        Ok(text) => match text.trim().parse::<f64>() {
            Ok(ppm) if ppm.is_finite() && ppm.abs() <= limit => {}
            _ => problems.warning(format!(
                "{shown}: drift file: not a frequency in ppm (at most {limit}); ntimed will \
                 ignore it and start from 0"
            )),
        },
        Err(e) => problems.error(format!("{shown}: drift file: {e}")),
    }
}

/// `ntimed check`: prints each problem and a summary; exit status 0 when there are no
/// errors (warnings allowed), 1 otherwise.
pub fn main(path: &Path) -> std::process::ExitCode {
    let as_root = crate::sys::effective_uid() == 0;
    let problems = check(path, as_root, SystemTime::now());
    for problem in problems.iter() {
        println!("{problem}");
    }
    println!("{}", summary(path, &problems));
    if problems.count(Severity::Error) == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

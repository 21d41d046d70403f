//! Orphan mode (`[local] orphan = true`): the servers of an isolated site, each polling
//! the others, agree on one of them (the lowest id) instead of each serving its own
//! drifting clock; a client of both sees one time. When that server goes, the next
//! takes over. Each server has its own address in 127/8 (its id), a simulated clock
//! set apart from the others, and CAP_SYS_TIME out of its bounding set.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::files::tempdir;
use common::net::free_port;
use common::ntimed_cli::{QueryArgs, ntimed_query};
use common::ntimed_run::NtimedRun;
use common::process::wait_until;
use serde_json::Value;

const LOW: [u8; 4] = [127, 0, 0, 1];
const HIGH: [u8; 4] = [127, 0, 0, 2];
/// How close the two servers' time must come (their clocks start 0.5 s apart).
const AGREE: f64 = 5e-3;

fn site_server(listen: SocketAddr, other: SocketAddr, offset: f64) -> NtimedRun {
    let toml = format!(
        "[local]\nstratum = 10\norphan = true\nwait = 2\n\n\
         [clock]\nmode = \"simulated\"\nsimulated-offset = {offset}\n\n\
         [[server]]\nlisten = \"{listen}\"\n\n\
         [[source]]\naddress = \"{other}\"\ninsecure = true\niburst = true\nmin-poll = 0\nmax-poll = 1\n"
    );
    NtimedRun::config(toml)
        .in_dir(tempdir("orphan"))
        .wait_for_ntp(listen.port())
        .start()
}

/// Whether a reference id is the local clock's, "LOCL" (a query prints reference ids
/// below stratum 2 as text and the others as addresses).
fn is_local(refid: &str) -> bool {
    refid == "LOCL" || refid == "76.79.67.76"
}

/// What `server` serves: (stratum, refid, offset from this machine's clock).
fn served(server: SocketAddr) -> Option<(u64, String, f64)> {
    let args = QueryArgs::new(server.to_string()).timeout(1.0);
    let reply: Value = ntimed_query(&args).ok()?.into_iter().next()?;
    Some((
        reply["stratum"].as_u64()?,
        reply["refid"].as_str()?.to_string(),
        reply["offset"].as_f64()?,
    ))
}

#[test]
fn a_site_follows_its_lowest_server_and_the_next_takes_over() {
    let low = SocketAddr::from((LOW, free_port()));
    let high = SocketAddr::from((HIGH, free_port()));
    let mut low_run = site_server(low, high, 0.3);
    let high_run = site_server(high, low, -0.2);

    // The lower id serves its own clock at the orphan stratum; the higher follows it.
    let mut last = (None, None);
    let agreed = wait_until(Duration::from_secs(60), || {
        last = (served(low), served(high));
        match &last {
            (Some((10, lref, lo)), Some((11, href, ho))) => {
                is_local(lref) && href == "127.0.0.1" && (lo - ho).abs() < AGREE
            }
            _ => false,
        }
    });
    assert!(
        agreed,
        "the site never agreed on 127.0.0.1; served {last:?}\nlow:\n{}\nhigh:\n{}",
        low_run.log(),
        high_run.log()
    );
    // The lower one never follows the higher (not even once it serves at stratum 11).
    assert!(
        !low_run.log().contains("Step"),
        "the lower server moved its clock:\n{}",
        low_run.log()
    );

    // Without it, the next server's sources give no time: it serves its own clock.
    low_run.stop();
    let mut now = None;
    let took_over = wait_until(Duration::from_secs(60), || {
        now = served(high);
        now.as_ref()
            .is_some_and(|(stratum, refid, _)| *stratum == 10 && is_local(refid))
    });
    assert!(
        took_over,
        "127.0.0.2 never took over; serves {now:?}\n{}",
        high_run.log()
    );
}

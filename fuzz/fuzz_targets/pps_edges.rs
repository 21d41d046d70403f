//! Any sequence of PPS fetches, timeouts and lock estimates into the combiner: no
//! panic; every sample is finite, sits at its edge's time and agrees with the lock to
//! 0.4 s; every edge is counted once.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ntimed::refclock::phc::realtime_to_ntp;
use ntimed::refclock::pps::{LOCK_TOLERANCE, LockEstimate, PpsCombiner, PpsSettings};
use ntimed::sys::{DeviceTime, PpsEdge, PpsFetch};

/// Bytes per step: kind, sequence (4), time step (8), lock offset (8), lock age (2).
const STEP: usize = 23;

fn take<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut out = [0; N];
    if let Some(part) = bytes.get(at..at + N) {
        out.copy_from_slice(part);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&setup, steps)) = data.split_first() else {
        return;
    };
    let settings = PpsSettings {
        edge: if setup & 1 == 0 {
            PpsEdge::Assert
        } else {
            PpsEdge::Clear
        },
        offset: f64::from(setup >> 1) * 1e-3 - 0.05,
        ..PpsSettings::default()
    };
    let Ok(mut combiner) = PpsCombiner::new(settings) else {
        return;
    };
    let mut time = DeviceTime {
        seconds: 1_764_316_800,
        nanos: 0,
    };
    let mut edges = 0u64;
    for step in steps.chunks(STEP) {
        let kind = step[0];
        let sequence = u32::from_le_bytes(take(step, 1));
        let raw_time = i64::from_le_bytes(take(step, 5));
        let raw_lock = f64::from_le_bytes(take(step, 13));
        let lock_age = f64::from(i16::from_le_bytes(take(step, 21))) * 0.01;
        if kind & 3 == 0 {
            combiner.handle_timeout();
            continue;
        }
        // Mostly a clock moving forward by up to ~4.3 s, sometimes any time at all.
        time = if kind & 4 == 0 {
            let nanos = time.nanos + (raw_time & 0xffff_ffff);
            DeviceTime {
                seconds: time.seconds + nanos / 1_000_000_000,
                nanos: nanos % 1_000_000_000,
            }
        } else {
            DeviceTime {
                seconds: raw_time >> 20,
                nanos: (raw_time & 0xf_ffff) * 1000 - 8_000_000,
            }
        };
        let fetched = PpsFetch {
            assert_sequence: sequence,
            clear_sequence: sequence ^ u32::from(kind),
            assert: time,
            clear: time,
        };
        // A small offset most of the time, so pulses get used; sometimes any bits.
        let offset = if kind & 8 == 0 {
            (raw_lock.to_bits() % 2_000_000) as f64 * 1e-6 - 1.0
        } else {
            raw_lock
        };
        let lock = (kind & 16 == 0)
            .then(|| realtime_to_ntp(time))
            .flatten()
            .map(|edge| LockEstimate {
                offset,
                when: edge.add_seconds(-lock_age),
            });
        edges += 1;
        if let Ok(sample) = combiner.handle_edge(&fetched, lock) {
            assert!(sample.offset.is_finite() && sample.dispersion.is_finite());
            assert_eq!(Some(sample.local), realtime_to_ntp(time));
            if let Some(lock) = lock {
                let disagreement = sample.offset - lock.offset;
                if disagreement.abs() < 1e6 {
                    assert!(disagreement.abs() <= LOCK_TOLERANCE + 1e-6);
                }
            }
        }
    }
    let c = combiner.counters();
    let counted = c.used
        + c.no_pulse
        + c.bad_time
        + c.duplicate
        + c.unconfirmed
        + c.spurious
        + c.no_lock
        + c.lock_too_old
        + c.far_from_lock;
    assert_eq!(counted, edges);
});

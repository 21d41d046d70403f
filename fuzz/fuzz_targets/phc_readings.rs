//! Any PHC readings (triples or a cross-timestamp): no panic; a sample is finite and
//! comes from the valid triple with the shortest delay, never a longer one than allowed.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ntimed::refclock::phc::{PhcSettings, sample_from_readings};
use ntimed::sys::{DeviceTime, PhcReadings};

fn time(bytes: &[u8]) -> DeviceTime {
    let mut seconds = [0; 8];
    let mut nanos = [0; 8];
    seconds.copy_from_slice(bytes.get(..8).unwrap_or(&[0; 8]));
    nanos.copy_from_slice(bytes.get(8..16).unwrap_or(&[0; 8]));
    let nanos = i64::from_le_bytes(nanos);
    DeviceTime {
        seconds: i64::from_le_bytes(seconds),
        // Mostly valid nanoseconds, sometimes anything.
        nanos: if nanos & 1 == 0 {
            (nanos >> 1) % 1_000_000_000
        } else {
            nanos
        },
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&setup, rest)) = data.split_first() else {
        return;
    };
    let settings = PhcSettings {
        utc_offset: i64::from(setup as i8),
        max_delay: f64::from(setup) * 1e-5,
        precision: 1e-9,
    };
    let times: Vec<DeviceTime> = rest.chunks(16).map(time).collect();
    let readings = if setup & 1 == 1 && times.len() == 2 {
        PhcReadings::CrossTimestamp {
            phc: times[0],
            system: times[1],
        }
    } else {
        PhcReadings::Triples(times.chunks_exact(3).map(|t| [t[0], t[1], t[2]]).collect())
    };
    let Ok(sample) = sample_from_readings(&readings, &settings) else {
        return;
    };
    assert!(sample.offset.is_finite() && sample.dispersion.is_finite());
    assert!(sample.dispersion >= settings.precision);
    if let PhcReadings::Triples(triples) = &readings {
        let ns = |t: DeviceTime| i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos);
        let valid =
            |t: &DeviceTime| (0..1_000_000_000).contains(&t.nanos) && *t != DeviceTime::default();
        let shortest = triples
            .iter()
            .filter(|t| t.iter().all(valid) && ns(t[2]) >= ns(t[0]))
            .map(|t| ns(t[2]) - ns(t[0]))
            .min()
            .unwrap();
        let delay = (sample.dispersion - settings.precision) * 2.0;
        assert!(delay <= settings.max_delay * (1.0 + 1e-12));
        assert!((delay - shortest as f64 * 1e-9).abs() <= 1e-9 + delay * 1e-9);
    }
});

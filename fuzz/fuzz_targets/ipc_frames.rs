//! Any bytes as a run of engine → clock frames, through the decoder and the policy (as
//! the clock process does): no panic; a decoded command re-encodes to the same bytes
//! and has only finite numbers; whatever the sequence, the policy never lets through a
//! step beyond the panic threshold, a second step at start-up, a step after a slew, a
//! slew over 0.512 s or faster than the rate bound, or a frequency over the limit, and steps never add up to more
//! than the panic threshold.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ntimed::clock::{ClockCommand, check_finite};
use ntimed::privsep::ipc::{self, FRAME_LEN};
use ntimed::privsep::policy::{MAX_SLEW, MAX_SLEW_RATE, Policy, PolicyConfig};
use ntimed::sync::StepPolicy;
use ntimed::wire::Leap;

const PANIC: f64 = 1000.0;
const MAX_PPM: f64 = 500.0;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the step policy and whether frames are whole or cut short.
    let Some((&mode, frames)) = data.split_first() else {
        return;
    };
    let steps = [StepPolicy::Startup, StepPolicy::Always, StepPolicy::Never][usize::from(mode % 3)];
    let config = PolicyConfig {
        clock_configured: true,
        steps,
        panic_threshold: PANIC,
        max_frequency: MAX_PPM,
    };
    let mut policy = Policy::new(config, 0.0);
    let (mut stepped, mut step_count, mut slewed) = (0.0f64, 0u32, false);
    let chunk = if mode & 0x80 != 0 {
        FRAME_LEN - 1
    } else {
        FRAME_LEN
    };
    for (i, frame) in frames.chunks(chunk).enumerate() {
        let Ok((id, command)) = ipc::decode_command(frame) else {
            // The clock process exits on the first malformed frame.
            return;
        };
        assert_eq!(frame.len(), FRAME_LEN);
        assert_eq!(ipc::encode_command(id, &command).as_slice(), frame);
        assert!(check_finite(&command).is_ok());
        let now = i as f64 * 0.01;
        if policy.check(&command, now, 1_800_000_000).is_err() {
            continue;
        }
        policy.applied(&command);
        match command {
            ClockCommand::Step { offset } => {
                assert!(steps != StepPolicy::Never);
                assert!(offset.abs() <= PANIC);
                if steps == StepPolicy::Startup {
                    assert!(step_count == 0 && !slewed, "a second or late start-up step");
                }
                step_count += 1;
                stepped += offset.abs();
                assert!(stepped <= PANIC, "steps add up to {stepped}");
            }
            ClockCommand::Slew { offset, duration } => {
                assert!(offset.abs() <= MAX_SLEW);
                assert!(offset.abs() <= MAX_SLEW_RATE * duration * (1.0 + 1e-9));
                slewed = true;
            }
            ClockCommand::SetFrequency { ppm } => assert!(ppm.abs() <= MAX_PPM),
            ClockCommand::SetLeap(Leap::AddSecond | Leap::DeleteSecond) => {
                unreachable!("no leap second mid-January")
            }
            _ => {}
        }
    }
});

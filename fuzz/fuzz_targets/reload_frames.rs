//! Any bytes as a reload-link frame body (what the engine reads from the supervisor,
//! and the supervisor from the engine): no panic, bounded, and a frame that decodes
//! re-encodes to the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ntimed::daemon::reload::codec::{Frame, MAX_FRAME};

fuzz_target!(|data: &[u8]| {
    if let Some(prefix) = data.first_chunk::<4>() {
        if let Ok(len) = Frame::body_len(*prefix) {
            assert!(len <= MAX_FRAME);
        }
    }
    if let Ok(frame) = Frame::decode(data) {
        let encoded = frame.encode();
        assert_eq!(encoded.get(4..), Some(data));
    }
});

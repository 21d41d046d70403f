//! Any bytes as a control-socket request line: a request or an error, never a panic; an
//! accepted request is short and names its query as its first word.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ntimed::daemon::control::parse_request;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = parse_request(data) {
        assert!(data.len() <= 256);
        let text = std::str::from_utf8(data).expect("accepted requests are UTF-8");
        assert_eq!(
            text.split_ascii_whitespace().next(),
            Some(request.query.word())
        );
    }
});

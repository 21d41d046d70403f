//! Any text as a config file: a checked config or an error naming the file (and a line
//! within the text, when it names one), never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ntimed::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = Config::parse("fuzz.toml", text) {
        assert_eq!(e.file, "fuzz.toml");
        let lines = text.split('\n').count();
        assert!(e.line.is_none_or(|l| (1..=lines).contains(&l)), "{e}");
    }
});

#![no_main]
//! The token parser takes whatever a caller sends: it must never panic, and
//! anything it accepts must carry a well-formed key id and re-serialize to
//! the same text.

use keyrack::domain::KeyId;
use keyrack::domain::token::{TokenPrefix, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let prefix = TokenPrefix::default();
    if let Ok(parsed) = parse(&prefix, text) {
        assert!(KeyId::parse(parsed.key_id.as_str()).is_ok());
        assert!(text.starts_with("kr_"));
        assert!(text.contains(parsed.key_id.as_str()));
        assert!(text.contains(parsed.secret()));
    }
});

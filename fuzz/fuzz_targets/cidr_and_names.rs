#![no_main]
//! CIDR, name and description parsers on arbitrary input: no panic, and what
//! they accept obeys their rules.

use keyrack::domain::{cidr, names};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(net) = cidr::parse_cidr(text) {
        // Accepted networks are canonical: re-parsing their text gives them back.
        assert_eq!(cidr::parse_cidr(&net.to_string()).ok(), Some(net));
    }
    if let Ok(name) = names::parse_name(text) {
        assert!(!name.is_empty() && name.len() <= 30);
        assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
    }
    if let Ok(person) = names::parse_person_name(text) {
        assert!(person.chars().count() <= 128 && !person.chars().any(char::is_control));
    }
    if let Ok(description) = names::parse_description(text) {
        assert!(description.chars().count() <= 256);
    }
    let entries: Vec<String> = text.split(',').map(str::to_owned).collect();
    let _ = cidr::parse_cidrs("allowed_cidrs", &entries);
});

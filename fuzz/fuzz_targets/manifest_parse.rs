//! Fuzzes `verge_api::parse_documents` with the same input as JSON and as YAML: it must
//! never panic, whatever the input.

#![no_main]

use libfuzzer_sys::fuzz_target;
use verge_api::{Format, parse_documents};

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let _ = parse_documents(input, Format::Json);
    let _ = parse_documents(input, Format::Yaml);
});

//! libFuzzer entry of the `path` target; the checks live in `ferry_fuzz::path`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry_fuzz::path::check(data));

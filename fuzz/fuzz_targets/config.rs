//! libFuzzer entry of the `config` target; the checks live in `ferry_fuzz::config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry_fuzz::config::check(data));

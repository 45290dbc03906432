//! libFuzzer entry of the `zmtp` target; the checks live in `ferry_fuzz::zmtp`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry_fuzz::zmtp::check(data));

//! libFuzzer entry of the `due_backup` target; the checks live in `ferry_fuzz::due_backup`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry_fuzz::due_backup::check(data));

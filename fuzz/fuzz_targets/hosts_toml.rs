#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shoal_peer::fuzzing::hosts::hosts_toml(data));

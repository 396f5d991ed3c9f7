//! A node-side mux driven by arbitrary client frames and application actions.
//! The properties are checked by `tunnox_core::fuzzing::mux_frames` (see docs/fuzzing.md).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tunnox_core::fuzzing::mux_frames(data);
});

//! Arbitrary bytes into the client<->node frame decoder, in chunks chosen by the first byte.
//! The properties are checked by `tunnox_core::fuzzing::decode_frames` (see docs/fuzzing.md).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tunnox_core::fuzzing::decode_frames(data);
});

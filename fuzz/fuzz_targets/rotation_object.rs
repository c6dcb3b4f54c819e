#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    entra_rotator::fuzzing::rotation_object(data);
});

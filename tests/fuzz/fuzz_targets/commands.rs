//! Command encoders and the devices' command answers, every protocol (`data[0]` picks it).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    fleetgate::protocols::fuzz::run_command(fleetgate_fuzz::seeds(), data);
});

//! navtelecom: arbitrary bytes through the framer, the decoder and `SessionCodec`.
#![no_main]

use fleetgate::protocols::Protocol;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    fleetgate::protocols::fuzz::run(Protocol::Navtelecom, fleetgate_fuzz::seeds(), data);
});

//! The sealed DR backup reader on arbitrary bytes, with a fixed backup key.
#![no_main]

use std::io::Read;

use coffer::backup::sealed;
use coffer::crypto::SecretKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = SecretKey::from_bytes(&[7u8; 32]).expect("32 bytes");
    if let Ok((_, _, mut reader)) = sealed::open(data, &key) {
        let mut sink = Vec::new();
        let _ = reader.by_ref().take(32 << 20).read_to_end(&mut sink);
    }
});

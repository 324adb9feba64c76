//! The archive reader on arbitrary *tar* bytes: the input is compressed first, so
//! the fuzzer mutates tar headers, manifests and NDJSON directly instead of
//! spending its time on zstd frames.
#![no_main]

use std::sync::OnceLock;

use coffer::backup::format::Limits;
use coffer::backup::import::{read_archive, Discard};
use coffer::schema::Registry;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    static SCHEMAS: OnceLock<Registry> = OnceLock::new();
    let schemas = SCHEMAS.get_or_init(|| Registry::embedded().expect("embedded schemas"));
    let Ok(compressed) = zstd::encode_all(data, 1) else {
        return;
    };
    let limits = Limits {
        max_total_bytes: 16 << 20,
        max_record_bytes: 1 << 20,
        max_metadata_bytes: 1 << 20,
    };
    let _ = read_archive(&compressed[..], schemas, limits, &mut Discard);
});

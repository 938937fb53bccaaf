//! The `.npz` reader on arbitrary bytes: zip structure, `.npy` headers, shapes and data.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(arrays) = distq_io::npz::read_npz_from(std::io::Cursor::new(data)) {
        for (name, t) in &arrays {
            // What was read is what the shape says, and bounded by the input.
            assert_eq!(t.byte_len(), t.dtype().bytes(t.len()), "{name}");
            assert!(t.byte_len() <= data.len().max(1) * 1100, "{name}: {} bytes from {}", t.byte_len(), data.len());
        }
    }
});

//! 4-bit values packed two per byte, low nibble first: the layout of ONNX INT4/UINT4
//! tensors and of com.microsoft MatMulNBits weights and zero points. Constants stay packed
//! ([`crate::DataType::U4`] / [`crate::DataType::I4`]); ops that compute on bytes get them
//! widened (int8/uint8 values in −8..=7 / 0..=15).
//!
//! ```
//! use distq_runtime::nibbles::{pack_u4, unpack_i4, unpack_u4};
//! assert_eq!(unpack_u4(&[0x21, 0x0f], 3).unwrap(), [1, 2, 15]);
//! assert_eq!(pack_u4(&[1, 2, 15]), [0x21, 0x0f]);
//! assert_eq!(unpack_i4(&[0xf8], 2).unwrap(), [-8, -1]);
//! ```

use crate::error::{Result, ensure};

/// The `n` unsigned 4-bit values in `packed` (exactly `⌈n/2⌉` bytes).
pub fn unpack_u4(packed: &[u8], n: usize) -> Result<Vec<u8>> {
    ensure!(packed.len() == n.div_ceil(2), "{n} 4-bit values need {} bytes, the data holds {}", n.div_ceil(2), packed.len());
    let mut out = Vec::with_capacity(n + 1);
    for &b in packed {
        out.extend([b & 0x0f, b >> 4]);
    }
    out.truncate(n);
    Ok(out)
}

/// The `n` signed (two's complement) 4-bit values in `packed` (exactly `⌈n/2⌉` bytes).
pub fn unpack_i4(packed: &[u8], n: usize) -> Result<Vec<i8>> {
    Ok(unpack_u4(packed, n)?.into_iter().map(sign_extend).collect())
}

/// A 4-bit two's complement value (the low nibble) as i8: shifted to the top and back,
/// arithmetically.
fn sign_extend(nibble: u8) -> i8 {
    ((nibble << 4) as i8) >> 4
}

/// Value `i` of the 4-bit values in `packed`, sign-extended when `signed`.
///
/// # Panics
/// When `i / 2` is past the end of `packed`.
#[inline]
pub fn get(packed: &[u8], i: usize, signed: bool) -> i32 {
    let nibble = (packed[i / 2] >> (4 * (i % 2))) & 0x0f;
    if signed { sign_extend(nibble) as i32 } else { nibble as i32 }
}

/// Packs 4-bit values (the low nibble of each byte) two per byte, low nibble first; an odd
/// count leaves the last high nibble 0.
pub fn pack_u4(values: &[u8]) -> Vec<u8> {
    values.chunks(2).map(|p| (p[0] & 0x0f) | (p.get(1).map_or(0, |v| v & 0x0f) << 4)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_nibble_value_round_trips() {
        let packed: Vec<u8> = (0..=255).collect();
        let u = unpack_u4(&packed, 512).unwrap();
        let i = unpack_i4(&packed, 512).unwrap();
        for (j, &b) in packed.iter().enumerate() {
            assert_eq!((u[2 * j], u[2 * j + 1]), (b & 15, b >> 4));
            assert_eq!(i[2 * j] as i32 & 15, (b & 15) as i32);
            assert!((-8..=7).contains(&i[2 * j]) && (-8..=7).contains(&i[2 * j + 1]));
        }
        assert!(unpack_u4(&[1, 2], 5).is_err(), "odd count needs 3 bytes");
        assert!(unpack_u4(&[1, 2], 2).is_err(), "too many bytes");
        assert_eq!(unpack_i4(&[0x7f], 1).unwrap(), [-1]);
        assert_eq!(pack_u4(&u), packed);
        for n in 0..512 {
            assert_eq!((get(&packed, n, false), get(&packed, n, true)), (u[n] as i32, i[n] as i32));
        }
        assert_eq!(pack_u4(&u[..3]), [packed[0], packed[1] & 0x0f]);
    }
}

//! What the fuzz targets share: splitting one fuzz input into parts, and input shapes for a
//! model's declared inputs.

use distq_runtime::graph::Dim;
use distq_runtime::{DataType, Model};

/// Largest size chosen for a symbolic dim, so runs stay small and fast.
pub const MAX_SYMBOLIC: usize = 8;
/// Inputs with more elements than this are not run (a declared 1000×1000 image would make
/// each execution slow without reaching new code).
pub const MAX_INPUT_ELEMENTS: usize = 1 << 16;

/// Reads the fuzz input front to back; running out yields zeros.
pub struct Bytes<'a>(pub &'a [u8]);

impl<'a> Bytes<'a> {
    /// The next byte.
    pub fn byte(&mut self) -> u8 {
        let (first, rest) = self.0.split_first().map_or((0, &[][..]), |(b, r)| (*b, r));
        self.0 = rest;
        first
    }

    /// The next little-endian u16.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    /// The next `n` bytes (fewer when the input ends).
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }
}

/// A shape for each declared input: fixed dims as declared, symbolic and unknown ones from
/// `sizes` (1..=MAX_SYMBOLIC). `None` when an input has no dtype, no rank or too many elements.
pub fn declared_shapes(model: &Model, sizes: &mut Bytes) -> Option<Vec<(String, DataType, Vec<usize>)>> {
    model
        .inputs()
        .iter()
        .map(|input| {
            let dims: Vec<usize> = input
                .dims
                .as_ref()?
                .iter()
                .map(|d| match d {
                    Dim::Fixed(n) => *n,
                    Dim::Symbolic(_) | Dim::Unknown => 1 + sizes.byte() as usize % MAX_SYMBOLIC,
                })
                .collect();
            let elements = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d))?;
            let dtype = input.dtype?;
            (elements <= MAX_INPUT_ELEMENTS).then(|| (input.name.clone(), dtype, dims))
        })
        .collect()
}

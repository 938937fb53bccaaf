//! Kernels. A kernel family is one trait; each ISA implements it in its own module, proves
//! its CPU features at construction (`new() -> Option<Self>`), and is tested against a scalar
//! oracle by the family's shared table (`tests.rs`). The f32 GEMM family is [`sgemm`].
//!
//! Family [`GemmU8I8`]: the GEMM micro-kernel of u8 activations · i8 weights, accumulated
//! exactly in i32 (wrapping past it, as every ISA does) — the inner loop of `MatMulInteger`
//! and of quantized MatMul/Conv. A kernel computes one tile: up to `mr` activation rows
//! against one panel of `nr` weight columns, packed once at load in groups of 4 consecutive
//! `k` values per column (`[k/4][nr][4]`), the operand shape of `vpdpbusd` and `sdot`.
//! [`gemm::gemm_u8i8`] drives the tiles and applies zero points. Exactness matters: AVX2's
//! `vpmaddubsw` saturates at i16, so the AVX2 kernel multiplies i16 operands instead
//! (`vpmaddwd`, as many multiplies per cycle on the CPUs that have no VNNI), its activation
//! rows widened once per block of rows by the drivers ([`GemmU8I8::activation_bytes`]).
//!
//! ```
//! use distq_runtime::kernels::{best_gemm_u8i8, gemm::{gemm_u8i8, PackedI8}};
//! let (m, k, n) = (2, 5, 3);
//! let a = [255u8; 10]; // m × k
//! let b = [-128i8; 15]; // k × n, as MatMul stores it
//! let kernel = best_gemm_u8i8();
//! let packed = PackedI8::new(kernel, &b, k, vec![0; n]);
//! let mut c = [0i32; 6];
//! gemm_u8i8(kernel, &a, 0, &packed, &mut c);
//! assert_eq!(c, [5 * 255 * -128; 6]);
//! ```

#[cfg(target_arch = "aarch64")]
pub mod aarch64;
pub mod blocked;
pub mod gemm;
pub mod reference;
pub mod sgemm;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
pub mod x86;

use std::sync::OnceLock;

/// The activation rows of one tile: `count` rows of (at least) `4·k4` values, each
/// [`GemmU8I8::activation_bytes`] bytes, `stride` bytes apart.
#[derive(Clone, Copy, Debug)]
pub struct TileRows<'a> {
    /// The bytes, from the first row's start.
    pub data: &'a [u8],
    /// Distance between rows, in bytes.
    pub stride: usize,
    /// Number of rows (1 ..= the kernel's `mr`).
    pub count: usize,
}

/// One GEMM tile of u8 activations · packed i8 weights.
pub trait GemmU8I8: Send + Sync {
    /// Kernel name, `isa-family` (e.g. `x86-avx512vnni-gemm-u8i8`).
    fn name(&self) -> &'static str;

    /// Weight columns per packed panel (a multiple of 4).
    fn nr(&self) -> usize;

    /// Most activation rows per tile.
    fn mr(&self) -> usize;

    /// What the kernel subtracts from every activation before multiplying: 128 for kernels
    /// built on i8·i8 instructions (`sdot`), which shift u8 activations into i8 range; the
    /// driver adds `a_bias · Σb` back.
    fn a_bias(&self) -> i32 {
        0
    }

    /// Bytes per activation value in the rows a tile reads: 1, the u8 values as they are, or 2,
    /// each value zero-extended to 16 bits, little-endian, for kernels that
    /// multiply i16 operands. The drivers widen a block of rows once and every panel reuses it.
    fn activation_bytes(&self) -> usize {
        1
    }

    /// `acc[r·nr + j] = init[j] + Σ_{p < 4·k4} (a[r·stride + p] − a_bias) · panel[(p/4·nr + j)·4 + p%4]`
    /// for every row `r` of `a`, wrapping in i32. `init` carries the driver's per-column
    /// zero-point terms into the accumulators, so the results leave the kernel final.
    ///
    /// # Panics
    /// When the slices are too short for the shapes (see [`check_tile`]) or `rows > mr`.
    fn tile(&self, a: TileRows, panel: &[i8], k4: usize, init: &[i32], acc: &mut [i32]);

    /// Most activation rows per tile of [`GemmU8I8::tile_block_scaled`].
    fn block_mr(&self) -> usize {
        self.mr()
    }

    /// The block-scaled tile of [`blocked`]: `k` in `blocks` blocks of `k4` groups of 4, and
    /// for every row `r` of `a` and column `j < nr`, from `acc[r·nr + j] = 0`, block by block in
    /// order,
    /// `acc[r·nr + j] += f32(Σ_{p ∈ blk} a.q[r, p] · u[p, j] − zeros[blk·nr + j] · a.sums[r, blk]) · (a.scales[r, blk] · w.scales[blk·nr + j])`,
    /// the integer sum exact (wrapping in i32), each `+=` an f32 multiply then an add (no fused
    /// multiply-add: every kernel gives the same bits). The tile overwrites `acc`.
    ///
    /// The default runs [`GemmU8I8::tile`] once per block, on the weights as `u − 128` in i8
    /// (always in range) and the activations as `q + 128` in u8, and adds
    /// `(128 − zero) · Σ q` back. Kernels with a tile of their own read the packed bytes as
    /// they are.
    ///
    /// # Panics
    /// When the slices are too short for the shapes or `rows > block_mr`.
    fn tile_block_scaled(&self, a: BlockRows, w: BlockPanel, k4: usize, blocks: usize, acc: &mut [f32]) {
        check_block_tile(self, a, w, k4, blocks, acc);
        let (nr, bytes, len) = (self.nr(), self.activation_bytes(), 4 * k4);
        let shift = 128 - self.a_bias();
        let mut shifted = Vec::with_capacity(a.count * len * blocks);
        for r in 0..a.count {
            shifted.extend(a.q[r * a.stride..][..len * blocks].iter().map(|&q| (q as i32 + 128) as u8));
        }
        let mut wide = Vec::new();
        let shifted = kernel_rows(bytes, &shifted, &mut wide);
        let (mut panel, mut init, mut sums) = (vec![0i8; len * nr], vec![0i32; nr], [0i32; MAX_TILE]);
        acc[..a.count * nr].fill(0.0);
        for blk in 0..blocks {
            init.fill(0);
            for p in 0..len {
                for j in 0..nr {
                    let v = (w.value(k4, blk, p, j, nr) as i32 - 128) as i8;
                    panel[(p / 4 * nr + j) * 4 + p % 4] = v;
                    init[j] -= shift * v as i32;
                }
            }
            let rows = TileRows { data: &shifted[len * blk * bytes..], stride: len * blocks * bytes, count: a.count };
            self.tile(rows, &panel, k4, &init, &mut sums);
            for r in 0..a.count {
                let (q_sum, a_scale) = (a.sums[r * a.blocks_stride + blk], a.scales[r * a.blocks_stride + blk]);
                for j in 0..nr {
                    let s = sums[r * nr + j].wrapping_add((128 - w.zeros.at(blk * nr + j) as i32).wrapping_mul(q_sum));
                    acc[r * nr + j] += s as f32 * (a_scale * w.scales.at(blk * nr + j));
                }
            }
        }
    }
}

/// The activation rows of a block-scaled tile: i8 values with each block's sum and scale.
#[derive(Clone, Copy, Debug)]
pub struct BlockRows<'a> {
    /// The values, from the first row's start.
    pub q: &'a [i8],
    /// Distance between rows in `q` (whole blocks).
    pub stride: usize,
    /// Number of rows (1 ..= the kernel's `block_mr`).
    pub count: usize,
    /// `Σ q` per row and block, `sums[r·blocks_stride + blk]`.
    pub sums: &'a [i32],
    /// Scale per row and block, as `sums`.
    pub scales: &'a [f32],
    /// Distance between rows in `sums` and `scales`.
    pub blocks_stride: usize,
}

/// One panel of [`blocked::BlockScaledWeights`]: `nr` columns, block by block.
#[derive(Clone, Copy, Debug)]
pub struct BlockPanel<'a> {
    /// Per block, `[k4][nr][4]` bytes, or for 4-bit values `[k4/2][nr][4]` with groups `2t`
    /// in the low nibbles and `2t + 1` in the high ones.
    pub values: &'a [u8],
    /// Unsigned zero point per block and column.
    pub zeros: BlockZeros<'a>,
    /// Scale per block and column.
    pub scales: BlockWeightScales<'a>,
    /// Values stored as nibbles.
    pub four_bit: bool,
}

/// The unsigned zero points of a panel's blocks: one for all (symmetric blocks, as GGUF's),
/// or one per block and column, `[blk·nr + j]`.
#[derive(Clone, Copy, Debug)]
pub enum BlockZeros<'a> {
    /// The same everywhere.
    Same(u8),
    /// Per block and column.
    PerBlock(&'a [u8]),
}

impl BlockZeros<'_> {
    /// The zero point at `i = blk·nr + j`.
    pub fn at(&self, i: usize) -> u8 {
        match *self {
            BlockZeros::Same(z) => z,
            BlockZeros::PerBlock(z) => z[i],
        }
    }
}

/// The weight scales of a panel's blocks, `[blk·nr + j]`: as f16 bits when every one is exact
/// in f16 (GGUF's are f16), which saves 2 bytes a block; else f32.
#[derive(Clone, Copy, Debug)]
pub enum BlockWeightScales<'a> {
    /// f32 values.
    F32(&'a [f32]),
    /// f16 bit patterns.
    F16(&'a [u16]),
}

impl BlockWeightScales<'_> {
    /// The scale at `i = blk·nr + j`.
    pub fn at(&self, i: usize) -> f32 {
        match *self {
            BlockWeightScales::F32(s) => s[i],
            BlockWeightScales::F16(s) => half::f16::from_bits(s[i]).to_f32(),
        }
    }

    fn len(&self) -> usize {
        match *self {
            BlockWeightScales::F32(s) => s.len(),
            BlockWeightScales::F16(s) => s.len(),
        }
    }
}

impl BlockPanel<'_> {
    /// Bytes of one block of the panel.
    pub fn block_bytes(&self, k4: usize, nr: usize) -> usize {
        if self.four_bit { k4 / 2 * nr * 4 } else { k4 * nr * 4 }
    }

    /// Value `p` of block `blk` in column `j` (the scalar definition every tile reproduces).
    pub fn value(&self, k4: usize, blk: usize, p: usize, j: usize, nr: usize) -> u8 {
        let block = &self.values[blk * self.block_bytes(k4, nr)..];
        let (group, within) = (p / 4, p % 4);
        if self.four_bit {
            (block[(group / 2 * nr + j) * 4 + within] >> (4 * (group % 2))) & 15
        } else {
            block[(group * nr + j) * 4 + within]
        }
    }
}

/// Most accumulators of a tile, `mr · nr` (8 rows of 48 columns).
const MAX_TILE: usize = 8 * 48;

/// The bounds of a block-scaled tile: `1 ≤ rows ≤ block_mr`, each row holds the blocks'
/// values, a sum and a scale per row and block, the panel `blocks` blocks (`k4` even for 4-bit
/// values), a zero point and a scale per block and column, and `acc` `rows·nr` values.
pub fn check_block_tile<K: GemmU8I8 + ?Sized>(kernel: &K, a: BlockRows, w: BlockPanel, k4: usize, blocks: usize, acc: &[f32]) {
    let (nr, rows, name, len) = (kernel.nr(), a.count, kernel.name(), 4 * k4 * blocks);
    assert!((1..=kernel.block_mr()).contains(&rows) && rows * nr <= MAX_TILE, "{name}: {rows} rows in a block-scaled tile");
    assert!(a.stride >= len && a.q.len() >= (rows - 1) * a.stride + len, "{name}: activations too short");
    let terms = (rows - 1) * a.blocks_stride + blocks;
    assert!(a.blocks_stride >= blocks && a.sums.len() >= terms && a.scales.len() >= terms, "{name}: activation sums and scales");
    assert!(!w.four_bit || k4.is_multiple_of(2), "{name}: 4-bit blocks of {k4} groups");
    assert_eq!(w.values.len(), blocks * w.block_bytes(k4, nr), "{name}: panel size");
    let zeros = match w.zeros {
        BlockZeros::Same(_) => blocks * nr,
        BlockZeros::PerBlock(z) => z.len(),
    };
    assert!(zeros >= blocks * nr && w.scales.len() >= blocks * nr, "{name}: per-block terms");
    assert!(acc.len() >= rows * nr, "{name}: accumulator size");
}

/// The bounds every kernel checks before its unchecked loads: `1 ≤ rows ≤ mr`, each row
/// holds `4·k4` values, the panel is `k4·nr·4` bytes, `init` holds `nr` values and `acc`
/// `rows·nr`.
pub fn check_tile<K: GemmU8I8 + ?Sized>(kernel: &K, a: TileRows, panel: &[i8], k4: usize, init: &[i32], acc: &[i32]) {
    let (nr, rows, lda, row_bytes) = (kernel.nr(), a.count, a.stride, 4 * k4 * kernel.activation_bytes());
    let a = a.data;
    assert!((1..=kernel.mr()).contains(&rows), "{}: {rows} rows in a tile of {}", kernel.name(), kernel.mr());
    assert!(lda >= row_bytes && a.len() >= (rows - 1) * lda + row_bytes, "{}: activations too short", kernel.name());
    assert_eq!(panel.len(), k4 * nr * 4, "{}: panel size", kernel.name());
    assert!(init.len() == nr && acc.len() >= rows * nr, "{}: accumulator sizes", kernel.name());
}

/// Rows per block that the drivers (integer and f32) run against every panel: a multiple of
/// `mr` whose activation rows (`row_bytes` each, as the tiles read them) and output rows
/// (`out_row_bytes`) stay within a share of L2 while the panels pass. Otherwise every panel
/// streams all the activations from memory again. Output rows count: each panel writes a
/// strip of every row in the block, and a block of rows larger than L2 would fetch every
/// output line from memory for a few bytes.
pub(crate) fn row_block(mr: usize, row_bytes: usize, out_row_bytes: usize) -> usize {
    const BYTES: usize = 192 * 1024;
    let tile_bytes = (mr * (row_bytes + out_row_bytes)).max(1);
    mr * (BYTES / tile_bytes).max(1)
}

/// Activation rows (whole rows of `u8` values) in the form a tile reads, `bytes` per value:
/// as they are, or widened into `buffer` (see [`GemmU8I8::activation_bytes`]).
pub(crate) fn kernel_rows<'a>(bytes: usize, rows: &'a [u8], buffer: &'a mut Vec<u8>) -> &'a [u8] {
    match bytes {
        1 => rows,
        _ => {
            // Each value zero-extended to 16 bits, little-endian.
            buffer.clear();
            buffer.extend(rows.iter().flat_map(|&v| [v, 0]));
            buffer
        }
    }
}

/// The 4 activation bytes at `a + offset` (one group of `k`) as one 32-bit lane value, the
/// operand every SIMD tile broadcasts.
///
/// # Safety
/// The 4 bytes must be readable.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[inline(always)]
unsafe fn group(a: *const u8, offset: usize) -> u32 {
    // Safety: the caller guarantees the 4 bytes are in bounds.
    unsafe { a.add(offset).cast::<u32>().read_unaligned() }
}

/// Every u8·i8 GEMM kernel this CPU can run, best first; the reference is always last.
pub fn gemm_u8i8_kernels() -> Vec<Box<dyn GemmU8I8>> {
    let mut v: Vec<Box<dyn GemmU8I8>> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if let Some(k) = x86::Avx512Vnni::new() {
            v.push(Box::new(k));
        }
        if let Some(k) = x86::AvxVnni::new() {
            v.push(Box::new(k));
        }
        if let Some(k) = x86::Avx2::new() {
            v.push(Box::new(k));
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        if let Some(k) = aarch64::I8mm::new() {
            v.push(Box::new(k));
        }
        if let Some(k) = aarch64::DotProd::new() {
            v.push(Box::new(k));
        }
        if let Some(k) = aarch64::Neon::new() {
            v.push(Box::new(k));
        }
    }
    v.push(Box::new(reference::Reference));
    v
}

/// The kernel used by the ops: the best this CPU runs, probed once, unless
/// `DISTQ_KERNEL=<name>` picks another (for tests and benches; an unknown or unsupported
/// name falls back to the best, with a message on stderr).
pub fn best_gemm_u8i8() -> &'static dyn GemmU8I8 {
    static BEST: OnceLock<Box<dyn GemmU8I8>> = OnceLock::new();
    BEST.get_or_init(|| pick(gemm_u8i8_kernels(), "DISTQ_KERNEL", |k| k.name())).as_ref()
}

/// The kernel named by the environment variable `var`, else the first (the best) of `all`,
/// with a message on stderr when the named one is not available here.
fn pick<K>(mut all: Vec<K>, var: &str, name: impl Fn(&K) -> &str) -> K {
    if let Ok(want) = std::env::var(var) {
        match all.iter().position(|k| name(k) == want) {
            Some(i) => return all.swap_remove(i),
            None => eprintln!("distq: {var}={want} is not available here; using {}", name(&all[0])),
        }
    }
    all.swap_remove(0)
}

/// Implements [`GemmU8I8`] for a kernel type whose tile function is
/// `unsafe fn tile<const R: usize>(a: *const u8, lda, panel: *const i8, k4, init: *const i32, acc: *mut i32)`
/// (`lda` in bytes)
/// (rows as a const parameter so the accumulators live in registers). Only the SIMD targets
/// have such kernels; elsewhere (32-bit ARM, …) the scalar reference runs.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
macro_rules! impl_gemm_kernel {
    ($ty:ty, $name:literal, nr = $nr:literal, mr = $mr:literal, a_bias = $bias:literal, activation_bytes = $bytes:literal, $tile:ident
     $(, block_mr = $block_mr:literal, $block_tile:ident)?) => {
        impl $crate::kernels::GemmU8I8 for $ty {
            $(
            fn block_mr(&self) -> usize {
                $block_mr
            }

            fn tile_block_scaled(
                &self,
                a: $crate::kernels::BlockRows,
                w: $crate::kernels::BlockPanel,
                k4: usize,
                blocks: usize,
                acc: &mut [f32],
            ) {
                $crate::kernels::check_block_tile(self, a, w, k4, blocks, acc);
                let acc = acc.as_mut_ptr();
                // Safety: constructing the kernel proved its CPU features; `check_block_tile`
                // proved the bounds its loads and stores assume.
                unsafe {
                    match a.count {
                        1 => $block_tile::<1>(a, w, k4, blocks, acc),
                        2 if $block_mr >= 2 => $block_tile::<2>(a, w, k4, blocks, acc),
                        3 if $block_mr >= 3 => $block_tile::<3>(a, w, k4, blocks, acc),
                        4 if $block_mr >= 4 => $block_tile::<4>(a, w, k4, blocks, acc),
                        _ => unreachable!("check_block_tile bounds rows by block_mr ≤ 4"),
                    }
                }
            }
            )?

            fn name(&self) -> &'static str {
                $name
            }

            fn nr(&self) -> usize {
                $nr
            }

            fn mr(&self) -> usize {
                $mr
            }

            fn a_bias(&self) -> i32 {
                $bias
            }

            fn activation_bytes(&self) -> usize {
                $bytes
            }

            fn tile(&self, a: $crate::kernels::TileRows, panel: &[i8], k4: usize, init: &[i32], acc: &mut [i32]) {
                $crate::kernels::check_tile(self, a, panel, k4, init, acc);
                let (rows, lda) = (a.count, a.stride);
                let (a, panel, init, acc) = (a.data.as_ptr(), panel.as_ptr(), init.as_ptr(), acc.as_mut_ptr());
                // Safety: constructing the kernel proved its CPU features; `check_tile` proved
                // the bounds its loads and stores assume.
                unsafe {
                    match rows {
                        1 => $tile::<1>(a, lda, panel, k4, init, acc),
                        2 => $tile::<2>(a, lda, panel, k4, init, acc),
                        3 => $tile::<3>(a, lda, panel, k4, init, acc),
                        4 => $tile::<4>(a, lda, panel, k4, init, acc),
                        5 if $mr >= 5 => $tile::<5>(a, lda, panel, k4, init, acc),
                        6 if $mr >= 6 => $tile::<6>(a, lda, panel, k4, init, acc),
                        7 if $mr >= 7 => $tile::<7>(a, lda, panel, k4, init, acc),
                        8 if $mr >= 8 => $tile::<8>(a, lda, panel, k4, init, acc),
                        _ => unreachable!("check_tile bounds rows by mr ≤ 8"),
                    }
                }
            }
        }
    };
}
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) use impl_gemm_kernel;

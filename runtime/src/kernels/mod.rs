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

    /// Bytes per activation value in the rows [`GemmU8I8::tile_block_scaled`] reads (see
    /// [`GemmU8I8::activation_bytes`]). Kernels with their own block-scaled tile read the u8
    /// values as they are.
    fn block_activation_bytes(&self) -> usize {
        self.activation_bytes()
    }

    /// The block-scaled tile of [`blocked`]: `k` in `blocks` blocks of `k4` groups, and for
    /// every row `r` of `a` and column `j < nr`, from `acc[r·nr + j] = 0`, block by block in
    /// order,
    /// `acc[r·nr + j] += f32(init[blk·nr + j] + Σ_{p ∈ blk} (a[r, p] − a_bias) · panel[p, j]) · (a_scales[r·a_stride + blk] · w_scales[blk·nr + j])`,
    /// each `+=` an f32 multiply then an add (no fused multiply-add: every kernel gives the
    /// same bits). The tile overwrites `acc`. Kernels whose tile keeps only the integer sums
    /// in registers leave the default: one [`GemmU8I8::tile`] per block.
    ///
    /// # Panics
    /// When the slices are too short for the shapes or `rows > block_mr`.
    #[allow(clippy::too_many_arguments)]
    fn tile_block_scaled(&self, a: TileRows, panel: &[i8], k4: usize, blocks: usize, init: &[i32], scales: BlockScales, acc: &mut [f32]) {
        check_block_tile(self, a, panel, k4, blocks, init, scales, acc);
        let (nr, block_len, bytes) = (self.nr(), k4 * self.nr() * 4, self.activation_bytes());
        let mut sums = [0i32; MAX_TILE];
        acc[..a.count * nr].fill(0.0);
        for blk in 0..blocks {
            let rows = TileRows { data: &a.data[4 * k4 * blk * bytes..], ..a };
            self.tile(rows, &panel[blk * block_len..][..block_len], k4, &init[blk * nr..][..nr], &mut sums);
            for r in 0..a.count {
                let a_scale = scales.a[r * scales.a_stride + blk];
                let w = &scales.w[blk * nr..][..nr];
                for ((acc, &s), &w) in acc[r * nr..][..nr].iter_mut().zip(&sums[r * nr..]).zip(w) {
                    *acc += s as f32 * (a_scale * w);
                }
            }
        }
    }
}

/// The scales of a block-scaled tile: the activations' `a[r·a_stride + blk]` and the
/// weights' `w[blk·nr + j]`; and whether the weights are small.
#[derive(Clone, Copy, Debug)]
pub struct BlockScales<'a> {
    /// Per row and block.
    pub a: &'a [f32],
    /// Distance between rows in `a`.
    pub a_stride: usize,
    /// Per block and panel column.
    pub w: &'a [f32],
    /// Every weight within ±15 (4-bit values minus their zero points), which lets a kernel sum
    /// u8 · i8 products in i16 without saturating.
    pub small_weights: bool,
}

/// The largest weight magnitude of [`BlockScales::small_weights`]: a pair of u8 · i8 products
/// then stays within ±7650, four pairs within i16.
pub(crate) const SMALL_WEIGHT: i32 = 15;

/// Most accumulators of a tile, `mr · nr` (8 rows of 48 columns).
const MAX_TILE: usize = 8 * 48;

/// The bounds of a block-scaled tile: those of [`check_tile`] over the whole `k`, one `init`
/// and one weight scale per block and column, an activation scale per row and block, and
/// `rows ≤ block_mr`.
#[allow(clippy::too_many_arguments)]
pub fn check_block_tile<K: GemmU8I8 + ?Sized>(
    kernel: &K,
    a: TileRows,
    panel: &[i8],
    k4: usize,
    blocks: usize,
    init: &[i32],
    scales: BlockScales,
    acc: &[f32],
) {
    let (nr, rows, name) = (kernel.nr(), a.count, kernel.name());
    let row_bytes = 4 * k4 * blocks * kernel.block_activation_bytes();
    assert!((1..=kernel.block_mr()).contains(&rows) && rows * nr <= MAX_TILE, "{name}: {rows} rows in a block-scaled tile");
    assert!(a.stride >= row_bytes && a.data.len() >= (rows - 1) * a.stride + row_bytes, "{name}: activations too short");
    assert_eq!(panel.len(), blocks * k4 * nr * 4, "{name}: panel size");
    assert!(init.len() >= blocks * nr && scales.w.len() >= blocks * nr, "{name}: per-block terms");
    assert!(scales.a_stride >= blocks && scales.a.len() >= (rows - 1) * scales.a_stride + blocks, "{name}: activation scales");
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

            fn block_activation_bytes(&self) -> usize {
                1
            }

            fn tile_block_scaled(
                &self,
                a: $crate::kernels::TileRows,
                panel: &[i8],
                k4: usize,
                blocks: usize,
                init: &[i32],
                scales: $crate::kernels::BlockScales,
                acc: &mut [f32],
            ) {
                $crate::kernels::check_block_tile(self, a, panel, k4, blocks, init, scales, acc);
                let (rows, lda) = (a.count, a.stride);
                let (a, panel, init, acc) = (a.data.as_ptr(), panel.as_ptr(), init.as_ptr(), acc.as_mut_ptr());
                let (a_scales, a_stride, w_scales, small) = (scales.a.as_ptr(), scales.a_stride, scales.w.as_ptr(), scales.small_weights);
                // Safety: constructing the kernel proved its CPU features; `check_block_tile`
                // proved the bounds its loads and stores assume.
                unsafe {
                    match rows {
                        1 => $block_tile::<1>(a, lda, panel, k4, blocks, init, a_scales, a_stride, w_scales, small, acc),
                        2 if $block_mr >= 2 => $block_tile::<2>(a, lda, panel, k4, blocks, init, a_scales, a_stride, w_scales, small, acc),
                        3 if $block_mr >= 3 => $block_tile::<3>(a, lda, panel, k4, blocks, init, a_scales, a_stride, w_scales, small, acc),
                        4 if $block_mr >= 4 => $block_tile::<4>(a, lda, panel, k4, blocks, init, a_scales, a_stride, w_scales, small, acc),
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

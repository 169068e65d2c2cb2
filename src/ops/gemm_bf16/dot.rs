//! The AVX512-BF16 kernel, for CPUs with bf16 dot products but no AMX tiles (AMD Zen 4 and
//! later, Intel Cooper Lake): `vdpbf16ps` multiplies 16 pairs of bf16 by 16 pairs and adds each
//! pair's two products to one f32 lane, 32 multiply-adds per instruction where an f32 FMA does
//! 16 — the ~2.5× that PyTorch's bf16 gemm shows over f32 on Zen 4.
//!
//! It reads the operands exactly as the tiles do: a right-operand tile row (`[16 columns][2]`,
//! one k-pair) is one 512-bit vector, and a left-operand row's k-pair is one 32-bit word to
//! broadcast. So packing, the parallel loop and the edge handling are shared, and only this
//! block differs. Each output element is the same sum of exact bf16 products in f32 as on the
//! tiles (both flush subnormal inputs), up to the order of the additions.

use super::{OutPtr, Tiles, BLOCK, TILE_ELEMS, TILE_K};
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Rows of the block summed at once: 8 rows × 2 vectors of 16 columns = 16 accumulators, with
/// room for the two right-operand vectors and the broadcast among the 32 vector registers.
const ROWS: usize = 8;

/// Whether this CPU has the instructions the kernel and the operand rounding use.
#[cfg(target_arch = "x86_64")]
pub(super) fn present() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512bf16")
}

/// One 32 × 32 output block, rows `32i..`, columns `32j..`, as [`super::tiles::block`] computes
/// it. The CPU must have AVX512-BF16 ([`present`]); `out` holds `m × n` elements.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
#[inline(never)]
pub(super) unsafe fn block(t: &Tiles, i: usize, out: OutPtr, m: usize, n: usize, j: usize) {
    let kp = t.kp;
    let (r0, c0) = (i * BLOCK, j * BLOCK);
    let (rows, cols) = (BLOCK.min(m - r0), BLOCK.min(n - c0));
    // Column masks of the block's two 16-wide halves (a half past `n` stores nothing).
    let masks: [__mmask16; 2] = [half_mask(cols), half_mask(cols.saturating_sub(16))];
    let b = t.panel.as_ptr();
    for g in 0..rows.div_ceil(ROWS) {
        // Rows `g·8..` of the block lie in band `2i + g/2` of the tiled left operand, at row
        // `8·(g % 2)` of each of its tiles; rows past `m` are zero padding (read, not stored).
        let band = t.lhs.as_ptr().add((2 * i + g / 2) * 16 * kp);
        let first = (g % 2) * ROWS;
        let mut acc = [[_mm512_setzero_ps(); 2]; ROWS];
        if t.accumulate {
            for (r, sums) in acc.iter_mut().enumerate().take(rows - g * ROWS) {
                let row = out.0.add((r0 + g * ROWS + r) * n + c0);
                for h in 0..2 {
                    sums[h] = _mm512_maskz_loadu_ps(masks[h], row.add(16 * h));
                }
            }
        }
        for kb in t.ks.clone() {
            // k-pairs of this tile's rows: word `p` of row `r` at `pairs[r·16 + p]`.
            let pairs = band.add(kb * TILE_ELEMS + first * TILE_K).cast::<i32>();
            let b0 = b.add(kb * 2 * TILE_ELEMS);
            let b1 = b0.add(TILE_ELEMS);
            for p in 0..TILE_K / 2 {
                let w0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b0.add(p * 32).cast()));
                let w1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b1.add(p * 32).cast()));
                for (r, sums) in acc.iter_mut().enumerate() {
                    let x: __m512bh =
                        std::mem::transmute(_mm512_set1_epi32(*pairs.add(r * 16 + p)));
                    sums[0] = _mm512_dpbf16_ps(sums[0], x, w0);
                    sums[1] = _mm512_dpbf16_ps(sums[1], x, w1);
                }
            }
        }
        for (r, sums) in acc.iter().enumerate().take(rows - g * ROWS) {
            let row = out.0.add((r0 + g * ROWS + r) * n + c0);
            for h in 0..2 {
                _mm512_mask_storeu_ps(row.add(16 * h), masks[h], sums[h]);
            }
        }
    }
}

/// The mask of the first `cols` (at most 16) lanes.
#[cfg(target_arch = "x86_64")]
fn half_mask(cols: usize) -> __mmask16 {
    ((1u32 << cols.min(16)) - 1) as __mmask16
}

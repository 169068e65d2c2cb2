//! Rounding f32 operands to bf16 straight into the tiles' layouts, 32 values per instruction
//! (AVX-512 BF16's `vcvtne2ps2bf16`, present on every CPU with AMX bf16).
//!
//! Rounding the operands was a tenth of a bf16 training step when done one value at a time
//! (the build targets baseline x86-64, so a plain loop only vectorises to SSE2, and the strided
//! reads of a transposed operand not at all). Each layout the products use has its own
//! vectorised path: row-major or transposed left operands, row-major or transposed right
//! operands; any other strides fall back to the scalar [`to_bf16`].
//!
//! The instruction rounds to nearest-even like [`to_bf16`] but flushes subnormal inputs
//! (below 1.2·10⁻³⁸) to zero — as the tile multiplier itself treats subnormal bf16 inputs, so
//! the product is the same either way.

use super::{to_bf16, Strided, TILE_ELEMS, TILE_K};
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;
use std::mem::MaybeUninit;

/// Element `(r, c)` of a strided matrix.
#[inline(always)]
fn at(m: &Strided, r: usize, c: usize) -> f32 {
    m.data[r * m.rs + c * m.cs]
}

/// One band of 16 rows (`band·16..`) of the left operand as its `kp/32` consecutive 16 × 32
/// tiles, every element written: rows and columns past the matrix are zero. (The tiles are
/// not zero-filled first: that was a memset of every left operand of every product.)
pub(super) fn lhs_band(a: &Strided, band: usize, tiles: &mut [MaybeUninit<u16>]) {
    let rows = 16.min(a.rows.saturating_sub(band * 16));
    #[cfg(target_arch = "x86_64")]
    if super::available() && a.cs == 1 {
        // Rows past the matrix are zero; each row's vector path writes all `kp` columns.
        let kp = tiles.len() / 16;
        for kb in 0..kp / TILE_K {
            tiles[kb * TILE_ELEMS + rows * TILE_K..(kb + 1) * TILE_ELEMS].fill(MaybeUninit::new(0));
        }
        // SAFETY: AVX-512 BF16 is present (checked by `available`); reads stay inside the
        // matrix (masked) and writes inside `tiles`, which holds `kp/32` tiles.
        unsafe { lhs_band_rows(a, band * 16, rows, tiles.as_mut_ptr().cast()) };
        return;
    }
    tiles.fill(MaybeUninit::new(0));
    // SAFETY: every element was just written.
    let tiles = unsafe { &mut *(tiles as *mut [MaybeUninit<u16>] as *mut [u16]) };
    #[cfg(target_arch = "x86_64")]
    if super::available() && a.rs == 1 {
        // SAFETY: as above.
        unsafe { lhs_band_columns(a, band * 16, rows, tiles) };
        return;
    }
    for r in 0..rows {
        for c in 0..a.cols {
            tiles[c / TILE_K * TILE_ELEMS + r * TILE_K + c % TILE_K] =
                to_bf16(at(a, band * 16 + r, c));
        }
    }
}

/// One 32 × 16 block of the right operand (rows `r0..`, columns `c0..`) as a VNNI tile: row `p`
/// holds, for each of the 16 columns, the pair of rows `2p`, `2p + 1`. `tile` is zero-filled;
/// rows and columns past the matrix stay zero.
pub(super) fn rhs_tile(b: &Strided, r0: usize, c0: usize, tile: &mut [u16]) {
    let rows = b.rows.saturating_sub(r0).min(32);
    let cols = b.cols.saturating_sub(c0).min(16);
    #[cfg(target_arch = "x86_64")]
    if super::available() && (b.cs == 1 || b.rs == 1) {
        // SAFETY: as in `lhs_band`; the tile holds 512 elements.
        unsafe {
            if b.cs == 1 {
                rhs_tile_rows(b, r0, c0, rows, cols, tile)
            } else {
                rhs_tile_columns(b, r0, c0, rows, cols, tile)
            }
        }
        return;
    }
    for r in 0..rows {
        for c in 0..cols {
            tile[(r / 2 * 16 + c) * 2 + r % 2] = to_bf16(at(b, r0 + r, c0 + c));
        }
    }
}

/// A mask of the first `n` (≤ 16) lanes.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn lanes(n: usize) -> __mmask16 {
    ((1u32 << n.min(16)) - 1) as __mmask16
}

/// Up to 32 consecutive f32 from `p` (`n` of them; the rest read as zero) rounded to 32 bf16
/// in order. Masked lanes are never read, so `p` may point near the end of its slice.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn round32(p: *const f32, n: usize) -> __m512i {
    let lo = _mm512_maskz_loadu_ps(lanes(n), p);
    let hi = _mm512_maskz_loadu_ps(lanes(n.saturating_sub(16)), p.wrapping_add(16));
    std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo))
}

/// Lane order that interleaves two 16-element halves: `[a0, b0, a1, b1, …]` from `[a…, b…]`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn interleave_index() -> __m512i {
    let idx: [u16; 32] = std::array::from_fn(|i| (i / 2 + (i % 2) * 16) as u16);
    _mm512_loadu_si512(idx.as_ptr().cast())
}

/// Where each of a tile's 16 rows starts, in pairs (u32) from the tile's start: 16 pairs apart.
/// Scatter offsets for writing one pair per row.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile_row_offsets() -> __m512i {
    _mm512_mullo_epi32(
        _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
        _mm512_set1_epi32(16),
    )
}

/// Row-major left operand: each row's run of 32 columns is one tile row (all `kp/32` tiles of
/// rows `..rows` written through `tiles`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn lhs_band_rows(a: &Strided, row0: usize, rows: usize, tiles: *mut u16) {
    let k = a.cols;
    for r in 0..rows {
        let row = a.data[(row0 + r) * a.rs..][..k].as_ptr();
        for kb in 0..k.div_ceil(TILE_K) {
            let v = round32(row.add(kb * TILE_K), k - kb * TILE_K);
            _mm512_storeu_si512(tiles.add(kb * TILE_ELEMS + r * TILE_K).cast(), v);
        }
    }
}

/// Column-major left operand (`dyᵀ`, say): each column's 16 rows are contiguous. Two columns
/// are rounded together, interleaved into 16 row pairs and scattered down the tile's rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn lhs_band_columns(a: &Strided, row0: usize, rows: usize, tiles: &mut [u16]) {
    let k = a.cols;
    let order = interleave_index();
    let offsets = tile_row_offsets();
    let mask = lanes(rows);
    let base = a.data.as_ptr().add(row0);
    for c in (0..k).step_by(2) {
        let first = _mm512_maskz_loadu_ps(mask, base.add(c * a.cs));
        let second = if c + 1 < k {
            _mm512_maskz_loadu_ps(mask, base.add((c + 1) * a.cs))
        } else {
            _mm512_setzero_ps()
        };
        let pairs = _mm512_permutexvar_epi16(
            order,
            std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(second, first)),
        );
        let dst = tiles[c / TILE_K * TILE_ELEMS + c % TILE_K..].as_mut_ptr();
        _mm512_mask_i32scatter_epi32::<4>(dst.cast(), mask, offsets, pairs);
    }
}

/// Row-major right operand: rows `2p`, `2p + 1` over 16 columns, interleaved into tile row `p`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn rhs_tile_rows(
    b: &Strided,
    r0: usize,
    c0: usize,
    rows: usize,
    cols: usize,
    tile: &mut [u16],
) {
    let order = interleave_index();
    let mask = lanes(cols);
    let base = b.data.as_ptr().add(r0 * b.rs + c0);
    for p in 0..rows.div_ceil(2) {
        let even = _mm512_maskz_loadu_ps(mask, base.add(2 * p * b.rs));
        let odd = if 2 * p + 1 < rows {
            _mm512_maskz_loadu_ps(mask, base.add((2 * p + 1) * b.rs))
        } else {
            _mm512_setzero_ps()
        };
        let v = _mm512_cvtne2ps_pbh(odd, even);
        let pairs = _mm512_permutexvar_epi16(order, std::mem::transmute::<__m512bh, __m512i>(v));
        _mm512_storeu_si512(tile[p * 32..][..32].as_mut_ptr().cast(), pairs);
    }
}

/// Column-major right operand (`Wᵀ` of a row-major `W`): each column's 32 rows are contiguous
/// and round to 16 row pairs in order, scattered down the tile's rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn rhs_tile_columns(
    b: &Strided,
    r0: usize,
    c0: usize,
    rows: usize,
    cols: usize,
    tile: &mut [u16],
) {
    let offsets = tile_row_offsets();
    let mask = lanes(rows.div_ceil(2));
    for c in 0..cols {
        let v = round32(b.data.as_ptr().add(r0 + (c0 + c) * b.cs), rows);
        _mm512_mask_i32scatter_epi32::<4>(tile[2 * c..].as_mut_ptr().cast(), mask, offsets, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize) -> Vec<f32> {
        (0..len)
            .map(|i| ((i * 7919 % 1013) as f32 - 506.0) * 0.0137 + 1.0 / (i + 3) as f32)
            .collect()
    }

    /// The scalar layouts, written from the definitions.
    fn lhs_reference(a: &Strided, band: usize, kp: usize) -> Vec<u16> {
        let mut tiles = vec![0u16; kp * 16];
        for r in 0..16.min(a.rows.saturating_sub(band * 16)) {
            for c in 0..a.cols {
                tiles[c / 32 * 512 + r * 32 + c % 32] = to_bf16(at(a, band * 16 + r, c));
            }
        }
        tiles
    }

    fn rhs_reference(b: &Strided, r0: usize, c0: usize) -> Vec<u16> {
        let mut tile = vec![0u16; 512];
        for r in 0..b.rows.saturating_sub(r0).min(32) {
            for c in 0..b.cols.saturating_sub(c0).min(16) {
                tile[(r / 2 * 16 + c) * 2 + r % 2] = to_bf16(at(b, r0 + r, c0 + c));
            }
        }
        tile
    }

    #[test]
    fn vector_layouts_equal_the_scalar_definitions() {
        if !super::super::available() {
            eprintln!("skipped: no AMX on this CPU");
            return;
        }
        // Ragged sizes: partial bands, partial tiles, an odd k.
        for &(rows, cols) in &[(16, 32), (37, 70), (5, 33), (40, 1), (1, 97)] {
            let data = values(rows * cols);
            let kp = cols.div_ceil(32) * 32;
            for (rs, cs) in [(cols, 1), (1, rows)] {
                let m = Strided {
                    data: &data,
                    rows,
                    cols,
                    rs,
                    cs,
                };
                // One band past the rows too: padding bands are all zero.
                for band in 0..=rows.div_ceil(16) {
                    // Garbage in the buffer must not survive: every element is written.
                    let mut got = vec![MaybeUninit::new(0xdeadu16); kp * 16];
                    lhs_band(&m, band, &mut got);
                    // SAFETY: initialised above.
                    let got: Vec<u16> = got.iter().map(|x| unsafe { x.assume_init() }).collect();
                    assert_eq!(
                        got,
                        lhs_reference(&m, band, kp),
                        "lhs {rows}x{cols} ({rs},{cs})"
                    );
                }
                for r0 in (0..rows).step_by(32) {
                    for c0 in (0..cols).step_by(16) {
                        let mut got = vec![0u16; 512];
                        rhs_tile(&m, r0, c0, &mut got);
                        assert_eq!(
                            got,
                            rhs_reference(&m, r0, c0),
                            "rhs {rows}x{cols} ({rs},{cs}) at {r0},{c0}"
                        );
                    }
                }
            }
        }
    }
}

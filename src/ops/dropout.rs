//! Inverted dropout with masks that are a pure function of (seed, element index), so a fused op
//! can redraw in its backward pass exactly the mask its forward pass used.

use candle_core::{Result, Tensor};
use rayon::prelude::*;

/// A reproducible stream for one dropout mask: the step's seed mixed with the module's id.
#[inline(always)]
pub fn mix_seed(seed: u64, module: u64) -> u64 {
    // SplitMix64 finaliser: distinct modules get unrelated streams from one step seed.
    let mut z = seed ^ module.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Inverted dropout of `x` with probability `p`, the mask drawn from `seed`.
pub fn dropout(x: &Tensor, p: f64, seed: u64) -> Result<Tensor> {
    if p <= 0.0 {
        return Ok(x.clone());
    }
    let mask = mask(x.elem_count(), p, seed);
    let mask = Tensor::from_vec(mask, x.dims(), x.device())?.to_dtype(x.dtype())?;
    x * mask
}

/// The multipliers of inverted dropout for `len` elements: 0 with probability `p`, else
/// `1/(1 − p)`. Element i's draw is a hash of (seed, i): the mask is the same whatever the
/// thread count, and its blocks are drawn in parallel (a sequential generator was a tenth of a
/// LoRA step).
pub fn mask(len: usize, p: f64, seed: u64) -> Vec<f32> {
    const BLOCK: usize = 1 << 14;
    let mut mask = vec![0f32; len];
    mask.par_chunks_mut(BLOCK)
        .enumerate()
        .for_each(|(block, m)| {
            for (j, v) in m.iter_mut().enumerate() {
                *v = keep_factor(p, seed, block * BLOCK + j);
            }
        });
    mask
}

/// Element `index` of [`mask`]`(_, p, seed)`, drawn on its own: for kernels that apply the
/// mask as they stream through the input rather than materialise it.
#[inline(always)]
pub fn keep_factor(p: f64, seed: u64, index: usize) -> f32 {
    let draw = mix_seed(seed, index as u64) >> 11;
    let u = draw as f64 / (1u64 << 53) as f64;
    if u < p {
        0.0
    } else {
        (1.0 / (1.0 - p)) as f32
    }
}

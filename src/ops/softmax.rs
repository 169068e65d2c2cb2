//! Scaled, causally masked softmax over attention scores, with its backward; optionally with a
//! sliding window (Gemma 3's local layers) and ALiBi biases (BLOOM), both computed in the kernel.
//!
//! candle-nn's fused `softmax_last_dim` has no backward. Masking inside the op also keeps the
//! `[t, s]` mask tensor out of the autograd graph (candle would compute a gradient for it) and
//! skips the exponentials of masked entries.

use super::cpu::{dispatch_float, slice, storage, Float};
use super::exp::exp_in_place;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, WithDType, D};
use rayon::prelude::*;

/// Scores have layout `[.., t, s]`: query row `i` sits at absolute position `p = s - t + i` and
/// sees keys `0..=p` (the first `s - t` keys are a cache of earlier positions); with a sliding
/// `window`, only the last `window` of them (`p - window < j <= p`, Gemma's local layers).
fn visible(t: usize, s: usize, i: usize, window: Option<usize>) -> std::ops::Range<usize> {
    let end = s - t + i + 1;
    let start = window.map_or(0, |w| end.saturating_sub(w));
    start..end
}

fn forward_kernel<T: Float>(
    x: &[T],
    t: usize,
    s: usize,
    scale: T,
    window: Option<usize>,
    alibi: Option<&[f64]>,
) -> Vec<T> {
    let mut out = vec![T::zero(); x.len()];
    // Rows are independent: spread them over the threads.
    out.par_chunks_mut(s)
        .zip(x.par_chunks(s))
        .enumerate()
        .for_each(|(m, (orow, row))| {
            // Rows are `[.., heads, t, s]`: this row's head picks its ALiBi slope.
            let slope = alibi.map_or(0.0, |a| a[(m / t) % a.len()]);
            softmax_row(row, orow, (t, s, m % t), scale, window, slope);
        });
    out
}

/// One row of the masked softmax: query `i` of `t` over `s` keys, scores `row` (scaled by
/// `scale`, plus `slope · j` for ALiBi) into `orow`, whose masked entries are left untouched
/// (zero in a fresh buffer).
pub(crate) fn softmax_row<T: Float>(
    row: &[T],
    orow: &mut [T],
    (t, s, i): (usize, usize, usize),
    scale: T,
    window: Option<usize>,
    slope: f64,
) {
    let r = visible(t, s, i, window);
    let value = |j: usize, v: T| v * scale + T::from_f64(slope * j as f64);
    let max = row[r.clone()]
        .iter()
        .zip(r.clone())
        .fold(T::neg_infinity(), |a, (&v, j)| {
            num_traits::Float::max(a, value(j, v))
        });
    let visible_out = &mut orow[r.clone()];
    for ((o, &v), j) in visible_out.iter_mut().zip(&row[r.clone()]).zip(r) {
        *o = value(j, v) - max;
    }
    exp_in_place(visible_out);
    let inv = visible_out.iter().copied().sum::<T>().recip();
    visible_out.iter_mut().for_each(|o| *o *= inv);
}

/// The softmax backward of one row, in place: `g ← scale · y · (g − Σ g·y)` (masked entries
/// have `y = 0`, so their gradient is 0).
pub(crate) fn softmax_grad_row<T: Float>(y: &[T], g: &mut [T], scale: T) {
    let dot = y.iter().zip(g.iter()).map(|(&a, &b)| a * b).sum::<T>();
    for (g, &a) in g.iter_mut().zip(y) {
        *g = scale * a * (*g - dot);
    }
}

/// `dx = scale · y · (dy − Σ dy·y)`, row by row; masked entries have `y = 0` and so `dx = 0`.
fn backward_kernel<T: Float>(y: &[T], dy: &[T], s: usize, scale: T) -> Vec<T> {
    let mut dx = dy.to_vec();
    dx.par_chunks_mut(s)
        .zip(y.par_chunks(s))
        .for_each(|(g, yr)| softmax_grad_row(yr, g, scale));
    dx
}

/// `softmax(scale · x)` over the last dim with the causal mask applied.
struct CausalSoftmax {
    scale: f64,
    window: Option<usize>,
    alibi: Option<Vec<f64>>,
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "causal-softmax"
    }

    fn cpu_fwd(&self, st: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = l.dims();
        let (t, s) = (dims[dims.len() - 2], dims[dims.len() - 1]);
        dispatch_float!(st, self.name(), T => {
            let scale = <T as WithDType>::from_f64(self.scale);
            let alibi = self.alibi.as_deref();
            let out = forward_kernel(slice::<T>(st, l)?, t, s, scale, self.window, alibi);
            Ok((storage(out), l.shape().clone()))
        })
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let op = CausalSoftmaxGrad { scale: self.scale };
        Ok(Some(
            y.contiguous()?.apply_op2_no_bwd(&dy.contiguous()?, &op)?,
        ))
    }
}

/// Backward kernel op `(y, dy) → dx`.
struct CausalSoftmaxGrad {
    scale: f64,
}

impl CustomOp2 for CausalSoftmaxGrad {
    fn name(&self) -> &'static str {
        "causal-softmax-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let s = *l1.dims().last().unwrap_or(&1);
        dispatch_float!(s1, self.name(), T => {
            let scale = <T as WithDType>::from_f64(self.scale);
            let dx = backward_kernel(slice::<T>(s1, l1)?, slice::<T>(s2, l2)?, s, scale);
            Ok((storage(dx), l1.shape().clone()))
        })
    }
}

/// What [`causal_softmax_with`] adds to the causal mask.
#[derive(Clone, Copy, Debug, Default)]
pub struct SoftmaxMask<'a> {
    /// Each query sees at most the last `window` keys up to itself (sliding-window attention).
    pub window: Option<usize>,
    /// ALiBi slopes, one per head (the third-last dim): `slope · j` is added to the scaled score
    /// of key `j` (BLOOM; HF adds it for the absolute key position, which softmax sees as
    /// `slope · (j − i)`). Held in the op, so the bias is never materialised or differentiated.
    pub alibi: Option<&'a [f64]>,
}

/// The same function as candle ops (off the CPU, and as the tests' reference).
pub fn causal_softmax_reference(x: &Tensor, scale: f64, mask: SoftmaxMask) -> Result<Tensor> {
    let dims = x.dims();
    let (t, s) = (dims[dims.len() - 2], dims[dims.len() - 1]);
    let causal: Vec<f32> = (0..t)
        .flat_map(|i| {
            (0..s).map(move |j| {
                if visible(t, s, i, mask.window).contains(&j) {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    let causal = Tensor::from_vec(causal, (t, s), x.device())?.to_dtype(x.dtype())?;
    let mut scores = x.affine(scale, 0.0)?.broadcast_add(&causal)?;
    if let Some(slopes) = mask.alibi {
        let bias: Vec<f64> = slopes
            .iter()
            .flat_map(|m| (0..s).map(move |j| m * j as f64))
            .collect();
        let bias = Tensor::from_vec(bias, (slopes.len(), 1, s), x.device())?.to_dtype(x.dtype())?;
        scores = scores.broadcast_add(&bias.detach())?;
    }
    candle_nn::ops::softmax(&scores, D::Minus1)
}

/// Causally masked `softmax(scale · x)` over the last dimension of scores `[.., t, s]` (`s ≥ t`;
/// the last `t` keys are the queries' own positions).
pub fn causal_softmax(x: &Tensor, scale: f64) -> Result<Tensor> {
    causal_softmax_with(x, scale, SoftmaxMask::default())
}

/// [`causal_softmax`] with a sliding window and/or ALiBi biases.
pub fn causal_softmax_with(x: &Tensor, scale: f64, mask: SoftmaxMask) -> Result<Tensor> {
    let dims = x.dims();
    if dims.len() < 2 || dims[dims.len() - 1] < dims[dims.len() - 2] {
        candle_core::bail!(
            "causal_softmax: scores {:?} must be [.., t, s] with s >= t",
            dims
        );
    }
    if mask.window == Some(0) {
        candle_core::bail!("causal_softmax: a sliding window must hold at least one key");
    }
    if let Some(a) = mask.alibi {
        if dims.len() < 3 || dims[dims.len() - 3] != a.len() {
            candle_core::bail!(
                "causal_softmax: {} ALiBi slopes for scores {dims:?}",
                a.len()
            );
        }
    }
    if !x.device().is_cpu() {
        return causal_softmax_reference(x, scale, mask);
    }
    x.contiguous()?.apply_op1(CausalSoftmax {
        scale,
        window: mask.window,
        alibi: mask.alibi.map(<[f64]>::to_vec),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{assert_close, finite_difference_check, rand_tensor};
    use candle_core::DType;

    #[test]
    fn forward_matches_reference_with_and_without_cache() -> Result<()> {
        for (t, s) in [(4, 4), (2, 5), (1, 3)] {
            let x = rand_tensor(&[2, 3, t, s], DType::F32, 1)?;
            assert_close(
                &causal_softmax(&x, 0.7)?,
                &causal_softmax_reference(&x, 0.7, SoftmaxMask::default())?,
                1e-6,
            )?;
            let slopes = [0.25, 0.0625, 0.015625];
            for mask in [
                SoftmaxMask {
                    window: Some(2),
                    alibi: None,
                },
                SoftmaxMask {
                    window: None,
                    alibi: Some(&slopes),
                },
            ] {
                assert_close(
                    &causal_softmax_with(&x, 0.7, mask)?,
                    &causal_softmax_reference(&x, 0.7, mask)?,
                    1e-6,
                )?;
            }
        }
        Ok(())
    }

    #[test]
    fn gradient_matches_finite_differences() -> Result<()> {
        finite_difference_check(&[2, 2, 3, 3], 3, |x| causal_softmax(x, 0.5))?;
        finite_difference_check(&[1, 2, 2, 4], 4, |x| causal_softmax(x, 1.3))?;
        finite_difference_check(&[1, 2, 4, 5], 5, |x| {
            let mask = SoftmaxMask {
                window: Some(2),
                alibi: Some(&[0.5, 0.125]),
            };
            causal_softmax_with(x, 0.9, mask)
        })
    }
}

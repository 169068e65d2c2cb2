//! Scaled, causally masked softmax over attention scores, with its backward.
//!
//! candle-nn's fused `softmax_last_dim` has no backward. Masking inside the op also keeps the
//! `[t, s]` mask tensor out of the autograd graph (candle would compute a gradient for it) and
//! skips the exponentials of masked entries.

use super::cpu::{dispatch_float, slice, storage, Float};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, WithDType, D};

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
) -> Vec<T> {
    let mut out = vec![T::zero(); x.len()];
    for (m, (row, orow)) in x.chunks_exact(s).zip(out.chunks_exact_mut(s)).enumerate() {
        let r = visible(t, s, m % t, window);
        let max = row[r.clone()].iter().fold(T::neg_infinity(), |a, &b| {
            num_traits::Float::max(a, b * scale)
        });
        let mut sum = T::zero();
        for (o, &v) in orow[r.clone()].iter_mut().zip(&row[r.clone()]) {
            *o = (v * scale - max).exp();
            sum += *o;
        }
        let inv = sum.recip();
        orow[r].iter_mut().for_each(|o| *o *= inv);
    }
    out
}

/// `dx = scale · y · (dy − Σ dy·y)`, row by row; masked entries have `y = 0` and so `dx = 0`.
fn backward_kernel<T: Float>(y: &[T], dy: &[T], s: usize, scale: T) -> Vec<T> {
    let mut dx = vec![T::zero(); y.len()];
    for ((yr, dyr), dxr) in y
        .chunks_exact(s)
        .zip(dy.chunks_exact(s))
        .zip(dx.chunks_exact_mut(s))
    {
        let dot = yr.iter().zip(dyr).map(|(&a, &b)| a * b).sum::<T>();
        for ((o, &a), &b) in dxr.iter_mut().zip(yr).zip(dyr) {
            *o = scale * a * (b - dot);
        }
    }
    dx
}

/// `softmax(scale · x)` over the last dim with the causal mask applied.
struct CausalSoftmax {
    scale: f64,
    window: Option<usize>,
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
            let out = forward_kernel(slice::<T>(st, l)?, t, s, scale, self.window);
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

/// The same function as candle ops (off the CPU, and as the tests' reference).
pub fn causal_softmax_reference(x: &Tensor, scale: f64, window: Option<usize>) -> Result<Tensor> {
    let dims = x.dims();
    let (t, s) = (dims[dims.len() - 2], dims[dims.len() - 1]);
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| {
            (0..s).map(move |j| {
                if visible(t, s, i, window).contains(&j) {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    let mask = Tensor::from_vec(mask, (t, s), x.device())?.to_dtype(x.dtype())?;
    candle_nn::ops::softmax(&x.affine(scale, 0.0)?.broadcast_add(&mask)?, D::Minus1)
}

/// Causally masked `softmax(scale · x)` over the last dimension of scores `[.., t, s]` (`s ≥ t`;
/// the last `t` keys are the queries' own positions).
pub fn causal_softmax(x: &Tensor, scale: f64) -> Result<Tensor> {
    windowed_causal_softmax(x, scale, None)
}

/// [`causal_softmax`] where each query sees at most the last `window` keys up to itself
/// (sliding-window attention); `None` is plain causal.
pub fn windowed_causal_softmax(x: &Tensor, scale: f64, window: Option<usize>) -> Result<Tensor> {
    let dims = x.dims();
    if dims.len() < 2 || dims[dims.len() - 1] < dims[dims.len() - 2] {
        candle_core::bail!(
            "causal_softmax: scores {:?} must be [.., t, s] with s >= t",
            dims
        );
    }
    if !x.device().is_cpu() {
        return causal_softmax_reference(x, scale, window);
    }
    if window == Some(0) {
        candle_core::bail!("causal_softmax: a sliding window must hold at least one key");
    }
    x.contiguous()?.apply_op1(CausalSoftmax { scale, window })
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
                &causal_softmax_reference(&x, 0.7, None)?,
                1e-6,
            )?;
            assert_close(
                &windowed_causal_softmax(&x, 0.7, Some(2))?,
                &causal_softmax_reference(&x, 0.7, Some(2))?,
                1e-6,
            )?;
        }
        Ok(())
    }

    #[test]
    fn gradient_matches_finite_differences() -> Result<()> {
        finite_difference_check(&[2, 2, 3, 3], 3, |x| causal_softmax(x, 0.5))?;
        finite_difference_check(&[1, 2, 2, 4], 4, |x| causal_softmax(x, 1.3))?;
        finite_difference_check(&[1, 2, 4, 5], 5, |x| {
            windowed_causal_softmax(x, 0.9, Some(2))
        })
    }
}

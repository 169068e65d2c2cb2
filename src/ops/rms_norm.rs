//! RMSNorm, `y = x / sqrt(mean(x²) + eps) · w`, with its backward.
//!
//! candle-nn's fused `rms_norm` has no backward (gradients silently vanish through it), and the
//! unfused composition puts a frozen `w` into the autograd graph, where candle would compute a
//! gradient for it anyway. Here a frozen `w` is held by the op; a trainable one is an operand.

use super::cpu::{dispatch_float, slice, storage, tensor_vec, Float};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Normalises each row of `x` in place into `out`, scaled by `w`.
pub(crate) fn forward_kernel<T: Float>(x: &[T], w: &[T], eps: f64, out: &mut Vec<T>) {
    let d = w.len();
    let eps = T::from(eps).expect("eps fits");
    let n = T::from(d).expect("d fits");
    out.resize(x.len(), T::zero());
    // Rows are independent: spread them over the threads.
    out.par_chunks_mut(d)
        .zip(x.par_chunks(d))
        .for_each(|(orow, row)| {
            let ms = dot2(row, row) / n;
            let r = (ms + eps).sqrt().recip();
            for ((o, &v), &wi) in orow.iter_mut().zip(row).zip(w) {
                *o = v * r * wi;
            }
        });
}

/// `Σ aᵢ·bᵢ`, as [`dot3`].
fn dot2<T: Float>(a: &[T], b: &[T]) -> T {
    let mut acc = [T::zero(); 8];
    let n = a.len() / 8 * 8;
    for (a, b) in a[..n].chunks_exact(8).zip(b[..n].chunks_exact(8)) {
        for k in 0..8 {
            acc[k] += a[k] * b[k];
        }
    }
    let tail: T = (n..a.len()).map(|i| a[i] * b[i]).sum();
    acc.iter().copied().sum::<T>() + tail
}

/// `Σ aᵢ·bᵢ·cᵢ` in eight interleaved partial sums: a single running sum is a chain of dependent
/// additions that cannot use the vector units (it was most of the forward's time).
fn dot3<T: Float>(a: &[T], b: &[T], c: &[T]) -> T {
    let mut acc = [T::zero(); 8];
    let n = a.len() / 8 * 8;
    for ((a, b), c) in a[..n]
        .chunks_exact(8)
        .zip(b[..n].chunks_exact(8))
        .zip(c[..n].chunks_exact(8))
    {
        for k in 0..8 {
            acc[k] += a[k] * b[k] * c[k];
        }
    }
    let tail: T = (n..a.len()).map(|i| a[i] * b[i] * c[i]).sum();
    acc.iter().copied().sum::<T>() + tail
}

/// Input gradient: with `g = w·dy` and `r = 1/rms(x)`, `dx = r·g − x·r³·mean(x·g)`.
pub(crate) fn input_grad_kernel<T: Float>(x: &[T], dy: &[T], w: &[T], eps: f64) -> Vec<T> {
    let d = w.len();
    let eps = T::from(eps).expect("eps fits");
    let n = T::from(d).expect("d fits");
    let mut dx = vec![T::zero(); x.len()];
    dx.par_chunks_mut(d)
        .zip(x.par_chunks(d).zip(dy.par_chunks(d)))
        .for_each(|(dxr, (row, drow))| {
            let ms = dot2(row, row) / n;
            let r = (ms + eps).sqrt().recip();
            let dot = dot3(row, drow, w) / n;
            let c = r * r * r * dot;
            for (((o, &v), &g), &wi) in dxr.iter_mut().zip(row).zip(drow).zip(w) {
                *o = r * g * wi - v * c;
            }
        });
    dx
}

/// Weight gradient: `dw = Σ_rows dy · x · r`.
fn weight_grad_kernel<T: Float>(x: &[T], dy: &[T], d: usize, eps: f64) -> Vec<T> {
    let eps = T::from(eps).expect("eps fits");
    let n = T::from(d).expect("d fits");
    let mut dw = vec![T::zero(); d];
    for (row, drow) in x.chunks_exact(d).zip(dy.chunks_exact(d)) {
        let ms = row.iter().map(|&v| v * v).sum::<T>() / n;
        let r = (ms + eps).sqrt().recip();
        for ((acc, &v), &g) in dw.iter_mut().zip(row).zip(drow) {
            *acc += g * v * r;
        }
    }
    dw
}

/// RMSNorm with a frozen weight held by the op.
struct RmsNormFrozen {
    weight: Tensor,
    eps: f64,
}

impl CustomOp1 for RmsNormFrozen {
    fn name(&self) -> &'static str {
        "rms-norm-frozen"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        dispatch_float!(s, self.name(), T => {
            let w = tensor_vec::<T>(&self.weight)?;
            let mut out = Vec::new();
            forward_kernel(slice::<T>(s, l)?, &w, self.eps, &mut out);
            Ok((storage(out), l.shape().clone()))
        })
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let dy = dy.contiguous()?;
        let op = RmsNormInputGrad {
            weight: self.weight.clone(),
            eps: self.eps,
        };
        Ok(Some(x.apply_op2_no_bwd(&dy, &op)?))
    }
}

/// RMSNorm whose weight is a trainable operand.
struct RmsNormTrainable {
    eps: f64,
}

impl CustomOp2 for RmsNormTrainable {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        dispatch_float!(s1, self.name(), T => {
            let mut out = Vec::new();
            forward_kernel(slice::<T>(s1, l1)?, slice::<T>(s2, l2)?, self.eps, &mut out);
            Ok((storage(out), l1.shape().clone()))
        })
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        let dx = x.apply_op2_no_bwd(
            &dy,
            &RmsNormInputGrad {
                weight: w.detach(),
                eps: self.eps,
            },
        )?;
        let dw = x.apply_op2_no_bwd(&dy, &RmsNormWeightGrad { eps: self.eps })?;
        Ok((Some(dx), Some(dw)))
    }
}

/// Backward kernel op `(x, dy) → dx`.
struct RmsNormInputGrad {
    weight: Tensor,
    eps: f64,
}

impl CustomOp2 for RmsNormInputGrad {
    fn name(&self) -> &'static str {
        "rms-norm-input-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        dispatch_float!(s1, self.name(), T => {
            let w = tensor_vec::<T>(&self.weight)?;
            let dx = input_grad_kernel(slice::<T>(s1, l1)?, slice::<T>(s2, l2)?, &w, self.eps);
            Ok((storage(dx), l1.shape().clone()))
        })
    }
}

/// Backward kernel op `(x, dy) → dw`.
struct RmsNormWeightGrad {
    eps: f64,
}

impl CustomOp2 for RmsNormWeightGrad {
    fn name(&self) -> &'static str {
        "rms-norm-weight-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = *l1.dims().last().unwrap_or(&1);
        dispatch_float!(s1, self.name(), T => {
            let dw = weight_grad_kernel(slice::<T>(s1, l1)?, slice::<T>(s2, l2)?, d, self.eps);
            Ok((storage(dw), Shape::from(d)))
        })
    }
}

/// The same function as candle tensor ops (used off the CPU, and as the tests' reference).
pub fn rms_norm_reference(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(candle_core::D::Minus1)?;
    x.broadcast_div(&(ms + eps)?.sqrt()?)?.broadcast_mul(w)
}

/// RMSNorm over the last dimension of `x`. `trainable` says whether `w` should receive a
/// gradient; a frozen `w` never enters the autograd graph.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64, trainable: bool) -> Result<Tensor> {
    if !x.device().is_cpu() {
        let w = if trainable { w.clone() } else { w.detach() };
        return rms_norm_reference(x, &w, eps);
    }
    let x = x.contiguous()?;
    if trainable {
        x.apply_op2(&w.contiguous()?, RmsNormTrainable { eps })
    } else {
        x.apply_op1(RmsNormFrozen {
            weight: w.clone(),
            eps,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{assert_close, check_gradients, rand_tensor};
    use candle_core::{DType, Var};

    #[test]
    fn forward_matches_reference() -> Result<()> {
        let x = rand_tensor(&[2, 3, 8], DType::F32, 1)?;
        let w = rand_tensor(&[8], DType::F32, 2)?;
        for trainable in [false, true] {
            assert_close(
                &rms_norm(&x, &w, 1e-5, trainable)?,
                &rms_norm_reference(&x, &w, 1e-5)?,
                1e-5,
            )?;
        }
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        let x = rand_tensor(&[2, 3, 8], DType::F64, 3)?;
        let w = rand_tensor(&[8], DType::F64, 4)?;
        check_gradients(&[x.clone(), w.clone()], |t| {
            rms_norm(&t[0], &t[1], 1e-5, true)
        })?;
        check_gradients(&[x], |t| rms_norm(&t[0], &w, 1e-5, false))
    }

    #[test]
    fn frozen_weight_gets_no_gradient() -> Result<()> {
        let x = Var::from_tensor(&rand_tensor(&[4, 8], DType::F32, 5)?)?;
        let w = rand_tensor(&[8], DType::F32, 6)?;
        let grads = rms_norm(&x, &w, 1e-5, false)?.sum_all()?.backward()?;
        assert!(grads.get(&w).is_none());
        assert!(grads.get(&x).is_some());
        Ok(())
    }
}

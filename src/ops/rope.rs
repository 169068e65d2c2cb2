//! Rotary position embedding in Hugging Face's rotate-half layout, with its backward.
//!
//! candle-nn's `rotary_emb::rope*` kernels have no backward. As a composition of candle ops the
//! cos/sin tables would enter the autograd graph and get (useless) gradients. Rotation is
//! orthogonal, so the backward is the same kernel rotating by −θ.

use super::cpu::{dispatch_float, slice, storage, tensor_vec, Float};
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, WithDType, D};
use rayon::prelude::*;

/// Rotates `x` of layout `[batch, seq, heads, head_dim]` by the angles whose cos/sin are given per
/// position (`[seq, head_dim/2]`). `sign = -1` rotates backwards (the gradient).
pub(crate) fn kernel<T: Float>(x: &[T], dims: &[usize], cos: &[T], sin: &[T], sign: T) -> Vec<T> {
    let (seq, heads, hd) = (dims[1], dims[2], dims[3]);
    let half = hd / 2;
    let mut out = vec![T::zero(); x.len()];
    // One work item per (batch, position): all heads of one token, rotated by that position's
    // angles.
    out.par_chunks_mut(heads * hd)
        .zip(x.par_chunks(heads * hd))
        .enumerate()
        .for_each(|(bt, (ob, xb))| {
            let t = bt % seq;
            let c = &cos[t * half..(t + 1) * half];
            let s = &sin[t * half..(t + 1) * half];
            for (xh, oh) in xb.chunks_exact(hd).zip(ob.chunks_exact_mut(hd)) {
                let (x1, x2) = xh.split_at(half);
                let (o1, o2) = oh.split_at_mut(half);
                for i in 0..half {
                    let si = sign * s[i];
                    o1[i] = x1[i] * c[i] - x2[i] * si;
                    o2[i] = x2[i] * c[i] + x1[i] * si;
                }
            }
        });
    out
}

/// The op: holds the (constant) tables and the direction.
struct Rope {
    cos: Tensor,
    sin: Tensor,
    backward: bool,
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "rope"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        dispatch_float!(s, self.name(), T => {
            let cos = tensor_vec::<T>(&self.cos)?;
            let sin = tensor_vec::<T>(&self.sin)?;
            let sign = <T as WithDType>::from_f64(if self.backward { -1.0 } else { 1.0 });
            let out = kernel(slice::<T>(s, l)?, l.dims(), &cos, &sin, sign);
            Ok((storage(out), l.shape().clone()))
        })
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let op = Rope {
            cos: self.cos.clone(),
            sin: self.sin.clone(),
            backward: !self.backward,
        };
        Ok(Some(dy.contiguous()?.apply_op1(op)?))
    }
}

/// The same function as candle ops, on `[batch, seq, heads, head_dim]` (off the CPU, and as the
/// tests' reference).
pub fn rope_reference(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (_, seq, _, hd) = x.dims4()?;
    let cos = Tensor::cat(&[cos, cos], D::Minus1)?.reshape((1, seq, 1, hd))?;
    let sin = Tensor::cat(&[sin, sin], D::Minus1)?.reshape((1, seq, 1, hd))?;
    let x1 = x.narrow(D::Minus1, 0, hd / 2)?;
    let x2 = x.narrow(D::Minus1, hd / 2, hd / 2)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    x.broadcast_mul(&cos.detach())? + rotated.broadcast_mul(&sin.detach())?
}

/// Applies RoPE to `x` (`[batch, seq, heads, head_dim]`) with per-position tables `cos`, `sin`
/// (`[seq, head_dim/2]`, angles `pos · θ_i`).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (_, seq, _, hd) = x.dims4()?;
    if cos.dims() != [seq, hd / 2] || sin.dims() != [seq, hd / 2] || !hd.is_multiple_of(2) {
        candle_core::bail!(
            "rope: tables {:?}/{:?} do not fit input {:?}",
            cos.dims(),
            sin.dims(),
            x.dims()
        );
    }
    if !x.device().is_cpu() {
        return rope_reference(x, cos, sin);
    }
    x.contiguous()?.apply_op1(Rope {
        cos: cos.clone(),
        sin: sin.clone(),
        backward: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{assert_close, finite_difference_check, rand_tensor};
    use candle_core::DType;

    fn tables(seq: usize, half: usize, dtype: DType) -> Result<(Tensor, Tensor)> {
        let angles = rand_tensor(&[seq, half], DType::F64, 9)?.affine(3.0, 0.0)?;
        Ok((
            angles.cos()?.to_dtype(dtype)?,
            angles.sin()?.to_dtype(dtype)?,
        ))
    }

    #[test]
    fn forward_matches_reference() -> Result<()> {
        let x = rand_tensor(&[2, 3, 2, 8], DType::F32, 1)?;
        let (c, s) = tables(3, 4, DType::F32)?;
        assert_close(&rope(&x, &c, &s)?, &rope_reference(&x, &c, &s)?, 1e-6)
    }

    #[test]
    fn gradient_matches_finite_differences() -> Result<()> {
        let (c, s) = tables(3, 4, DType::F64)?;
        finite_difference_check(&[2, 3, 2, 8], 2, |x| rope(x, &c, &s))
    }
}

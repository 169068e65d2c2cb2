//! `x · scale + shift` with a frozen `scale` and/or `shift` repeating over the leading dims of `x`
//! (LayerNorm's affine part, biases, learned positions, ALiBi). Held inside the op they never
//! enter the autograd graph: as operands of candle's broadcast ops, candle's backward would
//! compute (and store) their gradients behind every trainable layer.

use super::cpu::{dispatch_float, slice, storage, tensor_vec};
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

/// The op: each run of `period` elements of the input is scaled and shifted elementwise.
struct FrozenAffine {
    scale: Option<Tensor>,
    shift: Option<Tensor>,
}

impl CustomOp1 for FrozenAffine {
    fn name(&self) -> &'static str {
        "frozen-affine"
    }

    fn cpu_fwd(&self, st: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        dispatch_float!(st, self.name(), T => {
            let x = slice::<T>(st, l)?;
            let scale = self.scale.as_ref().map(tensor_vec::<T>).transpose()?;
            let shift = self.shift.as_ref().map(tensor_vec::<T>).transpose()?;
            let period = scale.as_ref().or(shift.as_ref()).map_or(1, Vec::len).max(1);
            let mut out = Vec::with_capacity(x.len());
            for row in x.chunks(period) {
                for (i, &v) in row.iter().enumerate() {
                    let v = scale.as_ref().map_or(v, |s| v * s[i]);
                    out.push(shift.as_ref().map_or(v, |b| v + b[i]));
                }
            }
            Ok((storage(out), l.shape().clone()))
        })
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(match &self.scale {
            Some(s) => dy.broadcast_mul(s)?,
            None => dy.clone(),
        }))
    }
}

/// `x · scale + shift` over the trailing dims of `x`, which `scale` and `shift` (either may be
/// absent) must have as their shape; differentiable in `x` only.
pub fn frozen_affine(x: &Tensor, scale: Option<&Tensor>, shift: Option<&Tensor>) -> Result<Tensor> {
    for t in scale.iter().chain(shift.iter()) {
        let (xd, td) = (x.dims(), t.dims());
        if td.len() > xd.len() || xd[xd.len() - td.len()..] != *td {
            candle_core::bail!("frozen_affine: {td:?} is not the trailing shape of {xd:?}");
        }
    }
    if let (Some(s), Some(b)) = (scale, shift) {
        if s.dims() != b.dims() {
            candle_core::bail!(
                "frozen_affine: scale {:?} but shift {:?}",
                s.dims(),
                b.dims()
            );
        }
    }
    if !x.device().is_cpu() {
        return frozen_affine_reference(x, scale, shift);
    }
    x.contiguous()?.apply_op1(FrozenAffine {
        scale: scale.cloned(),
        shift: shift.cloned(),
    })
}

/// The same function as candle ops (off the CPU, and as the tests' reference).
pub fn frozen_affine_reference(
    x: &Tensor,
    scale: Option<&Tensor>,
    shift: Option<&Tensor>,
) -> Result<Tensor> {
    let mut y = x.clone();
    if let Some(s) = scale {
        y = y.broadcast_mul(&s.detach())?;
    }
    if let Some(b) = shift {
        y = y.broadcast_add(&b.detach())?;
    }
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{assert_close, finite_difference_check, rand_tensor};
    use candle_core::{DType, Var};

    #[test]
    fn forward_matches_reference() -> Result<()> {
        let x = rand_tensor(&[2, 3, 4], DType::F32, 1)?;
        let s = rand_tensor(&[4], DType::F32, 2)?;
        let b = rand_tensor(&[3, 4], DType::F32, 3)?;
        assert_close(
            &frozen_affine(&x, Some(&s), None)?,
            &frozen_affine_reference(&x, Some(&s), None)?,
            0.0,
        )?;
        assert_close(
            &frozen_affine(&x, None, Some(&b))?,
            &frozen_affine_reference(&x, None, Some(&b))?,
            0.0,
        )?;
        let b = rand_tensor(&[4], DType::F32, 4)?;
        assert_close(
            &frozen_affine(&x, Some(&s), Some(&b))?,
            &frozen_affine_reference(&x, Some(&s), Some(&b))?,
            0.0,
        )?;
        assert!(frozen_affine(&x, Some(&rand_tensor(&[3], DType::F32, 5)?), None).is_err());
        Ok(())
    }

    #[test]
    fn gradient_matches_finite_differences_and_params_get_none() -> Result<()> {
        let s = rand_tensor(&[4], DType::F64, 2)?;
        let b = rand_tensor(&[4], DType::F64, 3)?;
        finite_difference_check(&[2, 3, 4], 4, |x| frozen_affine(x, Some(&s), Some(&b)))?;
        let x = Var::from_tensor(&rand_tensor(&[3, 4], DType::F64, 6)?)?;
        let g = frozen_affine(&x, Some(&s), Some(&b))?
            .sqr()?
            .sum_all()?
            .backward()?;
        assert!(g.get(&x).is_some() && g.get(&s).is_none() && g.get(&b).is_none());
        Ok(())
    }
}

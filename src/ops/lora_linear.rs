//! A frozen linear map and its LoRA update in one op, the base product on the bf16 kernel:
//! `y = x · Wᵀ + s · (drop(x) · Aᵀ) · Bᵀ`, differentiable in `x`, `A` and `B`.
//!
//! As separate candle ops, the LoRA branch is five graph nodes (dropout, two products, scale,
//! add) whose backward allocates zeroed gradient buffers and adds them into the input's
//! gradient, for products of rank 8. Here the input gradient is written once
//! (`dy · W + s · ((dy · B) · A) ⊙ mask`), the dropout mask is redrawn from its seed instead of
//! kept, and `drop(x) · Aᵀ` is recomputed rather than stored.

use super::cpu::{slice, with_f32, MatRef};
use super::frozen_linear_bf16::Bf16Weight;
use super::gemm_bf16;
use super::low_rank::Branch;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use std::sync::Arc;

/// The op over `(x, A, B)`; the frozen base and the LoRA constants are held.
struct LoraLinear {
    base: Arc<Bf16Weight>,
    scale: f32,
    /// Dropout probability and the mask's seed (training only).
    dropout: Option<(f64, u64)>,
}

impl CustomOp3 for LoraLinear {
    fn name(&self) -> &'static str {
        "lora-linear-bf16"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        as_: &CpuStorage,
        al: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (r, in_f) = al.shape().dims2()?;
        let (out_f, r2) = bl.shape().dims2()?;
        let dims = xl.shape().dims();
        if dims.last() != Some(&in_f) || r != r2 || self.base.forward_rhs().dims() != (in_f, out_f)
        {
            candle_core::bail!(
                "lora_linear: input {dims:?}, A [{r}, {in_f}], B [{out_f}, {r2}], base {:?}",
                self.base
            );
        }
        let (x, a, b) = (
            slice::<f32>(xs, xl)?,
            slice::<f32>(as_, al)?,
            slice::<f32>(bs, bl)?,
        );
        let m = x.len() / in_f.max(1);
        let mut y = gemm_bf16::matmul_new(&MatRef::row_major(x, m, in_f), self.base.forward_rhs());
        Branch::new(a, b, r, self.scale, self.dropout).forward(x, &mut y);
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().expect("checked non-empty") = out_f;
        Ok((CpuStorage::F32(y), Shape::from(out_dims)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (r, in_f) = a.dims2()?;
        let (out_f, _) = b.dims2()?;
        let m = x.elem_count() / in_f.max(1);
        let a_vals = a.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let b_vals = b.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let (dx, da, db) = with_f32(x, |x| {
            with_f32(grad, |dy| {
                // The base: dx = dy · W on the tiles; the branch adds its part and gives dA, dB.
                let dy_mat = MatRef::row_major(dy, m, out_f);
                let mut dx = gemm_bf16::matmul_new(&dy_mat, self.base.backward_rhs()?);
                let branch = Branch::new(&a_vals, &b_vals, r, self.scale, self.dropout);
                let (da, db) = branch.backward(x, dy, &mut dx);
                Ok((dx, da, db))
            })
        })?;
        let dev = x.device();
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), dev)?),
            Some(Tensor::from_vec(da, (r, in_f), dev)?),
            Some(Tensor::from_vec(db, (out_f, r), dev)?),
        ))
    }
}

/// `x · Wᵀ + scale · (drop(x) · Aᵀ) · Bᵀ` with the frozen `W` packed in bf16 (its product on the
/// bf16 kernel; the rank-`r` products in f32). `dropout` is `(p, seed)` in training. `x`, `A`
/// (`[r, in]`) and `B` (`[out, r]`) are f32 on the CPU.
pub fn lora_linear_bf16(
    x: &Tensor,
    base: &Arc<Bf16Weight>,
    a: &Tensor,
    b: &Tensor,
    scale: f64,
    dropout: Option<(f64, u64)>,
) -> Result<Tensor> {
    for t in [x, a, b] {
        if t.dtype() != DType::F32 {
            candle_core::bail!("lora_linear_bf16: needs f32 operands, got {:?}", t.dtype());
        }
    }
    // `contiguous` is a cheap clone when `x` already is.
    let x = x.contiguous()?;
    let op = LoraLinear {
        base: base.clone(),
        scale: scale as f32,
        dropout,
    };
    x.apply_op3(&a.contiguous()?, &b.contiguous()?, op)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{max_abs_diff, rand_tensor};
    use candle_core::Var;

    #[test]
    fn output_and_gradients_match_the_composition() -> Result<()> {
        if !gemm_bf16::available() {
            eprintln!("skipped: no bf16 kernel on this CPU");
            return Ok(());
        }
        let w = rand_tensor(&[48, 64], DType::F32, 1)?.to_dtype(DType::BF16)?;
        let base = Arc::new(Bf16Weight::pack(&w, false)?.expect("a bf16 kernel"));
        for dropout in [None, Some((0.3, 11))] {
            let x = Var::from_tensor(&rand_tensor(&[2, 37, 64], DType::F32, 2)?)?;
            let a = Var::from_tensor(&rand_tensor(&[8, 64], DType::F32, 3)?)?;
            let b = Var::from_tensor(&rand_tensor(&[48, 8], DType::F32, 4)?)?;
            let fused = lora_linear_bf16(&x, &base, &a, &b, 4.0, dropout)?;
            // The composition: the frozen bf16 op plus the branch as plain candle ops.
            let xd = match dropout {
                Some((p, seed)) => crate::ops::dropout::dropout(&x, p, seed)?,
                None => x.as_tensor().clone(),
            };
            let branch = (xd.broadcast_matmul(&a.t()?)?.broadcast_matmul(&b.t()?)? * 4.0)?;
            let plain = (super::super::frozen_linear_bf16(&x, &base)? + branch)?;
            assert!(max_abs_diff(&fused, &plain)? < 1e-4, "forward");
            let g = rand_tensor(&[2, 37, 48], DType::F32, 5)?;
            let gf = (&fused * &g)?.sum_all()?.backward()?;
            let gp = (&plain * &g)?.sum_all()?.backward()?;
            for (name, v) in [("x", &x), ("A", &a), ("B", &b)] {
                let diff = max_abs_diff(gf.get(v).expect("grad"), gp.get(v).expect("grad"))?;
                assert!(
                    diff < 1e-4,
                    "{name} gradient differs by {diff} ({dropout:?})"
                );
            }
        }
        Ok(())
    }
}

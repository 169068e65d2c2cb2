//! `silu(gate) · up`, the LLaMA MLP's gating, in one op with its backward.
//!
//! As candle ops this is a unary SiLU (single-threaded, scalar `exp`), a multiply, and a backward
//! of five more element-wise ops over `[tokens × intermediate]` tensors per layer. Fused, the
//! forward is one multi-threaded pass with the vectorised `exp`, and the backward one pass that
//! writes both input gradients.

use super::cpu::{dispatch_float, slice, storage, Float};
use super::exp::exp_in_place;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Elements per parallel work item (a few pages of each operand).
const BLOCK: usize = 4096;

/// `σ(g)` for a block of `g`, via the vectorised `exp`.
fn sigmoid_into<T: Float>(g: &[T], s: &mut [T]) {
    for (s, &g) in s.iter_mut().zip(g) {
        *s = -g;
    }
    exp_in_place(s);
    for s in s.iter_mut() {
        *s = T::one() / (T::one() + *s);
    }
}

pub(crate) fn forward_kernel<T: Float>(g: &[T], u: &[T]) -> Vec<T> {
    let mut out = vec![T::zero(); g.len()];
    out.par_chunks_mut(BLOCK)
        .zip(g.par_chunks(BLOCK).zip(u.par_chunks(BLOCK)))
        .for_each(|(o, (g, u))| {
            sigmoid_into(g, o);
            for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                *o = *o * g * u;
            }
        });
    out
}

/// Both input gradients, stacked: `[dgate; dup]` (`2 × n`).
pub(crate) fn backward_kernel<T: Float>(g: &[T], u: &[T], dy: &[T]) -> Vec<T> {
    let n = g.len();
    let mut out = vec![T::zero(); 2 * n];
    let (dg, du) = out.split_at_mut(n);
    dg.par_chunks_mut(BLOCK)
        .zip(du.par_chunks_mut(BLOCK))
        .zip(g.par_chunks(BLOCK).zip(u.par_chunks(BLOCK)))
        .zip(dy.par_chunks(BLOCK))
        .for_each(|(((dg, du), (g, u)), dy)| {
            sigmoid_into(g, dg);
            for i in 0..dg.len() {
                let s = dg[i];
                let silu = g[i] * s;
                // d silu / dg = σ(g) · (1 + g · (1 − σ(g))).
                dg[i] = dy[i] * u[i] * s * (T::one() + g[i] * (T::one() - s));
                du[i] = dy[i] * silu;
            }
        });
    out
}

/// The forward op.
struct SiluMul;

impl CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "silu-mul"
    }

    fn cpu_fwd(
        &self,
        g: &CpuStorage,
        gl: &Layout,
        u: &CpuStorage,
        ul: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        dispatch_float!(g, self.name(), T => {
            let out = forward_kernel(slice::<T>(g, gl)?, slice::<T>(u, ul)?);
            Ok((storage(out), gl.shape().clone()))
        })
    }

    fn bwd(
        &self,
        g: &Tensor,
        u: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let both = g.apply_op3_no_bwd(u, &dy.contiguous()?, &SiluMulGrad)?;
        Ok((Some(both.get(0)?), Some(both.get(1)?)))
    }
}

/// The backward op: `(gate, up, dy) → [dgate; dup]`.
struct SiluMulGrad;

impl CustomOp3 for SiluMulGrad {
    fn name(&self) -> &'static str {
        "silu-mul-grad"
    }

    fn cpu_fwd(
        &self,
        g: &CpuStorage,
        gl: &Layout,
        u: &CpuStorage,
        ul: &Layout,
        dy: &CpuStorage,
        dyl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        dispatch_float!(g, self.name(), T => {
            let out = backward_kernel(slice::<T>(g, gl)?, slice::<T>(u, ul)?, slice::<T>(dy, dyl)?);
            let mut dims = vec![2];
            dims.extend_from_slice(gl.dims());
            Ok((storage(out), Shape::from(dims)))
        })
    }
}

/// The same function as candle ops (off the CPU, and as the tests' reference).
pub fn silu_mul_reference(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.silu()? * up
}

/// `silu(gate) · up` for two tensors of the same shape.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if gate.dims() != up.dims() {
        candle_core::bail!(
            "silu_mul: gate {:?} and up {:?} differ in shape",
            gate.dims(),
            up.dims()
        );
    }
    if !gate.device().is_cpu()
        || !matches!(
            gate.dtype(),
            candle_core::DType::F32 | candle_core::DType::F64
        )
    {
        return silu_mul_reference(gate, up);
    }
    gate.contiguous()?.apply_op2(&up.contiguous()?, SiluMul)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{assert_close, check_gradients, rand_tensor};
    use candle_core::{DType, Var};

    #[test]
    fn forward_and_gradients_match_the_candle_composition() -> Result<()> {
        // More elements than one parallel block, and a ragged last block.
        let shape = [3, 5000];
        let g = Var::from_tensor(&rand_tensor(&shape, DType::F32, 1)?.affine(6.0, 0.0)?)?;
        let u = Var::from_tensor(&rand_tensor(&shape, DType::F32, 2)?)?;
        let r = rand_tensor(&shape, DType::F32, 3)?;
        let fused = silu_mul(&g, &u)?;
        let plain = silu_mul_reference(&g, &u)?;
        assert_close(&fused, &plain, 1e-6)?;
        let gf = (fused * &r)?.sum_all()?.backward()?;
        let gp = (plain * &r)?.sum_all()?.backward()?;
        for v in [&g, &u] {
            assert_close(gf.get(v).unwrap(), gp.get(v).unwrap(), 1e-6)?;
        }
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        let g = rand_tensor(&[4, 6], DType::F64, 5)?.affine(4.0, 0.0)?;
        let u = rand_tensor(&[4, 6], DType::F64, 6)?;
        check_gradients(&[g, u], |ts| silu_mul(&ts[0], &ts[1]))
    }
}

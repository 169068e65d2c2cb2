//! [`frozen_linear`](super::frozen_linear) on the bf16 kernel: the frozen weight is held in bf16,
//! packed once for the forward (`x · Wᵀ`) and once for the backward (`dy · W`), and the
//! activations are rounded to bf16 as they enter each product (sums stay f32).
//!
//! The two packings cost as much memory as the f32 weight (two bytes each): one layout cannot
//! serve both products, because the tiles need pairs of consecutive `k` side by side and `k`
//! runs along a row of `W` in the forward but down a column in the backward.

use super::cpu::{slice, with_f32, MatRef};
use super::gemm_bf16::{self, PackedRhs};
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use std::sync::{Arc, OnceLock};

/// A frozen `[out, in]` weight packed for the bf16 kernel. It keeps the tensor it was packed from
/// (sharing its storage, no copy): to tell a stale packing (the weight replaced since) from a
/// current one, and to pack the backward's layout on first use, so inference never pays for it.
pub struct Bf16Weight {
    source: Tensor,
    /// The source is stored `[in, out]` (GPT-2's `Conv1D`).
    transposed: bool,
    out_features: usize,
    in_features: usize,
    /// `Wᵀ` (`k = in`, `n = out`), for the forward.
    forward: PackedRhs,
    /// `W` (`k = out`, `n = in`), for the input gradient; packed on first use.
    backward: OnceLock<PackedRhs>,
}

impl std::fmt::Debug for Bf16Weight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Bf16Weight[{}×{}, {} bytes]",
            self.out_features,
            self.in_features,
            self.bytes()
        )
    }
}

/// Packs an `[out, in]` view for the forward (`Wᵀ`, `k = in`) or the backward (`W`, `k = out`).
/// A bf16 source is widened for the duration of the packing (exact, one matrix at a time); an
/// f32 row-major one is read in place.
fn pack_view(w: &Tensor, forward: bool) -> Result<PackedRhs> {
    let (out_f, in_f) = w.dims2()?;
    with_f32(&w.to_dtype(DType::F32)?, |data| {
        // Row-major W[o][i] at o·in + i: rows of Wᵀ step by 1, its columns by `in`.
        Ok(if forward {
            PackedRhs::pack(data, in_f, out_f, 1, in_f)
        } else {
            PackedRhs::pack(data, out_f, in_f, in_f, 1)
        })
    })
}

impl Bf16Weight {
    /// Packs `stored`, a frozen f32 or bf16 weight held `[out, in]` (or `[in, out]` when
    /// `transposed`). `None` when the CPU has no bf16 arithmetic or `stored` is not a CPU matrix:
    /// callers then keep the f32 path.
    pub fn pack(stored: &Tensor, transposed: bool) -> Result<Option<Self>> {
        let float = matches!(stored.dtype(), DType::F32 | DType::BF16);
        if !gemm_bf16::available() || !float || !stored.device().is_cpu() || stored.rank() != 2 {
            return Ok(None);
        }
        let w = if transposed {
            stored.t()?
        } else {
            stored.clone()
        };
        let (out_f, in_f) = w.dims2()?;
        let forward = pack_view(&w, true)?;
        Ok(Some(Bf16Weight {
            source: stored.clone(),
            transposed,
            out_features: out_f,
            in_features: in_f,
            forward,
            backward: OnceLock::new(),
        }))
    }

    /// Whether this packing was made from `w` (and is therefore current).
    pub fn packs(&self, w: &Tensor) -> bool {
        self.source.id() == w.id()
    }

    /// The packing of `Wᵀ`, for products `x · Wᵀ`.
    pub(crate) fn forward_rhs(&self) -> &PackedRhs {
        &self.forward
    }

    /// The packing of `W`, for products `dy · W` (packed now if it was not yet).
    pub(crate) fn backward_rhs(&self) -> Result<&PackedRhs> {
        if let Some(p) = self.backward.get() {
            return Ok(p);
        }
        let w = if self.transposed {
            self.source.t()?
        } else {
            self.source.clone()
        };
        let packed = pack_view(&w, false)?;
        Ok(self.backward.get_or_init(|| packed))
    }

    /// Bytes held by the packings made so far (not counting the source tensor).
    pub fn bytes(&self) -> usize {
        self.forward.bytes() + self.backward.get().map_or(0, PackedRhs::bytes)
    }
}

/// The op: `x · Wᵀ`, or (`transposed`) `x · W`, which is also the former's backward.
struct Bf16Linear {
    weight: Arc<Bf16Weight>,
    transposed: bool,
}

impl Bf16Linear {
    fn packed(&self) -> Result<&PackedRhs> {
        if self.transposed {
            self.weight.backward_rhs()
        } else {
            Ok(self.weight.forward_rhs())
        }
    }
}

impl CustomOp1 for Bf16Linear {
    fn name(&self) -> &'static str {
        "frozen-linear-bf16"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let packed = self.packed()?;
        let (k, n) = packed.dims();
        let dims = layout.shape().dims();
        if dims.last() != Some(&k) {
            candle_core::bail!(
                "frozen_linear_bf16: input has shape {:?}, weight expects {k} features",
                dims
            );
        }
        let x = slice::<f32>(storage, layout)?;
        let m = x.len() / k.max(1);
        let out = gemm_bf16::matmul_new(&MatRef::row_major(x, m, k), packed);
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().expect("checked non-empty") = n;
        Ok((CpuStorage::F32(out), Shape::from(out_dims)))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let op = Bf16Linear {
            weight: self.weight.clone(),
            transposed: !self.transposed,
        };
        grad_res.contiguous()?.apply_op1(op).map(Some)
    }
}

/// `x · Wᵀ` for a frozen `W` packed in bf16: differentiable in `x` only. `x` must be f32 on
/// the CPU, any number of leading dimensions.
pub fn frozen_linear_bf16(x: &Tensor, w: &Arc<Bf16Weight>) -> Result<Tensor> {
    if x.dtype() != DType::F32 {
        candle_core::bail!("frozen_linear_bf16: input is {:?}, not f32", x.dtype());
    }
    // `contiguous` is a cheap clone when `x` already is.
    let x = x.contiguous()?;
    x.apply_op1(Bf16Linear {
        weight: w.clone(),
        transposed: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::rand_tensor;
    use candle_core::Var;

    /// Rounds a tensor's values to bf16 (and back to f32).
    fn bf16_values(t: &Tensor) -> Result<Tensor> {
        t.to_dtype(DType::BF16)?.to_dtype(DType::F32)
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
    }

    #[test]
    fn forward_and_input_gradient_match_the_f32_op_on_rounded_operands() -> Result<()> {
        if !gemm_bf16::available() {
            eprintln!("skipped: no bf16 kernel on this CPU");
            return Ok(());
        }
        let x = rand_tensor(&[3, 37, 64], DType::F32, 1)?;
        let w = rand_tensor(&[96, 64], DType::F32, 2)?;
        let packed = Arc::new(Bf16Weight::pack(&w, false)?.expect("a bf16 kernel is available"));
        assert!(packed.packs(&w));
        let xv = Var::from_tensor(&x)?;
        let y = frozen_linear_bf16(&xv, &packed)?;
        // The same products in f32 on the bf16-rounded operands: equal up to summation order.
        let wr = bf16_values(&w)?;
        let want = super::super::frozen_linear(&bf16_values(&x)?, &wr)?;
        assert!(max_abs_diff(&y, &want)? < 1e-4);
        // The upstream gradient is rounded too as it enters the backward product.
        let g = rand_tensor(&[3, 37, 96], DType::F32, 3)?;
        let grads = (y * &g)?.sum_all()?.backward()?;
        let dx = grads.get(&xv).expect("x has a gradient");
        let want_dx = bf16_values(&g)?.broadcast_matmul(&wr)?;
        assert!(max_abs_diff(dx, &want_dx)? < 1e-4);
        Ok(())
    }

    #[test]
    fn close_to_f32_within_bf16_rounding() -> Result<()> {
        if !gemm_bf16::available() {
            return Ok(());
        }
        let x = rand_tensor(&[64, 576], DType::F32, 4)?;
        let w = rand_tensor(&[192, 576], DType::F32, 5)?;
        let packed = Arc::new(Bf16Weight::pack(&w, false)?.expect("a bf16 kernel is available"));
        let y = frozen_linear_bf16(&x, &packed)?;
        let want = super::super::frozen_linear(&x, &w)?;
        // Relative error of a k-term dot product of bf16-rounded operands: about 2⁻⁸/√k·√k.
        let scale = want.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        assert!(max_abs_diff(&y, &want)? < 1e-2 * scale);
        Ok(())
    }

    #[test]
    fn transposed_view_packs_like_its_copy() -> Result<()> {
        if !gemm_bf16::available() {
            return Ok(());
        }
        let w_in_out = rand_tensor(&[48, 80], DType::F32, 6)?;
        let view = Arc::new(Bf16Weight::pack(&w_in_out, true)?.expect("a bf16 kernel"));
        let copy = Arc::new(
            Bf16Weight::pack(&w_in_out.t()?.contiguous()?, false)?.expect("a bf16 kernel"),
        );
        let x = rand_tensor(&[5, 48], DType::F32, 7)?;
        let a = frozen_linear_bf16(&x, &view)?;
        let b = frozen_linear_bf16(&x, &copy)?;
        assert_eq!(max_abs_diff(&a, &b)?, 0.0);
        Ok(())
    }
}

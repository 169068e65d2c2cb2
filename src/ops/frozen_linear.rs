//! `y = x · Wᵀ` for a frozen `W`: the backward pass returns only the input gradient.
//!
//! candle's matmul backward always computes (and stores) the gradient of both operands. For a
//! frozen weight that is a full extra matmul per layer per step and a weight-sized buffer per
//! linear map, for a gradient nobody reads. Holding `W` inside the op (instead of passing it as
//! an operand) keeps it out of the autograd graph entirely.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Storage, Tensor};

/// The op: multiplies its single operand by the held weight's transpose.
struct FrozenLinear {
    /// `[out, in]`, as stored by PyTorch's `nn.Linear`.
    weight: Tensor,
}

/// `x · wᵀ` on any backend's storage, `w` being `[out, in]`: the input viewed as `[m, k]`, the
/// weight's storage viewed transposed as `[k, n]` without a copy. `op` names the caller in
/// errors.
pub(super) fn times_transposed<S: BackendStorage>(
    x: &S,
    x_layout: &Layout,
    w: &S,
    w_layout: &Layout,
    op: &str,
) -> Result<(S, Shape)> {
    let (out_f, in_f) = w_layout.shape().dims2()?;
    let dims = x_layout.shape().dims();
    let k = *dims.last().unwrap_or(&0);
    if k != in_f {
        candle_core::bail!(
            "{op}: input has {k} features, weight expects {in_f} (weight {:?})",
            w_layout.shape()
        );
    }
    let m = x_layout.shape().elem_count() / k.max(1);
    let mut out_dims = dims.to_vec();
    *out_dims.last_mut().expect("checked non-empty") = out_f;
    let x_layout = flatten_to_2d(x_layout, m, k)?;
    let w_t = w_layout.transpose(0, 1)?;
    Ok((
        x.matmul(w, (1, m, out_f, k), &x_layout, &w_t)?,
        Shape::from(out_dims),
    ))
}

/// The 2-D `[m, k]` view of a layout whose leading dims can be merged without a copy.
fn flatten_to_2d(layout: &Layout, m: usize, k: usize) -> Result<Layout> {
    match layout.contiguous_offsets() {
        Some((start, _)) => Ok(Layout::contiguous_with_offset((m, k), start)),
        None if layout.dims().len() == 2 => Ok(layout.clone()),
        None => candle_core::bail!("input must be contiguous"),
    }
}

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (w_storage, w_layout) = self.weight.storage_and_layout();
        match &*w_storage {
            Storage::Cpu(w) => times_transposed(storage, layout, w, w_layout, self.name()),
            _ => candle_core::bail!("frozen_linear: weight and input on different devices"),
        }
    }

    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (w_storage, w_layout) = self.weight.storage_and_layout();
        match &*w_storage {
            Storage::Cuda(w) => times_transposed(storage, layout, w, w_layout, self.name()),
            _ => candle_core::bail!("frozen_linear: weight and input on different devices"),
        }
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        // dL/dx = dL/dy · W; no dL/dW.
        let grad = grad_res.contiguous()?;
        let (out_f, in_f) = self.weight.dims2()?;
        let m = grad.elem_count() / out_f.max(1);
        let mut dims = grad.dims().to_vec();
        *dims.last_mut().expect("non-empty") = in_f;
        grad.reshape((m, out_f))?
            .matmul(&self.weight)?
            .reshape(dims)
            .map(Some)
    }
}

/// `x · wᵀ` where `w` (`[out, in]`) is frozen: differentiable in `x` only, and `w` never enters
/// the autograd graph. `x` may have any number of leading dimensions.
pub fn frozen_linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let x = if x.is_contiguous() {
        x.clone()
    } else {
        x.contiguous()?
    };
    // A transposed view of a contiguous matrix (GPT-2's `[in, out]` weights) is read as is:
    // the matmul takes either stride order, so no copy per call.
    let w = if w.is_contiguous() || (w.rank() == 2 && w.t()?.is_contiguous()) {
        w.clone()
    } else {
        w.contiguous()?
    };
    if x.dtype() != w.dtype() {
        candle_core::bail!(
            "frozen_linear: input is {:?} but weight is {:?}",
            x.dtype(),
            w.dtype()
        );
    }
    x.apply_op1(FrozenLinear { weight: w })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{assert_close, finite_difference_check, rand_tensor};
    use candle_core::{DType, Device, Var};

    #[test]
    fn forward_matches_matmul() -> Result<()> {
        let x = rand_tensor(&[2, 3, 5], DType::F32, 1)?;
        let w = rand_tensor(&[4, 5], DType::F32, 2)?;
        let y = frozen_linear(&x, &w)?;
        let want = x.broadcast_matmul(&w.t()?)?;
        assert_close(&y, &want, 1e-6)
    }

    #[test]
    fn transposed_weight_view_matches_matmul() -> Result<()> {
        let x = rand_tensor(&[2, 3, 5], DType::F32, 1)?;
        let w_in_out = rand_tensor(&[5, 4], DType::F32, 2)?;
        let y = frozen_linear(&x, &w_in_out.t()?)?;
        assert_close(&y, &x.broadcast_matmul(&w_in_out)?, 1e-6)?;
        let w = w_in_out.to_dtype(DType::F64)?;
        finite_difference_check(&[2, 3, 5], 4, |x| frozen_linear(x, &w.t()?))
    }

    #[test]
    fn gradient_matches_finite_differences() -> Result<()> {
        let w = rand_tensor(&[4, 5], DType::F64, 3)?;
        finite_difference_check(&[2, 3, 5], 4, |x| frozen_linear(x, &w))
    }

    #[test]
    fn input_gradient_equals_plain_matmul_and_weight_gets_none() -> Result<()> {
        let x = Var::from_tensor(&rand_tensor(&[3, 5], DType::F32, 5)?)?;
        let w = rand_tensor(&[4, 5], DType::F32, 6)?;
        let w_var = Var::from_tensor(&w)?;
        let g_frozen = frozen_linear(&x, &w)?.sqr()?.sum_all()?.backward()?;
        let g_plain = x.matmul(&w_var.t()?)?.sqr()?.sum_all()?.backward()?;
        assert_close(
            g_frozen.get(&x).expect("x grad"),
            g_plain.get(&x).expect("x grad"),
            1e-5,
        )?;
        assert!(g_frozen.get(&w).is_none());
        assert!(g_plain.get(&w_var).is_some());
        let _ = Device::Cpu;
        Ok(())
    }
}

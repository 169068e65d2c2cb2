//! `y = x · Wᵀ` for a frozen `W` kept in its GGUF block format (k-quants, Q8_0, …), as QLoRA
//! keeps frozen weights: the backward pass returns only the input gradient.
//!
//! The op holds the quantized tensor and dequantizes it into a temporary f32 matrix for each
//! product (forward, and again for the input gradient), so a frozen layer costs its quantized
//! bytes between steps instead of 4 bytes per weight, and the results equal the f32 path on the
//! dequantized weights exactly (the same matmul on the same values). Dequantizing a matrix costs
//! O(out·in) against the product's O(m·out·in): under 1 % at the 512-token batches training
//! runs. Nothing weight-sized stays alive in the autograd graph, because only the op (with its
//! quantized tensor) is kept for the backward pass.

use super::frozen_linear::times_transposed;
use candle_core::quantized::QTensor;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Storage, Tensor};
use std::sync::Arc;

/// The op: multiplies its single operand by the held quantized weight's transpose.
struct FrozenLinearQuantized {
    /// `[out, in]`, blocks along `in` (as llama.cpp stores a linear map).
    weight: Arc<QTensor>,
}

impl FrozenLinearQuantized {
    fn dims(&self) -> Result<(usize, usize)> {
        self.weight.shape().dims2()
    }

    /// The weight as a temporary f32 matrix on `x`'s device.
    fn dequantized(&self, device: &candle_core::Device) -> Result<Tensor> {
        let w = self.weight.dequantize(device)?;
        if w.dtype() == DType::F32 {
            Ok(w)
        } else {
            w.to_dtype(DType::F32)
        }
    }
}

impl CustomOp1 for FrozenLinearQuantized {
    fn name(&self) -> &'static str {
        "frozen-linear-quantized"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let w = self.dequantized(&candle_core::Device::Cpu)?;
        let (w_storage, w_layout) = w.storage_and_layout();
        match &*w_storage {
            Storage::Cpu(w) => {
                times_transposed(storage, layout, w, w_layout, "frozen_linear_quantized")
            }
            _ => {
                candle_core::bail!("frozen_linear_quantized: weight and input on different devices")
            }
        }
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        // dL/dx = dL/dy · W, from a fresh dequantized copy dropped right after.
        let w = self.dequantized(arg.device())?;
        let grad = grad_res.contiguous()?;
        let (out_f, in_f) = self.dims()?;
        let m = grad.elem_count() / out_f.max(1);
        let mut dims = grad.dims().to_vec();
        *dims.last_mut().expect("non-empty") = in_f;
        grad.reshape((m, out_f))?
            .matmul(&w)?
            .reshape(dims)
            .map(Some)
    }
}

/// `x · wᵀ` where `w` (`[out, in]`) is frozen and quantized: differentiable in `x` only; the
/// products are f32 on the dequantized values. `x` (f32) may have any number of leading
/// dimensions.
pub fn frozen_linear_quantized(x: &Tensor, w: &Arc<QTensor>) -> Result<Tensor> {
    if x.dtype() != DType::F32 {
        candle_core::bail!("frozen_linear_quantized: input is {:?}, not f32", x.dtype());
    }
    if w.shape().rank() != 2 {
        candle_core::bail!(
            "frozen_linear_quantized: weight has shape {:?}, not [out, in]",
            w.shape()
        );
    }
    let x = if x.is_contiguous() {
        x.clone()
    } else {
        x.contiguous()?
    };
    x.apply_op1(FrozenLinearQuantized { weight: w.clone() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::frozen_linear;
    use crate::ops::testing::{max_abs_diff, rand_tensor};
    use candle_core::quantized::GgmlDType;
    use candle_core::{Device, Var};

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        max_abs_diff(a, b).unwrap()
    }

    /// Forward and input gradient equal the f32 op on the dequantized weight bit for bit, for
    /// the block formats Gemma 3's GGUF uses (and Q4_1, SmolLM2's).
    #[test]
    fn equals_the_f32_path_on_the_dequantized_weight() -> Result<()> {
        for dtype in [
            GgmlDType::Q8_0,
            GgmlDType::Q5_0,
            GgmlDType::Q4_1,
            GgmlDType::Q4K,
            GgmlDType::Q6K,
        ] {
            let w = rand_tensor(&[24, 256], DType::F32, 7)?;
            let q = Arc::new(QTensor::quantize(&w, dtype)?);
            let deq = q.dequantize(&Device::Cpu)?;
            assert!(max_diff(&deq, &w) > 0.0, "{dtype:?} is lossy");
            let x = Var::from_tensor(&rand_tensor(&[2, 3, 256], DType::F32, 8)?)?;
            let y = frozen_linear_quantized(&x, &q)?;
            let want = frozen_linear(&x, &deq)?;
            assert_eq!(max_diff(&y, &want), 0.0, "{dtype:?} forward");
            let g = y.sqr()?.sum_all()?.backward()?;
            let g_want = want.sqr()?.sum_all()?.backward()?;
            let (a, b) = (g.get(&x).expect("x grad"), g_want.get(&x).expect("x grad"));
            assert_eq!(max_diff(a, b), 0.0, "{dtype:?} input gradient");
        }
        Ok(())
    }

    #[test]
    fn wrong_inputs_are_errors() -> Result<()> {
        let q = Arc::new(QTensor::quantize(
            &rand_tensor(&[4, 32], DType::F32, 1)?,
            GgmlDType::Q8_0,
        )?);
        let x = rand_tensor(&[2, 16], DType::F32, 2)?;
        let e = frozen_linear_quantized(&x, &q).unwrap_err().to_string();
        assert!(e.contains("16 features"), "{e}");
        let x = rand_tensor(&[2, 32], DType::F64, 2)?;
        assert!(frozen_linear_quantized(&x, &q).is_err());
        Ok(())
    }
}

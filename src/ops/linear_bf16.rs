//! `y = x · Wᵀ` for a *trained* `W` with the products in bf16: mixed precision as
//! PyTorch's autocast does it. The weight, its gradient and the optimizer state stay f32; only
//! the operands of the three products (forward, input gradient, weight gradient) are rounded to
//! bf16 as they enter the tiles, and the sums are f32.
//!
//! The weight changes every step, so it is packed per call (a pass over the weight, small next
//! to the product over 512 tokens); so are the activations and gradients.

use super::cpu::{slice, with_f32};
use super::gemm_bf16::{self, PackedRhs, Strided};
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Storage, Tensor};

/// The op over `(x, W)`, `x` `[.., in]`, `W` viewed `[out, in]` (any strides).
struct LinearBf16;

/// `W`'s element `(o, i)` position in its storage: `start + o·rs + i·cs`.
fn weight_view<'a>(w: &'a [f32], layout: &Layout) -> Result<Strided<'a>> {
    let (out_f, in_f) = layout.shape().dims2()?;
    let stride = layout.stride();
    Ok(Strided {
        data: &w[layout.start_offset()..],
        rows: out_f,
        cols: in_f,
        rs: stride[0],
        cs: stride[1],
    })
}

impl CustomOp2 for LinearBf16 {
    fn name(&self) -> &'static str {
        "linear-bf16"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let w = weight_view(ws.as_slice::<f32>()?, wl)?;
        let dims = xl.shape().dims();
        if dims.last() != Some(&w.cols) {
            candle_core::bail!(
                "linear_bf16: input {:?}, weight [{}, {}]",
                dims,
                w.rows,
                w.cols
            );
        }
        let x = slice::<f32>(xs, xl)?;
        let m = x.len() / w.cols.max(1);
        // Wᵀ: rows (k = in) step by cs, columns (n = out) by rs.
        let wt = PackedRhs::pack(w.data, w.cols, w.rows, w.cs, w.rs);
        let out = gemm_bf16::matmul_new(&Strided::row_major(x, m, w.cols), &wt);
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().expect("checked non-empty") = w.rows;
        Ok((CpuStorage::F32(out), Shape::from(out_dims)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (out_f, in_f) = w.dims2()?;
        let m = x.elem_count() / in_f.max(1);
        // dx = dy · W: W as a `k = out`, `n = in` right operand.
        let w_packed = {
            let (storage, layout) = w.storage_and_layout();
            let Storage::Cpu(cpu) = &*storage else {
                candle_core::bail!("linear_bf16: weight is not on the CPU");
            };
            let wv = weight_view(cpu.as_slice::<f32>()?, layout)?;
            PackedRhs::pack(wv.data, out_f, in_f, wv.rs, wv.cs)
        };
        // dW = dyᵀ · x: x as a `k = m`, `n = in` right operand, dyᵀ read through strides.
        let x_packed = with_f32(x, |x| Ok(PackedRhs::pack(x, m, in_f, in_f, 1)))?;
        let (dx, dw) = with_f32(grad, |g| {
            let dx = gemm_bf16::matmul_new(&Strided::row_major(g, m, out_f), &w_packed);
            let dyt = Strided {
                data: g,
                rows: out_f,
                cols: m,
                rs: 1,
                cs: out_f,
            };
            let dw = gemm_bf16::matmul_new(&dyt, &x_packed);
            Ok((dx, dw))
        })?;
        let dev = x.device();
        let dx = Tensor::from_vec(dx, x.shape(), dev)?;
        let dw = Tensor::from_vec(dw, (out_f, in_f), dev)?;
        Ok((Some(dx), Some(dw)))
    }
}

/// `x · Wᵀ` with `W` (`[out, in]`, any strides) trained: products in bf16, values
/// and gradients in f32. Callers check [`gemm_bf16::available`] first; `x` and `W` are f32 on the
/// CPU.
pub fn linear_bf16(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if x.dtype() != DType::F32 || w.dtype() != DType::F32 {
        candle_core::bail!(
            "linear_bf16: needs f32 operands, got {:?} and {:?}",
            x.dtype(),
            w.dtype()
        );
    }
    // `contiguous` is a cheap clone when `x` already is.
    let x = x.contiguous()?;
    x.apply_op2(w, LinearBf16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{max_abs_diff, rand_tensor};
    use candle_core::Var;

    fn rounded(t: &Tensor) -> Result<Tensor> {
        t.to_dtype(DType::BF16)?.to_dtype(DType::F32)
    }

    #[test]
    fn products_and_both_gradients_match_f32_on_rounded_operands() -> Result<()> {
        if !gemm_bf16::available() {
            eprintln!("skipped: no bf16 kernel on this CPU");
            return Ok(());
        }
        for transposed in [false, true] {
            let x = Var::from_tensor(&rand_tensor(&[2, 45, 64], DType::F32, 1)?)?;
            let stored = if transposed {
                Var::from_tensor(&rand_tensor(&[64, 80], DType::F32, 2)?)?
            } else {
                Var::from_tensor(&rand_tensor(&[80, 64], DType::F32, 2)?)?
            };
            let w = if transposed {
                stored.as_tensor().t()?
            } else {
                stored.as_tensor().clone()
            };
            let y = linear_bf16(&x, &w)?;
            let want = rounded(&x)?.broadcast_matmul(&rounded(&w)?.t()?)?;
            assert!(max_abs_diff(&y, &want)? < 1e-4, "forward");
            let g = rand_tensor(&[2, 45, 80], DType::F32, 3)?;
            let grads = (&y * &g)?.sum_all()?.backward()?;
            let gr = rounded(&g)?;
            let want_dx = gr.broadcast_matmul(&rounded(&w)?)?;
            let dx = grads.get(&x).expect("x gradient");
            assert!(max_abs_diff(dx, &want_dx)? < 1e-4, "input gradient");
            let want_dw = gr
                .reshape((90, 80))?
                .t()?
                .matmul(&rounded(&x)?.reshape((90, 64))?)?;
            let want_dw = if transposed { want_dw.t()? } else { want_dw };
            let dw = grads.get(&stored).expect("weight gradient");
            assert_eq!(dw.dims(), stored.dims());
            assert!(max_abs_diff(dw, &want_dw)? < 1e-4, "weight gradient");
        }
        Ok(())
    }
}

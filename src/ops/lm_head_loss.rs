//! LM head + cross-entropy in one op that never holds the `[tokens × vocab]` logits or their
//! gradient: rows are processed in chunks, each chunk's logits turned into its loss and, during
//! training, straight into the gradient of the hidden states (and of the head when trained).
//!
//! The loss weights (and their normaliser) are known up front, so the gradients are computed in
//! the forward pass while the chunk's logits are at hand; the backward only scales them by the
//! incoming scalar gradient. Memory is one chunk of logits instead of several full copies
//! (logits, log-softmax, their gradients), and there is no extra pass over the vocabulary.

use super::cpu::{as_f32, as_f32_mut, dispatch_float, matmul_into, slice, storage, Float, MatRef};
use super::exp::exp_in_place;
use super::frozen_linear_bf16::Bf16Weight;
use super::gemm_bf16::{self, PackedRhs};
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

/// Rows per chunk: 128 × 49,152 logits of f32 is 25 MB.
const CHUNK: usize = 128;

/// Per-row negative log-likelihoods (and, with `grad`, the gradients of `Σ wᵢ·nllᵢ`).
struct Pass<T> {
    nll: Vec<T>,
    dh: Vec<T>,
    dw: Vec<T>,
}

/// Where the head's products run.
#[derive(Clone, Copy, Debug, Default)]
pub enum HeadProducts<'a> {
    /// In f32.
    #[default]
    F32,
    /// On the bf16 kernel, with a frozen head's packings (made once).
    Packed(&'a Arc<Bf16Weight>),
    /// On the bf16 kernel, a trained head packed on every call (it changes every step); its
    /// gradient is summed in f32.
    PackPerCall,
}

/// A head's bf16 packings, for its products on the bf16 kernel.
#[derive(Clone, Copy)]
struct HeadTiles<'a> {
    /// `Wᵀ`, for the logits.
    forward: &'a PackedRhs,
    /// `W`, for the hidden states' gradient (when one is computed).
    backward: Option<&'a PackedRhs>,
}

/// Runs the chunked head over `h` (`n × d`) with head `w` (`v × d`); with `amx` (f32 only) its
/// products run on the bf16 kernel.
fn run<T: Float>(
    h: &[T],
    w: &[T],
    d: usize,
    targets: &[u32],
    weights: Option<&[f64]>,
    head_grad: bool,
    amx: Option<HeadTiles>,
) -> Pass<T> {
    let amx = amx.filter(|_| T::DTYPE == candle_core::DType::F32);
    let n = targets.len();
    let v = w.len() / d;
    let mut nll = vec![T::zero(); n];
    let mut dh = if weights.is_some() {
        vec![T::zero(); n * d]
    } else {
        Vec::new()
    };
    let mut dw = if weights.is_some() && head_grad {
        vec![T::zero(); v * d]
    } else {
        Vec::new()
    };
    let mut logits = vec![T::zero(); CHUNK.min(n) * v];
    let wt = MatRef::row_major(w, v, d).t();
    for start in (0..n).step_by(CHUNK) {
        let rows = CHUNK.min(n - start);
        let hc = MatRef::row_major(&h[start * d..(start + rows) * d], rows, d);
        let lc = &mut logits[..rows * v];
        match amx {
            Some(tiles) => gemm_bf16::matmul(
                as_f32(hc.data).expect("f32"),
                rows,
                tiles.forward,
                as_f32_mut(lc).expect("f32"),
            ),
            None => matmul_into(lc, hc, wt, false),
        }
        // Rows are independent: spread them over the threads.
        lc.par_chunks_mut(v)
            .zip(nll[start..start + rows].par_iter_mut())
            .enumerate()
            .for_each(|(r, (row, nll))| {
                let wi = weights.map(|w| w[start + r]);
                *nll = <T as WithDType>::from_f64(row_loss(row, targets[start + r] as usize, wi));
            });
        if weights.is_some() {
            let dl = MatRef::row_major(&lc[..], rows, v);
            let dh_rows = &mut dh[start * d..(start + rows) * d];
            match amx.and_then(|tiles| tiles.backward) {
                Some(packed) => gemm_bf16::matmul(
                    as_f32(lc).expect("f32"),
                    rows,
                    packed,
                    as_f32_mut(dh_rows).expect("f32"),
                ),
                None => matmul_into(dh_rows, dl, MatRef::row_major(w, v, d), false),
            }
            if head_grad {
                match amx {
                    // dW += dlᵀ · h, `dlᵀ` read through strides.
                    Some(_) => {
                        let hc = as_f32(hc.data).expect("f32");
                        gemm_bf16::matmul_add(
                            &MatRef::row_major(as_f32(lc).expect("f32"), rows, v).t(),
                            &PackedRhs::pack(hc, rows, d, d, 1),
                            as_f32_mut(&mut dw).expect("f32"),
                        )
                    }
                    None => matmul_into(&mut dw, dl.t(), hc, true),
                }
            }
        }
    }
    Pass { nll, dh, dw }
}

/// The negative log-likelihood of `target` under one row of logits; with a weight `wi`, the row
/// is replaced by the gradient of `wi · nll` with respect to it, `wi · (softmax − onehot)`.
fn row_loss<T: Float>(row: &mut [T], target: usize, wi: Option<f64>) -> f64 {
    let max = max_of(row);
    let target_logit = row[target].to_f64();
    for x in row.iter_mut() {
        *x -= max;
    }
    // One pass of exponentials serves both the normaliser and the softmax of the gradient.
    exp_in_place(row);
    let sum = sum_f64(row);
    let lse = max.to_f64() + sum.ln();
    if let Some(wi) = wi {
        let scale = <T as WithDType>::from_f64(wi / sum);
        for x in row.iter_mut() {
            *x *= scale;
        }
        row[target] -= <T as WithDType>::from_f64(wi);
    }
    lse - target_logit
}

/// The largest element (lane-wise accumulators, so the loop vectorises).
fn max_of<T: Float>(xs: &[T]) -> T {
    let mut acc = [T::neg_infinity(); 16];
    let chunks = xs.chunks_exact(16);
    let tail = chunks
        .remainder()
        .iter()
        .fold(T::neg_infinity(), |a, &b| num_traits::Float::max(a, b));
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a = if x > *a { x } else { *a };
        }
    }
    acc.iter().fold(tail, |a, &b| num_traits::Float::max(a, b))
}

/// The sum of `xs` accumulated in f64: 49,152 f32 terms in sequence would cost ~1e-4 nats of
/// accuracy, visible against PyTorch's cross-entropy. Eight independent accumulators let the
/// loop vectorise.
fn sum_f64<T: Float>(xs: &[T]) -> f64 {
    let mut acc = [0f64; 8];
    let chunks = xs.chunks_exact(8);
    let tail: f64 = chunks
        .remainder()
        .iter()
        .map(|&x| WithDType::to_f64(x))
        .sum();
    for c in chunks {
        for (a, x) in acc.iter_mut().zip(c) {
            *a += WithDType::to_f64(*x);
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// The op: `Σᵢ wᵢ · nllᵢ` of hidden states `h` (`[n, d]`) under head `w` (`[v, d]`).
struct LmHeadLoss {
    targets: Vec<u32>,
    weights: Vec<f64>,
    head_grad: bool,
    need_grad: bool,
    /// The frozen head packed in bf16, when its products run on the bf16 kernel.
    bf16: Option<Arc<Bf16Weight>>,
    /// The (trained) head is packed per call for the bf16 kernel.
    pack_per_call: bool,
    grads: Mutex<Option<(Tensor, Option<Tensor>)>>,
}

impl CustomOp2 for LmHeadLoss {
    fn name(&self) -> &'static str {
        "lm-head-loss"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, d) = l1.shape().dims2()?;
        let (_, d2) = l2.shape().dims2()?;
        if d != d2 || n != self.targets.len() {
            candle_core::bail!(
                "lm_head_loss: hidden {:?}, head {:?}, {} targets",
                l1.dims(),
                l2.dims(),
                self.targets.len()
            );
        }
        dispatch_float!(s1, self.name(), T => {
            let (h, w) = (slice::<T>(s1, l1)?, slice::<T>(s2, l2)?);
            let weights = self.need_grad.then_some(self.weights.as_slice());
            // A trained head changes every step: its packings are made here, used, dropped.
            let per_call = (self.pack_per_call && T::DTYPE == candle_core::DType::F32).then(|| {
                let w = as_f32(w).expect("f32");
                let (v, d) = (w.len() / d, d);
                let forward = PackedRhs::pack(w, d, v, 1, d);
                let backward = self.need_grad.then(|| PackedRhs::pack(w, v, d, d, 1));
                (forward, backward)
            });
            let tiles = match (&self.bf16, &per_call) {
                (Some(p), _) => Some(HeadTiles {
                    forward: p.forward_rhs(),
                    backward: self.need_grad.then(|| p.backward_rhs()).transpose()?,
                }),
                (None, Some((forward, backward))) => Some(HeadTiles {
                    forward,
                    backward: backward.as_ref(),
                }),
                (None, None) => None,
            };
            let pass = run(h, w, d, &self.targets, weights, self.head_grad, tiles);
            let loss: f64 = pass.nll.iter().zip(&self.weights).map(|(&l, &wt)| l.to_f64() * wt).sum();
            if self.need_grad {
                let dev = candle_core::Device::Cpu;
                let dh = Tensor::from_vec(pass.dh, (n, d), &dev)?;
                let dw = self.head_grad.then(|| Tensor::from_vec(pass.dw, l2.dims(), &dev)).transpose()?;
                *self.grads.lock().expect("not poisoned") = Some((dh, dw));
            }
            Ok((storage(vec![<T as WithDType>::from_f64(loss)]), Shape::from(())))
        })
    }

    fn bwd(
        &self,
        _h: &Tensor,
        _w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let Some((dh, dw)) = self.grads.lock().expect("not poisoned").take() else {
            candle_core::bail!("lm_head_loss: backward without gradients from the forward pass");
        };
        let g = grad.to_dtype(dh.dtype())?;
        let dh = dh.broadcast_mul(&g)?;
        let dw = dw.map(|dw| dw.broadcast_mul(&g)).transpose()?;
        Ok((Some(dh), dw))
    }
}

/// `Σᵢ weightsᵢ · (−log softmax(h·wᵀ)ᵢ[targetsᵢ])` as a scalar tensor, differentiable in `h` and,
/// when `head_trainable`, in `w`. `h` is `[n, d]`, `w` is `[v, d]`. `products` says where the
/// products run: a frozen head's current bf16 packing or per-call packing (f32 tensors, a bf16
/// kernel present) put them on the bf16 kernel; anything else runs in f32.
pub fn lm_head_loss(
    h: &Tensor,
    w: &Tensor,
    head_trainable: bool,
    targets: &[u32],
    weights: &[f64],
    products: HeadProducts,
) -> Result<Tensor> {
    if !h.device().is_cpu() {
        candle_core::bail!(
            "lm_head_loss: only the CPU kernel exists; use the unfused loss elsewhere"
        );
    }
    let op = LmHeadLoss {
        targets: targets.to_vec(),
        weights: weights.to_vec(),
        head_grad: head_trainable,
        need_grad: h.track_op() || head_trainable,
        bf16: match products {
            HeadProducts::Packed(p)
                if !head_trainable && p.packs(w) && h.dtype() == candle_core::DType::F32 =>
            {
                Some(p.clone())
            }
            _ => None,
        },
        pack_per_call: matches!(products, HeadProducts::PackPerCall)
            && h.dtype() == candle_core::DType::F32
            && w.dtype() == candle_core::DType::F32
            && super::gemm_bf16::available(),
        grads: Mutex::new(None),
    };
    let w = if head_trainable {
        w.clone()
    } else {
        w.detach()
    };
    h.contiguous()?.apply_op2(&w.contiguous()?, op)
}

/// Per-row `−log p(targetᵢ)` of hidden states `h` (`[n, d]`) under head `w`, without autograd.
pub fn lm_head_nll(h: &Tensor, w: &Tensor, targets: &[u32]) -> Result<Vec<f64>> {
    let h = h.contiguous()?;
    let w = w.contiguous()?;
    let (n, d) = h.dims2()?;
    if n != targets.len() || w.dim(1)? != d {
        candle_core::bail!(
            "lm_head_nll: hidden {:?}, head {:?}, {} targets",
            h.dims(),
            w.dims(),
            targets.len()
        );
    }
    let hv = h.flatten_all()?.to_vec1::<f32>()?;
    let wv = w.flatten_all()?.to_vec1::<f32>()?;
    Ok(run(&hv, &wv, d, targets, None, false, None)
        .nll
        .into_iter()
        .map(f64::from)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::log_softmax;
    use crate::ops::testing::{assert_close, check_gradients, rand_tensor};
    use candle_core::{DType, Device, Var};

    /// The unfused reference: logits, log-softmax, gather, weighted sum.
    fn reference(h: &Tensor, w: &Tensor, targets: &[u32], weights: &[f64]) -> Result<Tensor> {
        let logp = log_softmax(&h.matmul(&w.t()?)?)?;
        let t = Tensor::new(targets, &Device::Cpu)?.unsqueeze(1)?;
        let picked = logp.gather(&t, 1)?.squeeze(1)?;
        let wt = Tensor::new(weights, &Device::Cpu)?.to_dtype(h.dtype())?;
        (picked * wt)?.sum_all()?.neg()
    }

    fn case(n: usize) -> (Vec<u32>, Vec<f64>) {
        let targets = (0..n).map(|i| (i * 7 % 300) as u32).collect();
        let weights = (0..n)
            .map(|i| if i % 5 == 0 { 0.0 } else { 1.0 / n as f64 })
            .collect();
        (targets, weights)
    }

    #[test]
    fn loss_and_gradients_match_the_unfused_composition() -> Result<()> {
        // More rows than a chunk, so chunk boundaries are crossed.
        let n = CHUNK + 37;
        let (targets, weights) = case(n);
        let h = Var::from_tensor(&rand_tensor(&[n, 16], DType::F32, 1)?)?;
        let w = Var::from_tensor(&rand_tensor(&[300, 16], DType::F32, 2)?)?;
        let fused = lm_head_loss(&h, &w, true, &targets, &weights, HeadProducts::F32)?;
        let plain = reference(&h, &w, &targets, &weights)?;
        assert_close(&fused, &plain, 1e-5)?;
        let (gf, gp) = (fused.backward()?, plain.backward()?);
        assert_close(gf.get(&h).unwrap(), gp.get(&h).unwrap(), 1e-6)?;
        assert_close(gf.get(&w).unwrap(), gp.get(&w).unwrap(), 1e-6)?;
        let nll = lm_head_nll(&h, &w, &targets)?;
        let ones = vec![1.0; n];
        let total = reference(&h, &w, &targets, &ones)?.to_scalar::<f32>()? as f64;
        assert!((nll.iter().sum::<f64>() - total).abs() < 1e-2);
        Ok(())
    }

    #[test]
    fn bf16_head_matches_the_f32_head_on_rounded_operands() -> Result<()> {
        if !crate::ops::gemm_bf16::available() {
            eprintln!("skipped: no bf16 kernel on this CPU");
            return Ok(());
        }
        let round = |t: Tensor| t.to_dtype(DType::BF16)?.to_dtype(DType::F32);
        let n = CHUNK + 37;
        let (targets, weights) = case(n);
        let h = round(rand_tensor(&[n, 64], DType::F32, 1)?)?;
        let w = round(rand_tensor(&[300, 64], DType::F32, 2)?)?;
        let packed = Arc::new(Bf16Weight::pack(&w, false)?.expect("a bf16 kernel is available"));
        let hv = Var::from_tensor(&h)?;
        let amx = lm_head_loss(
            &hv,
            &w,
            false,
            &targets,
            &weights,
            HeadProducts::Packed(&packed),
        )?;
        let f32 = lm_head_loss(&hv, &w, false, &targets, &weights, HeadProducts::F32)?;
        // Same operands (already bf16 values): only the summation order differs...
        assert_close(&amx, &f32, 1e-5)?;
        // ...except that the gradient's softmax is rounded to bf16 entering `dl · W`.
        let (ga, gf) = (amx.backward()?, f32.backward()?);
        assert_close(ga.get(&hv).unwrap(), gf.get(&hv).unwrap(), 1e-4)?;
        // A packing of another tensor is never used.
        let other = Arc::new(Bf16Weight::pack(&(&w * 2.0)?, false)?.expect("a bf16 kernel"));
        let stale = lm_head_loss(
            &hv,
            &w,
            false,
            &targets,
            &weights,
            HeadProducts::Packed(&other),
        )?;
        assert_close(&stale, &f32, 1e-6)
    }

    #[test]
    fn trained_bf16_head_matches_the_f32_head_on_rounded_operands() -> Result<()> {
        if !crate::ops::gemm_bf16::available() {
            eprintln!("skipped: no bf16 kernel on this CPU");
            return Ok(());
        }
        let round = |t: Tensor| t.to_dtype(DType::BF16)?.to_dtype(DType::F32);
        // Several chunks, so the head's gradient is summed over them.
        let n = 2 * CHUNK + 37;
        let (targets, weights) = case(n);
        let h = Var::from_tensor(&round(rand_tensor(&[n, 64], DType::F32, 1)?)?)?;
        let w = Var::from_tensor(&round(rand_tensor(&[300, 64], DType::F32, 2)?)?)?;
        let amx = lm_head_loss(&h, &w, true, &targets, &weights, HeadProducts::PackPerCall)?;
        let f32 = lm_head_loss(&h, &w, true, &targets, &weights, HeadProducts::F32)?;
        assert_close(&amx, &f32, 1e-5)?;
        // The gradients differ by the rounding of the logits' gradient entering both products.
        let (ga, gf) = (amx.backward()?, f32.backward()?);
        assert_close(ga.get(&h).unwrap(), gf.get(&h).unwrap(), 1e-4)?;
        assert_close(ga.get(&w).unwrap(), gf.get(&w).unwrap(), 1e-4)
    }

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        let (targets, weights) = case(5);
        let targets: Vec<u32> = targets.iter().map(|t| t % 7).collect();
        let h = rand_tensor(&[5, 4], DType::F64, 3)?;
        let w = rand_tensor(&[7, 4], DType::F64, 4)?;
        check_gradients(&[h.clone(), w], |t| {
            lm_head_loss(&t[0], &t[1], true, &targets, &weights, HeadProducts::F32)
        })?;
        let w = rand_tensor(&[7, 4], DType::F64, 5)?;
        check_gradients(&[h], |t| {
            lm_head_loss(&t[0], &w, false, &targets, &weights, HeadProducts::F32)
        })
    }

    #[test]
    fn frozen_head_gets_no_gradient() -> Result<()> {
        let (targets, weights) = case(6);
        let h = Var::from_tensor(&rand_tensor(&[6, 8], DType::F32, 6)?)?;
        let w = rand_tensor(&[300, 8], DType::F32, 7)?;
        let g = lm_head_loss(&h, &w, false, &targets, &weights, HeadProducts::F32)?.backward()?;
        assert!(g.get(&w).is_none() && g.get(&h).is_some());
        Ok(())
    }
}

//! A whole frozen LLaMA decoder layer as one op on the bf16 kernel: its forward, and the gradient
//! of its input.
//!
//! Offsite-tuning trains through a frozen emulator, so most layers of a step are frozen and only
//! the gradient of their input is wanted. Built from ~20 separate ops, such a layer pays in the
//! backward for a zero-filled buffer and an addition per gradient contribution (candle's
//! gradient store: the normalised input alone receives three, from q, k and v), a freshly
//! allocated — page-faulted — tensor for every intermediate, and a rounding and packing of the
//! same input for each projection that reads it. Here the layer is one node of the graph. Its
//! forward keeps what the backward needs (q and k after RoPE, v, the attention probabilities,
//! the residual stream between the two halves, gate and up); the backward is written out with
//! the kernels the separate ops use, so both paths compute the same function; and the
//! projections of one input share one packing of it ([`gemm_bf16::matmul_shared`]).

use super::attention::{self, Dims, Scoring};
use super::cpu::{slice, tensor_vec, with_f32, MatRef};
use super::frozen_linear_bf16::Bf16Weight;
use super::gemm_bf16::{self, PackedRhs};
use super::{rms_norm, rope, silu_mul};
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

/// Positions of the projections in [`FrozenLlamaLayer::linears`]: LLaMA's module order, which
/// the model's layers keep theirs in too.
pub mod slot {
    /// `self_attn.q_proj`.
    pub const Q: usize = 0;
    /// `self_attn.k_proj`.
    pub const K: usize = 1;
    /// `self_attn.v_proj`.
    pub const V: usize = 2;
    /// `self_attn.o_proj`.
    pub const O: usize = 3;
    /// `mlp.gate_proj`.
    pub const GATE: usize = 4;
    /// `mlp.up_proj`.
    pub const UP: usize = 5;
    /// `mlp.down_proj`.
    pub const DOWN: usize = 6;
}
use slot::{DOWN, GATE, K, O, Q, UP, V};

/// The frozen weights of one LLaMA layer, as the fused op reads them.
#[derive(Clone, Debug)]
pub struct FrozenLlamaLayer {
    /// RMSNorm scales before the attention and before the MLP (`[hidden]`).
    pub norms: [Tensor; 2],
    /// The RMSNorms' epsilon.
    pub eps: f64,
    /// q, k, v, o, gate, up and down projections, packed for the bf16 kernel.
    pub linears: [Arc<Bf16Weight>; 7],
    /// Query heads, key/value heads, head size.
    pub heads: (usize, usize, usize),
    /// Attention's own products (scores, probabilities × values) on the bf16 kernel too, as
    /// `--precision bf16` runs them; with `frozen-bf16` they stay f32.
    pub bf16_attention: bool,
}

/// What the forward keeps for the backward.
struct Saved {
    /// q and k after RoPE, v: `[b, t, heads, hd]`.
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// Attention probabilities `[b, heads, t, t]`.
    probs: Vec<f32>,
    /// The residual stream after the attention half (the MLP's input).
    h: Vec<f32>,
    /// The MLP's gate and up projections.
    gate: Vec<f32>,
    up: Vec<f32>,
}

/// The op over `x` (`[b, t, hidden]`).
struct LayerOp {
    linears: [Arc<Bf16Weight>; 7],
    /// The RMSNorm scales, read out of their tensors once per call.
    norms: [Vec<f32>; 2],
    eps: f64,
    heads: (usize, usize, usize),
    bf16_attention: bool,
    /// RoPE tables, `[t, hd/2]` each.
    cos: Vec<f32>,
    sin: Vec<f32>,
    /// Whether a backward can follow (the input is part of a graph): only then is anything kept.
    keep: bool,
    saved: Mutex<Option<Saved>>,
}

/// `data` as `m` rows.
fn rows(m: usize, data: &[f32], cols: usize) -> MatRef<'_, f32> {
    MatRef::row_major(data, m, cols)
}

/// `a += b`, element by element, spread over the threads.
fn add_into(a: &mut [f32], b: &[f32]) {
    a.par_chunks_mut(4096)
        .zip(b.par_chunks(4096))
        .for_each(|(a, b)| a.iter_mut().zip(b).for_each(|(a, b)| *a += b));
}

impl LayerOp {
    fn packed(&self, i: usize) -> &PackedRhs {
        self.linears[i].forward_rhs()
    }

    fn packed_t(&self, i: usize) -> Result<&PackedRhs> {
        self.linears[i].backward_rhs()
    }

    fn dims(&self, b: usize, t: usize) -> Dims {
        let (nh, nkv, hd) = self.heads;
        Dims {
            b,
            t,
            s: t,
            nh,
            nkv,
            hd,
        }
    }

    fn scoring(&self) -> Scoring {
        Scoring {
            scale: 1.0 / (self.heads.2 as f64).sqrt(),
            window: None,
            alibi: None,
            bf16: self.bf16_attention,
        }
    }

    fn forward(&self, x: &[f32], b: usize, t: usize, hidden: usize) -> Vec<f32> {
        let m = b * t;
        let eps = self.eps;
        let d = self.dims(b, t);
        let mut normed = Vec::new();
        rms_norm::forward_kernel(x, &self.norms[0], eps, &mut normed);
        let qkv = [Q, K, V].map(|i| self.packed(i));
        let [q, k, v]: [Vec<f32>; 3] = gemm_bf16::matmul_shared(&rows(m, &normed, hidden), &qkv)
            .try_into()
            .expect("three products");
        let q = rope::kernel(&q, &[b, t, d.nh, d.hd], &self.cos, &self.sin, 1.0);
        let k = rope::kernel(&k, &[b, t, d.nkv, d.hd], &self.cos, &self.sin, 1.0);
        let (attn, probs) = attention::forward_kernel(&q, &k, &v, d, &self.scoring());
        let mut h = gemm_bf16::matmul_new(&rows(m, &attn, d.nh * d.hd), self.packed(O));
        add_into(&mut h, x);
        rms_norm::forward_kernel(&h, &self.norms[1], eps, &mut normed);
        let gu = [GATE, UP].map(|i| self.packed(i));
        let [gate, up]: [Vec<f32>; 2] = gemm_bf16::matmul_shared(&rows(m, &normed, hidden), &gu)
            .try_into()
            .expect("two products");
        let act = silu_mul::forward_kernel(&gate, &up);
        let inner = gate.len() / m.max(1);
        let mut y = gemm_bf16::matmul_new(&rows(m, &act, inner), self.packed(DOWN));
        add_into(&mut y, &h);
        if self.keep {
            let saved = Saved {
                q,
                k,
                v,
                probs,
                h,
                gate,
                up,
            };
            *self.saved.lock().expect("frozen layer lock") = Some(saved);
        }
        y
    }

    fn backward(&self, s: &Saved, x: &[f32], dy: &[f32], b: usize, t: usize) -> Result<Vec<f32>> {
        let m = b * t;
        let hidden = x.len() / m.max(1);
        let inner = s.gate.len() / m.max(1);
        let eps = self.eps;
        let d = self.dims(b, t);
        // MLP half: y = h + down(silu(gate) · up).
        let dact = gemm_bf16::matmul_new(&rows(m, dy, hidden), self.packed_t(DOWN)?);
        let both = silu_mul::backward_kernel(&s.gate, &s.up, &dact);
        let (dgate, dup) = both.split_at(m * inner);
        let mut dnormed = gemm_bf16::matmul_new(&rows(m, dgate, inner), self.packed_t(GATE)?);
        gemm_bf16::matmul_add(&rows(m, dup, inner), self.packed_t(UP)?, &mut dnormed);
        let mut dh = rms_norm::input_grad_kernel(&s.h, &dnormed, &self.norms[1], eps);
        add_into(&mut dh, dy);
        // Attention half: h = x + o(attention(rope(q), rope(k), v)).
        let dattn = gemm_bf16::matmul_new(&rows(m, &dh, d.nh * d.hd), self.packed_t(O)?);
        let [dq, dk, dv] =
            attention::backward_kernel(&s.q, &s.k, &s.v, &s.probs, &dattn, d, &self.scoring());
        let dq = rope::kernel(&dq, &[b, t, d.nh, d.hd], &self.cos, &self.sin, -1.0);
        let dk = rope::kernel(&dk, &[b, t, d.nkv, d.hd], &self.cos, &self.sin, -1.0);
        let mut dnormed = gemm_bf16::matmul_new(&rows(m, &dq, d.nh * d.hd), self.packed_t(Q)?);
        gemm_bf16::matmul_add(&rows(m, &dk, d.nkv * d.hd), self.packed_t(K)?, &mut dnormed);
        gemm_bf16::matmul_add(&rows(m, &dv, d.nkv * d.hd), self.packed_t(V)?, &mut dnormed);
        let mut dx = rms_norm::input_grad_kernel(x, &dnormed, &self.norms[0], eps);
        add_into(&mut dx, &dh);
        Ok(dx)
    }
}

impl CustomOp1 for LayerOp {
    fn name(&self) -> &'static str {
        "frozen-llama-layer"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, t, hidden) = layout.shape().dims3()?;
        let x = slice::<f32>(storage, layout)?;
        let y = self.forward(x, b, t, hidden);
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let saved = self
            .saved
            .lock()
            .expect("frozen layer lock")
            .take()
            .ok_or_else(|| candle_core::Error::Msg("frozen layer: backward run twice".into()))?;
        let (b, t, _) = x.dims3()?;
        let dx = with_f32(x, |x| with_f32(dy, |dy| self.backward(&saved, x, dy, b, t)))?;
        Tensor::from_vec(dx, x.shape(), x.device()).map(Some)
    }
}

/// The frozen LLaMA layer `layer` applied to `x` (`[b, t, hidden]`, f32 on the CPU, positions
/// from 0: no KV cache), with RoPE tables `cos`/`sin` (`[t, head_dim/2]`); differentiable in
/// `x`. The same function as the layer's separate ops with `--precision bf16` products.
pub fn frozen_llama_layer(
    x: &Tensor,
    layer: &FrozenLlamaLayer,
    cos: &Tensor,
    sin: &Tensor,
) -> Result<Tensor> {
    if x.dtype() != DType::F32 || !x.device().is_cpu() {
        candle_core::bail!("frozen_llama_layer: input must be f32 on the CPU");
    }
    let (_, t, hidden) = x.dims3()?;
    let (nh, nkv, hd) = layer.heads;
    let [q, k, v] = [Q, K, V].map(|i| layer.linears[i].forward_rhs().dims());
    if q != (hidden, nh * hd) || k != (hidden, nkv * hd) || v != k || nkv == 0 || nh % nkv != 0 {
        candle_core::bail!(
            "frozen_llama_layer: projections {q:?}, {k:?}, {v:?} do not fit hidden {hidden} and \
             heads {:?}",
            layer.heads
        );
    }
    let (rows, half) = cos.dims2()?;
    if rows != t || half * 2 != hd {
        candle_core::bail!(
            "frozen_llama_layer: RoPE table {rows} × {half} for {t} positions of {hd}"
        );
    }
    let op = LayerOp {
        norms: [tensor_vec(&layer.norms[0])?, tensor_vec(&layer.norms[1])?],
        cos: tensor_vec(cos)?,
        sin: tensor_vec(sin)?,
        linears: layer.linears.clone(),
        eps: layer.eps,
        heads: layer.heads,
        bf16_attention: layer.bf16_attention,
        keep: x.track_op(),
        saved: Mutex::new(None),
    };
    x.contiguous()?.apply_op1(op)
}

/// The same function from the separate ops (each with its own backward), as a LLaMA layer runs
/// when it cannot use the fused op: the tests' reference and the benchmark's baseline.
pub fn frozen_llama_layer_reference(
    x: &Tensor,
    layer: &FrozenLlamaLayer,
    cos: &Tensor,
    sin: &Tensor,
) -> Result<Tensor> {
    let (b, t, _) = x.dims3()?;
    let (nh, nkv, hd) = layer.heads;
    let lin = |x: &Tensor, i: usize| super::frozen_linear_bf16(x, &layer.linears[i]);
    let n1 = super::rms_norm(x, &layer.norms[0], layer.eps, false)?;
    let q = super::rope(&lin(&n1, Q)?.reshape((b, t, nh, hd))?, cos, sin)?;
    let k = super::rope(&lin(&n1, K)?.reshape((b, t, nkv, hd))?, cos, sin)?;
    let v = lin(&n1, V)?.reshape((b, t, nkv, hd))?;
    let scale = 1.0 / (hd as f64).sqrt();
    let mask = super::SoftmaxMask::default();
    let a = super::attention_with(&q, &k, &v, scale, mask, layer.bf16_attention)?;
    let h = (x + lin(&a, O)?)?;
    let n2 = super::rms_norm(&h, &layer.norms[1], layer.eps, false)?;
    let act = super::silu_mul(&lin(&n2, GATE)?, &lin(&n2, UP)?)?;
    &h + lin(&act, DOWN)?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::rand_tensor;
    use candle_core::{Device, Var};

    const THETA: f64 = 10_000.0;

    fn tables(t: usize, hd: usize) -> Result<(Tensor, Tensor)> {
        let half = hd / 2;
        let angles: Vec<f32> = (0..t * half)
            .map(|i| {
                let (p, j) = (i / half, i % half);
                p as f32 / THETA.powf(2.0 * j as f64 / hd as f64) as f32
            })
            .collect();
        let a = Tensor::from_vec(angles, (t, half), &Device::Cpu)?;
        Ok((a.cos()?, a.sin()?))
    }

    /// A small layer: hidden 64, 4 query heads sharing 2 key/value heads of 16, MLP 96.
    fn layer() -> Result<FrozenLlamaLayer> {
        let (hidden, inner, hd) = (64, 96, 16);
        let shapes = [
            (64, hidden),
            (32, hidden),
            (32, hidden),
            (hidden, 64),
            (inner, hidden),
            (inner, hidden),
            (hidden, inner),
        ];
        let mut linears = Vec::new();
        for (i, (o, n)) in shapes.into_iter().enumerate() {
            let w = (rand_tensor(&[o, n], DType::F32, 10 + i as u64)? * 0.3)?;
            linears.push(Arc::new(
                Bf16Weight::pack(&w, false)?.expect("a bf16 kernel"),
            ));
        }
        let norm = |seed| -> Result<Tensor> { rand_tensor(&[hidden], DType::F32, seed)? + 1.0 };
        Ok(FrozenLlamaLayer {
            norms: [norm(20)?, norm(21)?],
            eps: 1e-5,
            linears: linears.try_into().expect("seven"),
            heads: (4, 2, hd),
            bf16_attention: true,
        })
    }

    /// The gradient of `Σ y·g` with respect to `x`.
    fn input_grad(y: &Tensor, g: &Tensor, x: &Var) -> Result<Tensor> {
        let grads = (y * g)?.sum_all()?.backward()?;
        Ok(grads.get(x).cloned().expect("x has a gradient"))
    }

    fn max_abs(t: &Tensor) -> Result<f32> {
        t.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
    }

    #[test]
    fn matches_the_separate_ops_forward_and_backward() -> Result<()> {
        if !gemm_bf16::available() {
            eprintln!("skipped: no bf16 kernel on this CPU");
            return Ok(());
        }
        // Attention's products on tiles (`--precision bf16`) or in f32 (`frozen-bf16`).
        for bf16_attention in [true, false] {
            let l = FrozenLlamaLayer {
                bf16_attention,
                ..layer()?
            };
            let (cos, sin) = tables(19, 16)?;
            let x = Var::from_tensor(&rand_tensor(&[2, 19, 64], DType::F32, 1)?)?;
            let g = rand_tensor(&[2, 19, 64], DType::F32, 2)?;
            let fused = frozen_llama_layer(&x, &l, &cos, &sin)?;
            let want = frozen_llama_layer_reference(&x, &l, &cos, &sin)?;
            let scale = max_abs(&want)?;
            assert!(max_abs(&(&fused - &want)?)? <= 1e-5 * scale);
            let dx = input_grad(&fused, &g, &x)?;
            let want_dx = input_grad(&want, &g, &x)?;
            // Equal up to the order in which the three q/k/v (and gate/up) contributions are
            // summed.
            assert!(max_abs(&(&dx - &want_dx)?)? <= 1e-5 * max_abs(&want_dx)?);
        }
        Ok(())
    }

    #[test]
    fn input_gradient_matches_finite_differences() -> Result<()> {
        if !gemm_bf16::available() {
            return Ok(());
        }
        let l = layer()?;
        let (cos, sin) = tables(8, 16)?;
        let x = rand_tensor(&[1, 8, 64], DType::F32, 3)?;
        let g = rand_tensor(&[1, 8, 64], DType::F32, 4)?;
        let loss = |x: &Tensor| -> Result<f64> {
            let y = frozen_llama_layer(x, &l, &cos, &sin)?;
            Ok((y * &g)?.sum_all()?.to_scalar::<f32>()? as f64)
        };
        let xv = Var::from_tensor(&x)?;
        let y = frozen_llama_layer(&xv, &l, &cos, &sin)?;
        let dx = input_grad(&y, &g, &xv)?;
        // A directional derivative, along a random direction through every element at once.
        let dir = rand_tensor(&[1, 8, 64], DType::F32, 5)?;
        // A step large enough that the rounding (a fixed pattern of ~2⁻⁹ relative errors) is
        // small against the change, small enough for the curvature: 3e-3 gives -33 against
        // -128, 1e-1 -124, 3e-2 -128.2.
        let eps = 3e-2;
        let numeric = (loss(&(&x + (&dir * eps)?)?)? - loss(&(&x - (&dir * eps)?)?)?) / (2.0 * eps);
        let analytic = (dx * &dir)?.sum_all()?.to_scalar::<f32>()? as f64;
        assert!(
            (numeric - analytic).abs() <= 2e-2 * analytic.abs().max(1.0),
            "{numeric} vs {analytic}"
        );
        Ok(())
    }

    #[test]
    fn untracked_input_gives_the_tracked_output_without_a_graph() -> Result<()> {
        if !gemm_bf16::available() {
            return Ok(());
        }
        let l = layer()?;
        let (cos, sin) = tables(8, 16)?;
        let x = rand_tensor(&[1, 8, 64], DType::F32, 6)?;
        assert!(!x.track_op());
        // Inference: the output carries no graph, and the result is the same as with one.
        let y = frozen_llama_layer(&x, &l, &cos, &sin)?;
        assert!(!y.track_op());
        let tracked = frozen_llama_layer(Var::from_tensor(&x)?.as_tensor(), &l, &cos, &sin)?;
        assert_eq!(max_abs(&(y - tracked)?)?, 0.0);
        Ok(())
    }

    #[test]
    fn rejects_a_projection_of_the_wrong_size() -> Result<()> {
        if !gemm_bf16::available() {
            return Ok(());
        }
        let mut l = layer()?;
        l.heads = (8, 2, 16);
        let (cos, sin) = tables(8, 16)?;
        let x = rand_tensor(&[1, 8, 64], DType::F32, 7)?;
        let err = frozen_llama_layer(&x, &l, &cos, &sin)
            .unwrap_err()
            .to_string();
        assert!(err.contains("do not fit"), "{err}");
        Ok(())
    }
}

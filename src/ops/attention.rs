//! Causal grouped-query attention in one op, with its backward.
//!
//! As candle ops, attention is three transposed copies of q/k/v into `[b, heads, t, d]`, two
//! batched matmuls whose tiny per-head products each start gemm's thread pool, the masked
//! softmax, a copy back to `[b, t, heads·d]`, and in the backward the same again plus the
//! matmuls' gradients. Here every (batch, key/value head) is one work item on one thread: it
//! reads its heads straight out of the projections' `[b, t, heads, d]` layout (strided views,
//! no copies), and the query heads sharing a key/value head (GQA) are handled together so
//! that their key/value gradients add up without synchronisation. The probabilities are kept
//! for the backward (`[b, heads, t, s]`, as the composition keeps them too); the scores are not.

use super::cpu::{as_f32_mut, dispatch_float, matmul_serial, slice, storage, Float, MatRef};
use super::gemm_bf16;
use super::softmax::{softmax_grad_row, softmax_row, SoftmaxMask};
use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;
use std::sync::Mutex;

/// Sizes: batch, queries, keys, query heads, key/value heads, head size.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Dims {
    pub(crate) b: usize,
    pub(crate) t: usize,
    pub(crate) s: usize,
    pub(crate) nh: usize,
    pub(crate) nkv: usize,
    pub(crate) hd: usize,
}

impl Dims {
    fn group(&self) -> usize {
        self.nh / self.nkv
    }

    /// Work item `item` (batch row × key/value head): its batch row, its key/value head, and
    /// that head's keys and values as `s × hd` views.
    fn kv_item<'a, T>(
        &self,
        k: &'a [T],
        v: &'a [T],
        item: usize,
    ) -> (usize, usize, MatRef<'a, T>, MatRef<'a, T>) {
        let (bi, kvh) = (item / self.nkv, item % self.nkv);
        let head = |x: &'a [T]| Dims::head(x, bi, kvh, self.s, self.nkv, self.hd);
        (bi, kvh, head(k), head(v))
    }

    /// Head `h` of batch row `bi` of a `[b, len, heads, hd]` tensor, as a `len × hd` view.
    fn head<'a, T>(
        data: &'a [T],
        bi: usize,
        h: usize,
        len: usize,
        heads: usize,
        hd: usize,
    ) -> MatRef<'a, T> {
        MatRef {
            data: &data[(bi * len * heads + h) * hd..],
            rows: len,
            cols: hd,
            rs: heads * hd,
            cs: 1,
        }
    }

    /// Writes a `len × hd` block into head `h` of batch row `bi` of a `[b, len, heads, hd]`
    /// buffer.
    fn scatter<T: Copy>(
        dst: &mut [T],
        block: &[T],
        bi: usize,
        h: usize,
        len: usize,
        heads: usize,
        hd: usize,
    ) {
        for (i, row) in block.chunks_exact(hd).enumerate() {
            let at = ((bi * len + i) * heads + h) * hd;
            dst[at..at + hd].copy_from_slice(row);
        }
    }
}

/// One product of a work item, `c = a · b` (or `c += a · b`): in `T`, or with `bf16` (f32
/// data, a bf16 kernel present) on the bf16 kernel with the operands rounded to bf16.
fn product<T: Float>(c: &mut [T], a: MatRef<T>, b: MatRef<T>, accumulate: bool, bf16: bool) {
    if bf16 {
        if let (Some(a32), Some(b32), Some(c32)) = (a.as_f32(), b.as_f32(), as_f32_mut(c)) {
            return gemm_bf16::matmul_serial(&a32, &b32, &mut c32[..a.rows * b.cols], accumulate);
        }
    }
    matmul_serial(c, a, b, accumulate)
}

/// The masking and scaling of the scores.
#[derive(Clone, Debug)]
pub(crate) struct Scoring {
    pub(crate) scale: f64,
    pub(crate) window: Option<usize>,
    pub(crate) alibi: Option<Vec<f64>>,
    /// The four products (two forward, four backward) on the bf16 kernel in bf16.
    pub(crate) bf16: bool,
}

/// Output `[b, t, nh·hd]` and probabilities `[b, nh, t, s]`.
pub(crate) fn forward_kernel<T: Float>(
    q: &[T],
    k: &[T],
    v: &[T],
    d: Dims,
    sc: &Scoring,
) -> (Vec<T>, Vec<T>) {
    let bf16 = sc.bf16;
    let Dims {
        b,
        t,
        s,
        nh,
        nkv,
        hd,
    } = d;
    let group = d.group();
    let scale = T::from_f64(sc.scale);
    let mut probs = vec![T::zero(); b * nh * t * s];
    // One work item per (batch, key/value head): the probabilities of its `group` query heads
    // are contiguous in `[b, nh, t, s]`.
    let blocks: Vec<Vec<T>> = probs
        .par_chunks_mut(group * t * s)
        .enumerate()
        .map(|(item, p)| {
            let (bi, kvh, kh, vh) = d.kv_item(k, v, item);
            let mut scores = vec![T::zero(); t * s];
            let mut out = vec![T::zero(); group * t * hd];
            for g in 0..group {
                let h = kvh * group + g;
                let p = &mut p[g * t * s..(g + 1) * t * s];
                product(
                    &mut scores,
                    Dims::head(q, bi, h, t, nh, hd),
                    kh.t(),
                    false,
                    bf16,
                );
                let slope = sc.alibi.as_ref().map_or(0.0, |a| a[h]);
                for (i, (row, orow)) in scores
                    .chunks_exact(s)
                    .zip(p.chunks_exact_mut(s))
                    .enumerate()
                {
                    softmax_row(row, orow, (t, s, i), scale, sc.window, slope);
                }
                let o = &mut out[g * t * hd..(g + 1) * t * hd];
                product(o, MatRef::row_major(p, t, s), vh, false, bf16);
            }
            out
        })
        .collect();
    let mut out = vec![T::zero(); b * t * nh * hd];
    for (item, block) in blocks.iter().enumerate() {
        let (bi, kvh) = (item / nkv, item % nkv);
        for (g, head) in block.chunks_exact(t * hd).enumerate() {
            Dims::scatter(&mut out, head, bi, kvh * group + g, t, nh, hd);
        }
    }
    (out, probs)
}

/// Gradients of q, k, v from the output gradient `dout` (`[b, t, nh·hd]`).
pub(crate) fn backward_kernel<T: Float>(
    q: &[T],
    k: &[T],
    v: &[T],
    probs: &[T],
    dout: &[T],
    d: Dims,
    sc: &Scoring,
) -> [Vec<T>; 3] {
    let bf16 = sc.bf16;
    let Dims {
        b,
        t,
        s,
        nh,
        nkv,
        hd,
    } = d;
    let group = d.group();
    let scale = T::from_f64(sc.scale);
    let blocks: Vec<[Vec<T>; 3]> = (0..b * nkv)
        .into_par_iter()
        .map(|item| {
            let (bi, kvh, kh, vh) = d.kv_item(k, v, item);
            let mut dq = vec![T::zero(); group * t * hd];
            let mut dk = vec![T::zero(); s * hd];
            let mut dv = vec![T::zero(); s * hd];
            let mut ds = vec![T::zero(); t * s];
            for g in 0..group {
                let h = kvh * group + g;
                let p = &probs[(bi * nh + h) * t * s..][..t * s];
                let pm = MatRef::row_major(p, t, s);
                let doh = Dims::head(dout, bi, h, t, nh, hd);
                // dV += Pᵀ·dO; dP = dO·Vᵀ, turned into the scores' gradient in place.
                product(&mut dv, pm.t(), doh, true, bf16);
                product(&mut ds, doh, vh.t(), false, bf16);
                for (y, row) in p.chunks_exact(s).zip(ds.chunks_exact_mut(s)) {
                    softmax_grad_row(y, row, scale);
                }
                let dsm = MatRef::row_major(&ds, t, s);
                // dQ = dS·K; dK += dSᵀ·Q.
                product(&mut dq[g * t * hd..(g + 1) * t * hd], dsm, kh, false, bf16);
                product(
                    &mut dk,
                    dsm.t(),
                    Dims::head(q, bi, h, t, nh, hd),
                    true,
                    bf16,
                );
            }
            [dq, dk, dv]
        })
        .collect();
    let mut dq = vec![T::zero(); q.len()];
    let mut dk = vec![T::zero(); k.len()];
    let mut dv = vec![T::zero(); v.len()];
    for (item, [bq, bk, bv]) in blocks.iter().enumerate() {
        let (bi, kvh) = (item / nkv, item % nkv);
        for (g, head) in bq.chunks_exact(t * hd).enumerate() {
            Dims::scatter(&mut dq, head, bi, kvh * group + g, t, nh, hd);
        }
        Dims::scatter(&mut dk, bk, bi, kvh, s, nkv, hd);
        Dims::scatter(&mut dv, bv, bi, kvh, s, nkv, hd);
    }
    [dq, dk, dv]
}

/// The op. Keeps the forward's probabilities for the backward.
struct Attention {
    scoring: Scoring,
    probs: Mutex<Option<Tensor>>,
}

fn dims_of(q: &Layout, k: &Layout) -> Dims {
    let (qd, kd) = (q.dims(), k.dims());
    Dims {
        b: qd[0],
        t: qd[1],
        s: kd[1],
        nh: qd[2],
        nkv: kd[2],
        hd: qd[3],
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "attention"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        ql: &Layout,
        k: &CpuStorage,
        kl: &Layout,
        v: &CpuStorage,
        vl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = dims_of(ql, kl);
        dispatch_float!(q, self.name(), T => {
            let (q, k, v) = (slice::<T>(q, ql)?, slice::<T>(k, kl)?, slice::<T>(v, vl)?);
            let (out, probs) = forward_kernel(q, k, v, d, &self.scoring);
            let probs = Tensor::from_vec(probs, (d.b, d.nh, d.t, d.s), &Device::Cpu)?;
            *self.probs.lock().expect("attention probabilities lock") = Some(probs);
            Ok((storage(out), Shape::from((d.b, d.t, d.nh * d.hd))))
        })
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _out: &Tensor,
        dout: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let probs = self
            .probs
            .lock()
            .expect("attention probabilities lock")
            .take()
            .ok_or_else(|| candle_core::Error::Msg("attention: backward run twice".into()))?;
        let dout = dout.contiguous()?;
        let [dq, dk, dv] = match q.dtype() {
            DType::F32 => self.grads::<f32>(q, k, v, &probs, &dout)?,
            DType::F64 => self.grads::<f64>(q, k, v, &probs, &dout)?,
            other => candle_core::bail!("attention: unsupported dtype {other:?}"),
        };
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

impl Attention {
    /// The three input gradients, reading the operands' storage in place.
    fn grads<T: Float>(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        probs: &Tensor,
        dout: &Tensor,
    ) -> Result<[Tensor; 3]> {
        let guards = [q, k, v, probs, dout].map(|t| t.storage_and_layout());
        let mut data: Vec<&[T]> = Vec::with_capacity(5);
        for (st, l) in &guards {
            match &**st {
                Storage::Cpu(c) => data.push(slice::<T>(c, l)?),
                _ => candle_core::bail!("attention: backward operands must be on the CPU"),
            }
        }
        let d = dims_of(q.layout(), k.layout());
        let grads = backward_kernel(
            data[0],
            data[1],
            data[2],
            data[3],
            data[4],
            d,
            &self.scoring,
        );
        let shapes = [q.shape(), k.shape(), v.shape()];
        let mut out = grads
            .into_iter()
            .zip(shapes)
            .map(|(g, shape)| Tensor::from_vec(g, shape, &Device::Cpu));
        let mut next = || out.next().expect("three gradients");
        Ok([next()?, next()?, next()?])
    }
}

/// The same function as candle ops (off the CPU, and as the tests' reference): heads moved to
/// the front, the query heads sharing a key/value head stacked along the sequence axis, scores,
/// the masked softmax, and back.
pub fn attention_reference(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    mask: SoftmaxMask,
) -> Result<Tensor> {
    let (b, t, nh, hd) = q.dims4()?;
    let (_, s, nkv, _) = k.dims4()?;
    let group = nh / nkv;
    let q = q
        .transpose(1, 2)?
        .contiguous()?
        .reshape((b, nkv, group * t, hd))?;
    let k = k.transpose(1, 2)?.contiguous()?;
    let v = v.transpose(1, 2)?.contiguous()?;
    let scores = q.matmul(&k.t()?)?.reshape((b, nh, t, s))?;
    let probs = super::causal_softmax_with(&scores, scale, mask)?;
    probs
        .reshape((b, nkv, group * t, s))?
        .matmul(&v)?
        .reshape((b, nh, t, hd))?
        .transpose(1, 2)?
        .reshape((b, t, nh * hd))
}

/// Causal attention of `q` (`[b, t, heads, hd]`) over `k`, `v` (`[b, s, kv_heads, hd]`, `s ≥ t`:
/// the first `s − t` keys are earlier positions), scores scaled by `scale` and masked as `mask`
/// says besides the causal mask. Returns `[b, t, heads·hd]`.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    mask: SoftmaxMask,
) -> Result<Tensor> {
    attention_with(q, k, v, scale, mask, false)
}

/// [`attention`], with `bf16` running its products (scores, the weighted sum of values and
/// their gradients) on the bf16 kernel with operands rounded to bf16, as mixed-precision training
/// does (`--precision bf16`); the softmax and every sum stay f32. Without a bf16 kernel, or in f64,
/// it is [`attention`].
pub fn attention_with(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    mask: SoftmaxMask,
    bf16: bool,
) -> Result<Tensor> {
    let (b, t, nh, hd) = q.dims4()?;
    let (kb, s, nkv, khd) = k.dims4()?;
    if kb != b || khd != hd || v.dims() != k.dims() || nkv == 0 || nh % nkv != 0 || s < t {
        candle_core::bail!(
            "attention: q {:?}, k {:?}, v {:?} do not fit (k and v [b, s ≥ t, kv_heads | heads, hd])",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    if mask.window == Some(0) {
        candle_core::bail!("attention: a sliding window must hold at least one key");
    }
    if mask.alibi.is_some_and(|a| a.len() != nh) {
        candle_core::bail!("attention: ALiBi slopes must number the query heads ({nh})");
    }
    let cpu_float = q.device().is_cpu() && matches!(q.dtype(), DType::F32 | DType::F64);
    if !cpu_float || k.dtype() != q.dtype() || v.dtype() != q.dtype() {
        return attention_reference(q, k, v, scale, mask);
    }
    let op = Attention {
        scoring: Scoring {
            scale,
            window: mask.window,
            alibi: mask.alibi.map(<[f64]>::to_vec),
            bf16: bf16 && q.dtype() == DType::F32 && gemm_bf16::available(),
        },
        probs: Mutex::new(None),
    };
    q.contiguous()?
        .apply_op3(&k.contiguous()?, &v.contiguous()?, op)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{assert_close, check_gradients, rand_tensor};
    use candle_core::Var;

    fn inputs(t: usize, s: usize, dtype: DType) -> Result<[Tensor; 3]> {
        Ok([
            rand_tensor(&[2, t, 6, 4], dtype, 1)?,
            rand_tensor(&[2, s, 2, 4], dtype, 2)?,
            rand_tensor(&[2, s, 2, 4], dtype, 3)?,
        ])
    }

    fn masks(slopes: &[f64]) -> Vec<SoftmaxMask<'_>> {
        vec![
            SoftmaxMask::default(),
            SoftmaxMask {
                window: Some(2),
                alibi: None,
            },
            SoftmaxMask {
                window: None,
                alibi: Some(slopes),
            },
        ]
    }

    #[test]
    fn forward_and_gradients_match_the_candle_composition() -> Result<()> {
        let slopes = [0.5, 0.25, 0.125, 0.0625, 0.03, 0.01];
        for (t, s) in [(5, 5), (3, 7), (1, 4)] {
            for mask in masks(&slopes) {
                let vars = inputs(t, s, DType::F32)?.map(|x| Var::from_tensor(&x).expect("var"));
                let [q, k, v] = vars.each_ref().map(|x| x.as_tensor());
                let fused = attention(q, k, v, 0.7, mask)?;
                let plain = attention_reference(q, k, v, 0.7, mask)?;
                assert_close(&fused, &plain, 1e-6)?;
                let r = rand_tensor(fused.dims(), DType::F32, 9)?;
                let gf = (fused * &r)?.sum_all()?.backward()?;
                let gp = (plain * &r)?.sum_all()?.backward()?;
                for x in &vars {
                    assert_close(gf.get(x).expect("grad"), gp.get(x).expect("grad"), 1e-5)?;
                }
            }
        }
        Ok(())
    }

    #[test]
    fn bf16_products_match_f32_within_bf16_rounding() -> Result<()> {
        if !gemm_bf16::available() {
            eprintln!("skipped: no bf16 kernel on this CPU");
            return Ok(());
        }
        let round = |t: Tensor| t.to_dtype(DType::BF16)?.to_dtype(DType::F32);
        // Past one 32-row block of queries and keys, with a cache offset (s > t).
        for (t, s) in [(40, 40), (33, 70)] {
            let vars = inputs(t, s, DType::F32)?
                .map(|x| Var::from_tensor(&round(x).expect("round")).expect("var"));
            let [q, k, v] = vars.each_ref().map(|x| x.as_tensor());
            let mask = SoftmaxMask::default();
            let bf16 = attention_with(q, k, v, 0.7, mask, true)?;
            let f32 = attention(q, k, v, 0.7, mask)?;
            // The operands are bf16 values already; the probabilities (and, backward, the output
            // gradient and the scores' gradient) are rounded entering their products.
            assert_close(&bf16, &f32, 1e-2)?;
            let r = rand_tensor(f32.dims(), DType::F32, 9)?;
            let gb = (bf16 * &r)?.sum_all()?.backward()?;
            let gf = (f32 * &r)?.sum_all()?.backward()?;
            for x in &vars {
                assert_close(gb.get(x).expect("grad"), gf.get(x).expect("grad"), 2e-2)?;
            }
        }
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        let slopes = [0.5, 0.25, 0.125, 0.0625, 0.03, 0.01];
        for mask in masks(&slopes) {
            let [q, k, v] = inputs(3, 4, DType::F64)?;
            check_gradients(&[q, k, v], |ts| {
                attention(&ts[0], &ts[1], &ts[2], 0.6, mask)
            })?;
        }
        Ok(())
    }

    #[test]
    fn misfitting_shapes_are_refused() -> Result<()> {
        let [q, k, v] = inputs(5, 4, DType::F32)?;
        assert!(attention(&q, &k, &v, 1.0, SoftmaxMask::default()).is_err());
        Ok(())
    }
}

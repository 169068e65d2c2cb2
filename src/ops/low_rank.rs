//! The LoRA branch `s · drop(x) · Aᵀ · Bᵀ` and its gradients, one row at a time.
//!
//! At rank 8 the branch's products are thin: `x · Aᵀ` has 8 columns, `u · Bᵀ` sums over 8.
//! As general matrix products (gemm) each one is a pass over a `[tokens × features]` operand
//! with little arithmetic per element, and the branch took six of them, plus a dropped copy of
//! `x`, its mask and a scratch input gradient — about a sixth of a full-model LoRA step. Here
//! the forward is one pass over the rows of `x` and `y`, and the backward one pass over the
//! rows of `x`, `dy` and `dx`: each row's hidden activations `u` and their gradient `du` are
//! formed in registers and used at once, the dropout mask is redrawn element by element
//! ([`dropout::keep_factor`]), and the weight gradients are summed per block of rows in a fixed
//! order (the same result whatever the thread count).

use super::dropout;
use rayon::prelude::*;

/// Rows per work item: a fixed split, so that the weight gradients' partial sums, and their
/// order, do not depend on the thread count. Also the rows whose hidden activations are formed
/// before the weight gradients' products over them.
const ROWS: usize = 32;
/// Lanes of a vector (AVX-512: 16 f32).
const L: usize = 16;
/// Rank components handled together: eight vector accumulators.
const G: usize = 8;

/// The branch's constants for one call.
pub(crate) struct Branch {
    /// `A`, `[rp, in]` row-major, rows past `r` zero (`rp` is `r` rounded up to [`G`]).
    a: Vec<f32>,
    /// `Bᵀ`, `[rp, out]` row-major, rows past `r` zero.
    bt: Vec<f32>,
    r: usize,
    rp: usize,
    in_f: usize,
    out_f: usize,
    /// The LoRA scale `α / r`.
    scale: f32,
    /// Dropout probability and the mask's seed (training only).
    dropout: Option<(f64, u64)>,
}

/// The three vector loops of the branch, portable or in AVX-512 intrinsics (LLVM's own
/// vectorisation of the portable loops spilled the eight accumulators to the stack).
trait Lanes {
    /// `[Σ_k x[k]·rows[j][k] for j in 0..G]` for [`G`] consecutive rows of length `n`
    /// (row-major in `rows`): one pass over `x`, an accumulator per row.
    fn dots(x: &[f32], rows: &[f32], n: usize) -> [f32; G];
    /// `y += Σ_j c[j] · rows[j]` for [`G`] consecutive rows of length `n`.
    fn combine(y: &mut [f32], c: &[f32], rows: &[f32], n: usize);
    /// `out[j] = Σ_i coef[i·stride + col + j] · data[i]` for `j < G`, over the rows `i` of
    /// `data` (`rows × n`); `out` is `G × n`: a block of a weight gradient, `coefᵀ · data`.
    fn outer_sums(out: &mut [f32], coef: &[f32], stride: usize, col: usize, data: &[f32], n: usize);
}

/// Plain loops: any CPU.
struct Portable;

impl Lanes for Portable {
    #[inline(always)]
    fn dots(x: &[f32], rows: &[f32], n: usize) -> [f32; G] {
        std::array::from_fn(|j| {
            x[..n]
                .iter()
                .zip(&rows[j * n..(j + 1) * n])
                .map(|(a, b)| a * b)
                .sum()
        })
    }

    #[inline(always)]
    fn combine(y: &mut [f32], c: &[f32], rows: &[f32], n: usize) {
        for (j, &cj) in c[..G].iter().enumerate() {
            for (y, r) in y[..n].iter_mut().zip(&rows[j * n..(j + 1) * n]) {
                *y += cj * r;
            }
        }
    }

    #[inline(always)]
    fn outer_sums(
        out: &mut [f32],
        coef: &[f32],
        stride: usize,
        col: usize,
        data: &[f32],
        n: usize,
    ) {
        out[..G * n].fill(0.0);
        for (i, row) in data.chunks_exact(n).enumerate() {
            for j in 0..G {
                let c = coef[i * stride + col + j];
                for (o, d) in out[j * n..(j + 1) * n].iter_mut().zip(row) {
                    *o += c * d;
                }
            }
        }
    }
}

/// AVX-512: sixteen lanes, fused multiply-adds, the accumulators in registers.
#[cfg(target_arch = "x86_64")]
struct Avx512;

#[cfg(target_arch = "x86_64")]
impl Lanes for Avx512 {
    #[inline(always)]
    fn dots(x: &[f32], rows: &[f32], n: usize) -> [f32; G] {
        // SAFETY: only reached from the `avx512f` entry points, after the CPU check.
        unsafe { avx512::dots(x, rows, n) }
    }

    #[inline(always)]
    fn combine(y: &mut [f32], c: &[f32], rows: &[f32], n: usize) {
        // SAFETY: as above.
        unsafe { avx512::combine(y, c, rows, n) }
    }

    #[inline(always)]
    fn outer_sums(
        out: &mut [f32],
        coef: &[f32],
        stride: usize,
        col: usize,
        data: &[f32],
        n: usize,
    ) {
        // SAFETY: as above.
        unsafe { avx512::outer_sums(out, coef, stride, col, data, n) }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{G, L};
    use std::arch::x86_64::*;

    /// See [`super::Lanes::dots`]. Bounds are asserted, then the loads are unchecked.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn dots(x: &[f32], rows: &[f32], n: usize) -> [f32; G] {
        assert!(x.len() >= n && rows.len() >= G * n);
        let full = n / L * L;
        let mut acc = [_mm512_setzero_ps(); G];
        for c in (0..full).step_by(L) {
            let xv = _mm512_loadu_ps(x.as_ptr().add(c));
            for (j, a) in acc.iter_mut().enumerate() {
                *a = _mm512_fmadd_ps(xv, _mm512_loadu_ps(rows.as_ptr().add(j * n + c)), *a);
            }
        }
        let mut out = [0f32; G];
        for (j, o) in out.iter_mut().enumerate() {
            let tail: f32 = (full..n).map(|k| x[k] * rows[j * n + k]).sum();
            *o = _mm512_reduce_add_ps(acc[j]) + tail;
        }
        out
    }

    /// See [`super::Lanes::combine`].
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn combine(y: &mut [f32], c: &[f32], rows: &[f32], n: usize) {
        assert!(y.len() >= n && c.len() >= G && rows.len() >= G * n);
        let full = n / L * L;
        let cs: [__m512; G] = std::array::from_fn(|j| _mm512_set1_ps(c[j]));
        for k in (0..full).step_by(L) {
            let mut acc = _mm512_loadu_ps(y.as_ptr().add(k));
            for (j, cj) in cs.iter().enumerate() {
                acc = _mm512_fmadd_ps(*cj, _mm512_loadu_ps(rows.as_ptr().add(j * n + k)), acc);
            }
            _mm512_storeu_ps(y.as_mut_ptr().add(k), acc);
        }
        for k in full..n {
            y[k] += (0..G).map(|j| c[j] * rows[j * n + k]).sum::<f32>();
        }
    }

    /// See [`super::Lanes::outer_sums`].
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn outer_sums(
        out: &mut [f32],
        coef: &[f32],
        stride: usize,
        col: usize,
        data: &[f32],
        n: usize,
    ) {
        let rows = data.len() / n;
        assert!(out.len() >= G * n && coef.len() >= (rows.max(1) - 1) * stride + col + G);
        let full = n / L * L;
        for c in (0..full).step_by(L) {
            let mut acc = [_mm512_setzero_ps(); G];
            for i in 0..rows {
                let dv = _mm512_loadu_ps(data.as_ptr().add(i * n + c));
                let ci = coef.as_ptr().add(i * stride + col);
                for (j, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_fmadd_ps(_mm512_set1_ps(*ci.add(j)), dv, *a);
                }
            }
            for (j, a) in acc.iter().enumerate() {
                _mm512_storeu_ps(out.as_mut_ptr().add(j * n + c), *a);
            }
        }
        for k in full..n {
            for j in 0..G {
                out[j * n + k] = (0..rows)
                    .map(|i| coef[i * stride + col + j] * data[i * n + k])
                    .sum();
            }
        }
    }
}

impl Branch {
    /// The kernels for `A` (`[r, in]`) and `B` (`[out, r]`), both row-major.
    pub fn new(a: &[f32], b: &[f32], r: usize, scale: f32, dropout: Option<(f64, u64)>) -> Self {
        let in_f = a.len() / r.max(1);
        let out_f = b.len() / r.max(1);
        let rp = r.div_ceil(G) * G;
        let mut ap = a.to_vec();
        ap.resize(rp * in_f, 0.0);
        let mut bt = transpose(b, out_f, r);
        bt.resize(rp * out_f, 0.0);
        Branch {
            a: ap,
            bt,
            r,
            rp,
            in_f,
            out_f,
            scale,
            dropout,
        }
    }

    /// Row `i`'s dropped input into `xm` and its mask multipliers into `keep` (all 1 without
    /// dropout); `u = s · xm · Aᵀ` into `u` (`rp` values).
    #[inline(always)]
    fn hidden_row<K: Lanes>(
        &self,
        x: &[f32],
        i: usize,
        xm: &mut [f32],
        keep: &mut [f32],
        u: &mut [f32],
    ) {
        let row = &x[i * self.in_f..(i + 1) * self.in_f];
        match self.dropout {
            Some((p, seed)) if p > 0.0 => {
                for (k, (m, v)) in keep.iter_mut().zip(xm.iter_mut()).enumerate() {
                    *m = dropout::keep_factor(p, seed, i * self.in_f + k);
                    *v = row[k] * *m;
                }
            }
            _ => {
                keep.fill(1.0);
                xm.copy_from_slice(row);
            }
        }
        for (g, ug) in u.chunks_exact_mut(G).enumerate() {
            let d = K::dots(xm, &self.a[g * G * self.in_f..], self.in_f);
            for (u, d) in ug.iter_mut().zip(d) {
                *u = self.scale * d;
            }
        }
    }

    #[inline(always)]
    fn forward_rows<K: Lanes>(&self, x: &[f32], y: &mut [f32], first: usize) {
        let (in_f, out_f, rp) = (self.in_f, self.out_f, self.rp);
        let (mut xm, mut keep, mut u) = (vec![0f32; in_f], vec![0f32; in_f], vec![0f32; rp]);
        for (di, yrow) in y.chunks_exact_mut(out_f).enumerate() {
            self.hidden_row::<K>(x, first + di, &mut xm, &mut keep, &mut u);
            for (g, ug) in u.chunks_exact(G).enumerate() {
                K::combine(yrow, ug, &self.bt[g * G * out_f..], out_f);
            }
        }
    }

    /// Gradients of the rows `first..` that `dy` and `dx` hold: adds the branch's part to `dx`,
    /// and returns this block's `dA` (`[rp, in]`) and `dBᵀ` (`[rp, out]`).
    #[inline(always)]
    fn backward_rows<K: Lanes>(
        &self,
        x: &[f32],
        dy: &[f32],
        dx: &mut [f32],
        first: usize,
    ) -> (Vec<f32>, Vec<f32>) {
        let (rp, in_f, out_f) = (self.rp, self.in_f, self.out_f);
        let rows = dy.len() / out_f;
        // The block's dropped inputs, masks, u and du = s · dy · B.
        let mut xm = vec![0f32; rows * in_f];
        let mut keep = vec![0f32; rows * in_f];
        let mut u = vec![0f32; rows * rp];
        let mut du = vec![0f32; rows * rp];
        for i in 0..rows {
            let span = i * in_f..(i + 1) * in_f;
            self.hidden_row::<K>(
                x,
                first + i,
                &mut xm[span.clone()],
                &mut keep[span],
                &mut u[i * rp..(i + 1) * rp],
            );
            let dyrow = &dy[i * out_f..(i + 1) * out_f];
            for (g, dug) in du[i * rp..(i + 1) * rp].chunks_exact_mut(G).enumerate() {
                let d = K::dots(dyrow, &self.bt[g * G * out_f..], out_f);
                for (o, d) in dug.iter_mut().zip(d) {
                    *o = self.scale * d;
                }
            }
        }
        // dBᵀ = uᵀ · dy and dA = duᵀ · xm over the block; dx += keep ⊙ (du · A).
        let mut da = vec![0f32; rp * in_f];
        let mut dbt = vec![0f32; rp * out_f];
        for g in 0..rp / G {
            K::outer_sums(&mut dbt[g * G * out_f..], &u, rp, g * G, dy, out_f);
            K::outer_sums(&mut da[g * G * in_f..], &du, rp, g * G, &xm, in_f);
        }
        let mut dxm = vec![0f32; in_f];
        for (i, dxrow) in dx.chunks_exact_mut(in_f).enumerate() {
            dxm.fill(0.0);
            for (g, dug) in du[i * rp..(i + 1) * rp].chunks_exact(G).enumerate() {
                K::combine(&mut dxm, dug, &self.a[g * G * in_f..], in_f);
            }
            let keep = &keep[i * in_f..(i + 1) * in_f];
            for ((d, g), m) in dxrow.iter_mut().zip(&dxm).zip(keep) {
                *d += g * m;
            }
        }
        (da, dbt)
    }

    /// `y += s · drop(x) · Aᵀ · Bᵀ` for `x` `[m, in]` and `y` `[m, out]`.
    pub fn forward(&self, x: &[f32], y: &mut [f32]) {
        y.par_chunks_mut(ROWS * self.out_f)
            .enumerate()
            .for_each(|(c, yc)| self.forward_rows_dispatch(x, yc, c * ROWS));
    }

    /// Adds the branch's input gradient to `dx` (`[m, in]`) and returns `(dA, dB)` (`[r, in]`,
    /// `[out, r]`) for the output gradient `dy` (`[m, out]`).
    pub fn backward(&self, x: &[f32], dy: &[f32], dx: &mut [f32]) -> (Vec<f32>, Vec<f32>) {
        let (r, in_f, out_f) = (self.r, self.in_f, self.out_f);
        let parts: Vec<(Vec<f32>, Vec<f32>)> = dx
            .par_chunks_mut(ROWS * in_f)
            .zip(dy.par_chunks(ROWS * out_f))
            .enumerate()
            .map(|(c, (dxc, dyc))| self.backward_rows_dispatch(x, dyc, dxc, c * ROWS))
            .collect();
        // Summed in block order: the same floating-point result on any number of threads.
        let mut da = vec![0f32; r * in_f];
        let mut dbt = vec![0f32; r * out_f];
        for (pa, pb) in &parts {
            for (d, p) in da.iter_mut().zip(pa) {
                *d += p;
            }
            for (d, p) in dbt.iter_mut().zip(pb) {
                *d += p;
            }
        }
        (da, transpose(&dbt, r, out_f))
    }

    fn forward_rows_dispatch(&self, x: &[f32], y: &mut [f32], first: usize) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has the feature the function was compiled for.
            return unsafe { self.forward_rows_avx512(x, y, first) };
        }
        self.forward_rows::<Portable>(x, y, first)
    }

    fn backward_rows_dispatch(
        &self,
        x: &[f32],
        dy: &[f32],
        dx: &mut [f32],
        first: usize,
    ) -> (Vec<f32>, Vec<f32>) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has the feature the function was compiled for.
            return unsafe { self.backward_rows_avx512(x, dy, dx, first) };
        }
        self.backward_rows::<Portable>(x, dy, dx, first)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn forward_rows_avx512(&self, x: &[f32], y: &mut [f32], first: usize) {
        self.forward_rows::<Avx512>(x, y, first)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn backward_rows_avx512(
        &self,
        x: &[f32],
        dy: &[f32],
        dx: &mut [f32],
        first: usize,
    ) -> (Vec<f32>, Vec<f32>) {
        self.backward_rows::<Avx512>(x, dy, dx, first)
    }
}

/// The transpose (`[cols, rows]`) of a row-major `rows × cols` matrix (`B` into `Bᵀ`).
pub(crate) fn transpose(b: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut bt = vec![0f32; b.len()];
    for i in 0..rows {
        for j in 0..cols {
            bt[j * rows + i] = b[i * cols + j];
        }
    }
    bt
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(seed: u64, len: usize) -> Vec<f32> {
        (0..len)
            .map(|i| ((dropout::mix_seed(seed, i as u64) >> 40) as f32 / (1u64 << 24) as f32) - 0.5)
            .collect()
    }

    /// `x`, `A`, `B`, `dy` for `m` rows of rank `r`, drawn from `seed`.
    fn operands(seed: u64, m: usize, r: usize, in_f: usize, out_f: usize) -> [Vec<f32>; 4] {
        [m * in_f, r * in_f, out_f * r, m * out_f]
            .into_iter()
            .enumerate()
            .map(|(i, len)| values(seed + i as u64, len))
            .collect::<Vec<_>>()
            .try_into()
            .expect("four")
    }

    #[test]
    fn vector_and_portable_loops_agree() {
        // Ragged lengths (not multiples of 16), rank 5 padded to 8, dropout on.
        let (m, r, in_f, out_f) = (40, 5, 37, 50);
        let [x, a, b, dy] = operands(5, m, r, in_f, out_f);
        let branch = Branch::new(&a, &b, r, 2.0, Some((0.2, 3)));
        let mut y = [vec![0f32; m * out_f], vec![0f32; m * out_f]];
        let mut dx = [vec![0f32; m * in_f], vec![0f32; m * in_f]];
        let mut grads = Vec::new();
        for (k, (y, dx)) in y.iter_mut().zip(dx.iter_mut()).enumerate() {
            for (c, (yc, (dxc, dyc))) in y
                .chunks_mut(ROWS * out_f)
                .zip(dx.chunks_mut(ROWS * in_f).zip(dy.chunks(ROWS * out_f)))
                .enumerate()
            {
                if k == 0 {
                    branch.forward_rows::<Portable>(&x, yc, c * ROWS);
                    grads.push(branch.backward_rows::<Portable>(&x, dyc, dxc, c * ROWS));
                } else {
                    branch.forward_rows_dispatch(&x, yc, c * ROWS);
                    grads.push(branch.backward_rows_dispatch(&x, dyc, dxc, c * ROWS));
                }
            }
        }
        let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(a, b)| (a - b).abs() <= 1e-5);
        assert!(close(&y[0], &y[1]), "forward");
        assert!(close(&dx[0], &dx[1]), "dx");
        let blocks = grads.len() / 2;
        for (p, v) in grads[..blocks].iter().zip(&grads[blocks..]) {
            assert!(close(&p.0, &v.0) && close(&p.1, &v.1), "dA, dB");
        }
    }

    #[test]
    fn gradients_are_the_same_on_any_number_of_threads() {
        let (m, r, in_f, out_f) = (100, 8, 40, 24);
        let [x, a, b, dy] = operands(1, m, r, in_f, out_f);
        let branch = Branch::new(&a, &b, r, 4.0, Some((0.1, 7)));
        let run = |threads| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("pool");
            pool.install(|| {
                let mut dx = vec![0f32; m * in_f];
                let (da, db) = branch.backward(&x, &dy, &mut dx);
                (dx, da, db)
            })
        };
        // Bit for bit: the partial sums come in a fixed order.
        assert_eq!(run(1), run(3));
    }
}

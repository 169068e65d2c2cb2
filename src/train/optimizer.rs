//! AdamW with decoupled weight decay (Loshchilov & Hutter), as `torch.optim.AdamW`.

use crate::ops::cpu::{dispatch_float, slice, slice_mut};
use candle_core::{
    CpuStorage, DType, InplaceOp2, InplaceOp3, Layout, Result, Tensor, Var, WithDType,
};
use rayon::prelude::*;

/// One trained parameter.
#[derive(Clone, Debug)]
pub struct Param {
    /// Its full name (HF naming), used in checkpoints.
    pub name: String,
    /// The variable.
    pub var: Var,
    /// Whether weight decay applies (not to norms and biases: 1-D parameters).
    pub decay: bool,
}

impl Param {
    /// A parameter; 1-D parameters (norms, biases) get no weight decay.
    pub fn new(name: impl Into<String>, var: Var) -> Self {
        let decay = var.rank() > 1;
        Param {
            name: name.into(),
            var,
            decay,
        }
    }
}

/// AdamW state: first and second moments per parameter, and the step count.
#[derive(Debug)]
pub struct AdamW {
    /// First moments, aligned with the parameters.
    pub m: Vec<Tensor>,
    /// Second moments, aligned with the parameters.
    pub v: Vec<Tensor>,
    /// Updates taken so far.
    pub t: usize,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    /// SGD with momentum instead (`m` is the momentum buffer, `v` unused).
    sgd: bool,
}

impl AdamW {
    /// Zero moments for `params`, PyTorch's default betas (0.9, 0.999) and eps 1e-8.
    pub fn new(params: &[Param], weight_decay: f64) -> Result<Self> {
        let zeros = |p: &Param| p.var.as_tensor().zeros_like();
        Ok(AdamW {
            m: params.iter().map(zeros).collect::<Result<_>>()?,
            v: params.iter().map(zeros).collect::<Result<_>>()?,
            t: 0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
            sgd: false,
        })
    }

    /// The state of `kind` for `params` (SGD keeps its momentum buffer in `m`, so checkpoints
    /// and resume are the same code).
    pub fn of_kind(
        params: &[Param],
        weight_decay: f64,
        kind: super::options::OptimizerKind,
    ) -> Result<Self> {
        let mut opt = Self::new(params, weight_decay)?;
        opt.sgd = kind == super::options::OptimizerKind::Sgd;
        Ok(opt)
    }

    /// SGD with momentum 0.9 and decoupled weight decay, as candle ops (a few per parameter:
    /// the adapter's update is a negligible part of a step).
    fn sgd_step(&mut self, params: &[Param], grads: &[Tensor], lr: f64) -> Result<()> {
        for (i, (p, g)) in params.iter().zip(grads).enumerate() {
            let decay = if p.decay { self.weight_decay } else { 0.0 };
            let buf = ((&self.m[i] * self.beta1)? + g)?;
            let w = (p.var.as_tensor() * (1.0 - lr * decay))?;
            p.var.set(&(w - (&buf * lr)?)?)?;
            self.m[i] = buf;
        }
        Ok(())
    }

    /// Applies one update with learning rate `lr` from `grads` (aligned with `params`).
    pub fn step(&mut self, params: &[Param], grads: &[Tensor], lr: f64) -> Result<()> {
        self.t += 1;
        if self.sgd {
            return self.sgd_step(params, grads, lr);
        }
        let bc1 = 1.0 - self.beta1.powi(self.t as i32);
        let bc2 = 1.0 - self.beta2.powi(self.t as i32);
        for (i, (p, g)) in params.iter().zip(grads).enumerate() {
            let decay = if p.decay { self.weight_decay } else { 0.0 };
            let update = Update {
                lr,
                bc1,
                bc2,
                eps: self.eps,
                beta1: self.beta1,
                beta2: self.beta2,
                decay_factor: 1.0 - lr * decay,
            };
            let w = p.var.as_tensor();
            let fused = w.device().is_cpu()
                && [w, g, &self.m[i], &self.v[i]]
                    .iter()
                    .all(|t| t.is_contiguous() && t.dtype() == w.dtype())
                && matches!(w.dtype(), DType::F32 | DType::F64);
            if fused {
                // In place, one multi-threaded pass: no temporaries per parameter.
                let g = g.contiguous()?;
                let (b1, b2) = (self.beta1, self.beta2);
                self.m[i].inplace_op2(
                    &g,
                    &MomentOp {
                        beta: b1,
                        square: false,
                    },
                )?;
                self.v[i].inplace_op2(
                    &g,
                    &MomentOp {
                        beta: b2,
                        square: true,
                    },
                )?;
                w.inplace_op3(&self.m[i], &self.v[i], &WeightOp(update))?;
            } else {
                let (m, v) = update.reference(p, g, &self.m[i], &self.v[i])?;
                self.m[i] = m;
                self.v[i] = v;
            }
        }
        Ok(())
    }
}

/// The constants of one AdamW update of one parameter.
#[derive(Clone, Copy, Debug)]
struct Update {
    lr: f64,
    bc1: f64,
    bc2: f64,
    eps: f64,
    beta1: f64,
    beta2: f64,
    /// `1 − lr · weight_decay` (1 without decay).
    decay_factor: f64,
}

impl Update {
    /// The update as candle ops (other devices and dtypes); returns the new moments.
    fn reference(&self, p: &Param, g: &Tensor, m: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let m = ((m * self.beta1)? + (g * (1.0 - self.beta1))?)?;
        let v = ((v * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?;
        let denom = ((&v / self.bc2)?.sqrt()? + self.eps)?;
        let update = ((&m / self.bc1)? / denom)?;
        let w = (p.var.as_tensor() * self.decay_factor)?;
        p.var.set(&(w - (update * self.lr)?)?)?;
        Ok((m, v))
    }
}

/// Elements per parallel work item.
const BLOCK: usize = 1 << 14;

/// `s ← β·s + (1−β)·g` (first moment) or `s ← β·s + (1−β)·g²` (second), in place on `s`.
struct MomentOp {
    beta: f64,
    square: bool,
}

impl InplaceOp2 for MomentOp {
    fn name(&self) -> &'static str {
        "adamw-moment"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, sl: &Layout, g: &CpuStorage, gl: &Layout) -> Result<()> {
        dispatch_float!(g, self.name(), T => {
            let (b, c) = (T::from_f64(self.beta), T::from_f64(1.0 - self.beta));
            let g = slice::<T>(g, gl)?;
            let s = slice_mut::<T>(s, sl)?;
            if s.len() != g.len() {
                candle_core::bail!("adamw: moment and gradient sizes differ");
            }
            s.par_chunks_mut(BLOCK).zip(g.par_chunks(BLOCK)).for_each(|(s, g)| {
                if self.square {
                    for (s, &g) in s.iter_mut().zip(g) {
                        *s = b * *s + c * g * g;
                    }
                } else {
                    for (s, &g) in s.iter_mut().zip(g) {
                        *s = b * *s + c * g;
                    }
                }
            });
            Ok(())
        })
    }
}

/// `w ← w·(1 − lr·wd) − lr · m̂ / (√v̂ + ε)`, in place on `w`.
struct WeightOp(Update);

impl InplaceOp3 for WeightOp {
    fn name(&self) -> &'static str {
        "adamw-weights"
    }

    fn cpu_fwd(
        &self,
        w: &mut CpuStorage,
        wl: &Layout,
        m: &CpuStorage,
        ml: &Layout,
        v: &CpuStorage,
        vl: &Layout,
    ) -> Result<()> {
        let u = self.0;
        dispatch_float!(m, self.name(), T => {
            let (m, v) = (slice::<T>(m, ml)?, slice::<T>(v, vl)?);
            let w = slice_mut::<T>(w, wl)?;
            let keep = T::from_f64(u.decay_factor);
            let (lr, eps) = (T::from_f64(u.lr), T::from_f64(u.eps));
            let (inv_bc1, inv_bc2) = (T::from_f64(1.0 / u.bc1), T::from_f64(1.0 / u.bc2));
            w.par_chunks_mut(BLOCK)
                .zip(m.par_chunks(BLOCK).zip(v.par_chunks(BLOCK)))
                .for_each(|(w, (m, v))| {
                    for ((w, &m), &v) in w.iter_mut().zip(m).zip(v) {
                        *w = *w * keep - lr * (m * inv_bc1) / ((v * inv_bc2).sqrt() + eps);
                    }
                });
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn matches_hand_computed_torch_adamw() -> Result<()> {
        // torch.optim.AdamW([p], lr=0.1, weight_decay=0.5), p = [1, -2], grads [0.5, 0.25] then
        // [-1, 1]: the values below follow torch's update rule step by step.
        let var = Var::new(&[1.0f64, -2.0], &Device::Cpu)?;
        let params = [Param::new("w", var.clone())];
        let mut opt = AdamW::new(&params, 0.5)?;
        // A 1-D parameter would get no decay; force it for the test.
        let params = [Param {
            decay: true,
            ..params[0].clone()
        }];
        opt.step(&params, &[Tensor::new(&[0.5f64, 0.25], &Device::Cpu)?], 0.1)?;
        // decay: 1*(1-0.05)=0.95, -2*0.95=-1.9; first Adam step moves by lr*sign(g): -0.1
        let first = var.as_tensor().to_vec1::<f64>()?;
        assert!(
            (first[0] - 0.85).abs() < 1e-6 && (first[1] + 2.0).abs() < 1e-6,
            "{first:?}"
        );
        opt.step(&params, &[Tensor::new(&[-1.0f64, 1.0], &Device::Cpu)?], 0.1)?;
        // m = 0.9*0.1*g1 + 0.1*g2 ; v = 0.999*0.001*g1² + 0.001*g2²
        let expect = |w: f64, g1: f64, g2: f64| {
            let w = w * (1.0 - 0.05);
            let m = 0.9 * 0.1 * g1 + 0.1 * g2;
            let v = 0.999 * 0.001 * g1 * g1 + 0.001 * g2 * g2;
            let (mh, vh) = (m / (1.0 - 0.81), v / (1.0 - 0.999f64.powi(2)));
            w - 0.1 * mh / (vh.sqrt() + 1e-8)
        };
        let got = var.as_tensor().to_vec1::<f64>()?;
        assert!(
            (got[0] - expect(first[0], 0.5, -1.0)).abs() < 1e-12,
            "{got:?}"
        );
        assert!(
            (got[1] - expect(first[1], 0.25, 1.0)).abs() < 1e-12,
            "{got:?}"
        );
        Ok(())
    }

    #[test]
    fn matches_hand_computed_torch_sgd_with_momentum() -> Result<()> {
        // torch.optim.SGD([p], lr=0.1, momentum=0.9) with decoupled decay 0.5 (as AdamW's):
        // p = [1, -2], grads [0.5, 0.25] then [-1, 1].
        let var = Var::new(&[1.0f64, -2.0], &Device::Cpu)?;
        let params = [Param {
            decay: true,
            ..Param::new("w", var.clone())
        }];
        let mut opt = AdamW::of_kind(&params, 0.5, super::super::options::OptimizerKind::Sgd)?;
        opt.step(&params, &[Tensor::new(&[0.5f64, 0.25], &Device::Cpu)?], 0.1)?;
        // buf = g; w = 0.95 w − 0.1 g.
        let first = var.as_tensor().to_vec1::<f64>()?;
        assert!((first[0] - 0.90).abs() < 1e-12 && (first[1] + 1.925).abs() < 1e-12);
        opt.step(&params, &[Tensor::new(&[-1.0f64, 1.0], &Device::Cpu)?], 0.1)?;
        // buf = 0.9·g1 + g2 = [−0.55, 1.225]; w = 0.95 w − 0.1 buf.
        let second = var.as_tensor().to_vec1::<f64>()?;
        let want = [0.95 * 0.90 + 0.055, 0.95 * -1.925 - 0.1225];
        for (g, w) in second.iter().zip(want) {
            assert!((g - w).abs() < 1e-12, "{second:?} vs {want:?}");
        }
        Ok(())
    }

    #[test]
    fn fused_update_matches_the_candle_composition() -> Result<()> {
        // More elements than one parallel block; three steps with weight decay.
        let init = crate::ops::testing::rand_tensor(&[200, 100], DType::F32, 3)?;
        let fused = Param::new("w", Var::from_tensor(&init)?);
        let plain = Param::new("w", Var::from_tensor(&init)?);
        let mut opt = AdamW::new(std::slice::from_ref(&fused), 0.1)?;
        let (mut m, mut v) = (init.zeros_like()?, init.zeros_like()?);
        for step in 1..=3 {
            let g = crate::ops::testing::rand_tensor(&[200, 100], DType::F32, 10 + step)?;
            opt.step(std::slice::from_ref(&fused), std::slice::from_ref(&g), 1e-2)?;
            let update = Update {
                lr: 1e-2,
                bc1: 1.0 - 0.9f64.powi(step as i32),
                bc2: 1.0 - 0.999f64.powi(step as i32),
                eps: 1e-8,
                beta1: 0.9,
                beta2: 0.999,
                decay_factor: 1.0 - 1e-2 * 0.1,
            };
            (m, v) = update.reference(&plain, &g, &m, &v)?;
        }
        let diff = |a: &Tensor, b: &Tensor| crate::ops::testing::max_abs_diff(a, b);
        assert!(diff(fused.var.as_tensor(), plain.var.as_tensor())? < 1e-6);
        assert!(diff(&opt.m[0], &m)? < 1e-7 && diff(&opt.v[0], &v)? < 1e-7);
        // The weights moved.
        assert!(diff(fused.var.as_tensor(), &init)? > 1e-3);
        Ok(())
    }

    #[test]
    fn norms_get_no_decay() -> Result<()> {
        let p = Param::new("n", Var::new(&[1.0f32], &Device::Cpu)?);
        assert!(!p.decay);
        let p = Param::new("w", Var::new(&[[1.0f32]], &Device::Cpu)?);
        assert!(p.decay);
        Ok(())
    }
}

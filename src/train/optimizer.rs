//! AdamW with decoupled weight decay (Loshchilov & Hutter), as `torch.optim.AdamW`.

use candle_core::{Result, Tensor, Var};

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
        })
    }

    /// Applies one update with learning rate `lr` from `grads` (aligned with `params`).
    pub fn step(&mut self, params: &[Param], grads: &[Tensor], lr: f64) -> Result<()> {
        self.t += 1;
        let bc1 = 1.0 - self.beta1.powi(self.t as i32);
        let bc2 = 1.0 - self.beta2.powi(self.t as i32);
        for (i, (p, g)) in params.iter().zip(grads).enumerate() {
            let m = ((&self.m[i] * self.beta1)? + (g * (1.0 - self.beta1))?)?;
            let v = ((&self.v[i] * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?;
            let denom = ((&v / bc2)?.sqrt()? + self.eps)?;
            let update = ((&m / bc1)? / denom)?;
            let mut w = p.var.as_tensor().clone();
            if p.decay && self.weight_decay > 0.0 {
                w = (&w * (1.0 - lr * self.weight_decay))?;
            }
            p.var.set(&(w - (update * lr)?)?)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
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
    fn norms_get_no_decay() -> Result<()> {
        let p = Param::new("n", Var::new(&[1.0f32], &Device::Cpu)?);
        assert!(!p.decay);
        let p = Param::new("w", Var::new(&[[1.0f32]], &Device::Cpu)?);
        assert!(p.decay);
        Ok(())
    }
}

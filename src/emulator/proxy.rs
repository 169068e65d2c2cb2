//! The proxy: the tuned adapter's effect carried onto the full model by logit arithmetic, with no
//! plug-in at all (proxy-tuning, Liu et al. 2024; emulated fine-tuning, Mitchell et al. 2024):
//!
//! `log p(x) = log p_M(x) + α·(log p_{A',E*}(x) − log p_{A,E*}(x))`, renormalised per position,
//!
//! where M is the full model, `[A', E*]` the emulator with the returned adapter and `[A, E*]` the
//! emulator as shipped. It costs three forward passes per position, needs nothing but what the
//! model owner holds, and is both a baseline the plug-in must beat and the target the plug-in's
//! alignment ([`super::align`]) trains towards.

use super::{model_fingerprint, Adapter, Package};
use crate::io::checkpoint::Checkpoint;
use crate::model::{log_softmax, Model};
use crate::{Error, Result};
use candle_core::{DType, Tensor};

/// The proxy's default `α` (the emulator's change taken as is).
pub const DEFAULT_ALPHA: f64 = 1.0;

/// The proxy's scores before normalisation: `full + α·(log_softmax(tuned) −
/// log_softmax(untuned))` over the last dimension, for logits of the same shape (their
/// log-softmax is the proxy's log-probabilities). Where the adapter changed nothing (`tuned` = `untuned`) this is
/// `full` itself, bit for bit: an alignment towards it has exactly zero loss and gradient.
/// Computed in f64 when `wide`, else in the inputs' dtype (training targets).
pub fn proxy_logits(
    full: &Tensor,
    tuned: &Tensor,
    untuned: &Tensor,
    alpha: f64,
    wide: bool,
) -> candle_core::Result<Tensor> {
    let widen = |t: &Tensor| {
        if wide {
            t.to_dtype(DType::F64)
        } else {
            Ok(t.clone())
        }
    };
    let delta = (log_softmax(&widen(tuned)?)? - log_softmax(&widen(untuned)?)?)?;
    widen(full)? + (delta * alpha)?
}

/// The three models of the proxy and its `α`.
pub struct Proxy {
    /// The full model M (its own adapter layers).
    pub full: Model,
    /// The emulator with the returned adapter, `[A', E*]`.
    pub tuned: Model,
    /// The emulator as shipped, `[A, E*]`.
    pub untuned: Model,
    /// How much of the emulator's change is added.
    pub alpha: f64,
}

impl Proxy {
    /// The proxy of `adapter` (tuned through `package`, which was made from `ckpt`'s model):
    /// checks the whole fingerprint chain, as plug-in does.
    pub fn new(
        ckpt: &Checkpoint,
        package: &Package,
        adapter: &Adapter,
        alpha: f64,
    ) -> Result<Self> {
        if !alpha.is_finite() {
            return Err(Error::Invalid(format!(
                "the proxy's alpha must be finite, got {alpha}"
            )));
        }
        adapter.check_package(package)?;
        // The check plug-in makes, on the one full model the proxy keeps.
        let full = ckpt.model()?;
        adapter.check_source(&model_fingerprint(&full)?, &ckpt.path)?;
        let untuned = package.model()?;
        let mut tuned = package.model()?;
        adapter.apply(&mut tuned)?;
        Ok(Proxy {
            full,
            tuned,
            untuned,
            alpha,
        })
    }

    /// The proxy's log-probabilities `[batch, seq, vocab]` for ids `[batch, seq]`, in f64.
    pub fn log_probs(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        log_softmax(&self.logits(ids, true)?)
    }

    /// The proxy's unnormalised scores ([`proxy_logits`]) for ids `[batch, seq]`, in f32 (a
    /// training target) or f64 (`wide`).
    pub fn logits(&self, ids: &Tensor, wide: bool) -> candle_core::Result<Tensor> {
        proxy_logits(
            &self.full.forward(ids)?,
            &self.tuned.forward(ids)?,
            &self.untuned.forward(ids)?,
            self.alpha,
            wide,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn proxy_logits_match_a_hand_computation() {
        // Two tokens: full p = (1/2, 1/2), tuned (1/4, 3/4), untuned (1/2, 1/2), α = 2:
        // scores ln(1/2) + 2·(ln(1/4) − ln(1/2)), ln(1/2) + 2·(ln(3/4) − ln(1/2)) ∝ (1/4, 9/4)
        // → p = (1/10, 9/10).
        let d = &Device::Cpu;
        let full = Tensor::new(&[[0.0f32, 0.0]], d).unwrap();
        let tuned = Tensor::new(&[[0.0f32, 3f32.ln()]], d).unwrap();
        let untuned = Tensor::new(&[[5.0f32, 5.0]], d).unwrap();
        let got = log_softmax(&proxy_logits(&full, &tuned, &untuned, 2.0, true).unwrap())
            .unwrap()
            .to_vec2::<f64>()
            .unwrap();
        // (ln 3 is rounded to f32.)
        assert!((got[0][0] - 0.1f64.ln()).abs() < 1e-6, "{got:?}");
        assert!((got[0][1] - 0.9f64.ln()).abs() < 1e-6, "{got:?}");
        // α = 0, or an unchanged adapter, gives the full model's distribution.
        let want = log_softmax(&full.to_dtype(DType::F64).unwrap())
            .unwrap()
            .to_vec2::<f64>()
            .unwrap();
        for (t, a) in [(&tuned, 0.0), (&untuned, 1.0)] {
            let got = log_softmax(&proxy_logits(&full, t, &untuned, a, true).unwrap())
                .unwrap()
                .to_vec2::<f64>()
                .unwrap();
            assert!((got[0][0] - want[0][0]).abs() < 1e-12);
        }
    }
}

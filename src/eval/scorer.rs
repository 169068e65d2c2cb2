//! What the measures score with: a model, or the proxy's logit arithmetic over three models
//! ([`Proxy`]). Multiple choice and perplexity see only this trait, so every measure reports
//! the proxy row with the same code as the model rows.

use crate::emulator::proxy::{proxy_logits, Proxy};
use crate::model::{Model, ModelCache};
use crate::ops::lm_head_nll;
use candle_core::{DType, Device, Result, Tensor, D};

/// Next-token scores of token sequences.
pub trait Scorer {
    /// Where its inputs live.
    fn device(&self) -> &Device;

    /// Scores after a shared context `ctx` (`[1, c]`): `[vocab]` for the position after the
    /// context and, for continuation rows `rest` (`[n, len]`, each continuing `ctx`),
    /// `[n, len, vocab]`. Scores are logits or log-probabilities: the caller normalises.
    fn shared_prefix(
        &self,
        ctx: &Tensor,
        rest: Option<&Tensor>,
    ) -> Result<(Tensor, Option<Tensor>)>;

    /// `−log p(targets[i] | inputs[..=i])` for every position of `inputs` (`[batch, seq]`),
    /// row-major; `targets` holds `batch · seq` ids.
    fn position_nll(&self, inputs: &Tensor, targets: &[u32]) -> Result<Vec<f64>>;
}

impl Scorer for Model {
    fn device(&self) -> &Device {
        Model::device(self)
    }

    fn shared_prefix(
        &self,
        ctx: &Tensor,
        rest: Option<&Tensor>,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let mut cache = ModelCache::default();
        let first = self.forward_cached_last(ctx, &mut cache)?.get(0)?;
        let rest = match rest {
            Some(ids) => {
                let mut batch = cache.repeat_batch(ids.dim(0)?)?;
                Some(self.forward_cached(ids, &mut batch)?)
            }
            None => None,
        };
        Ok((first, rest))
    }

    fn position_nll(&self, inputs: &Tensor, targets: &[u32]) -> Result<Vec<f64>> {
        let (b, t) = inputs.dims2()?;
        let h = self.hidden(inputs)?;
        let h = h.reshape((b * t, h.dim(D::Minus1)?))?;
        // The fused head: per-position NLL without the [tokens × vocab] logits.
        lm_head_nll(&h, self.head_weight().dense()?, targets)
    }
}

impl Scorer for Proxy {
    fn device(&self) -> &Device {
        self.full.device()
    }

    fn shared_prefix(
        &self,
        ctx: &Tensor,
        rest: Option<&Tensor>,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (f, fr) = self.full.shared_prefix(ctx, rest)?;
        let (t, tr) = self.tuned.shared_prefix(ctx, rest)?;
        let (u, ur) = self.untuned.shared_prefix(ctx, rest)?;
        let first = proxy_logits(&f, &t, &u, self.alpha, true)?;
        let rest = match (fr, tr, ur) {
            (Some(f), Some(t), Some(u)) => Some(proxy_logits(&f, &t, &u, self.alpha, true)?),
            _ => None,
        };
        Ok((first, rest))
    }

    fn position_nll(&self, inputs: &Tensor, targets: &[u32]) -> Result<Vec<f64>> {
        let (b, t) = inputs.dims2()?;
        let logp = self.log_probs(inputs)?;
        let v = logp.dim(D::Minus1)?;
        let ids = Tensor::new(targets, inputs.device())?.unsqueeze(1)?;
        logp.reshape((b * t, v))?
            .gather(&ids, 1)?
            .squeeze(1)?
            .to_dtype(DType::F64)?
            .neg()?
            .to_vec1::<f64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulator::{Adapter, EmulatorOptions, Package};
    use crate::model::{log_softmax, ModelConfig};
    use std::collections::BTreeMap;
    use std::path::Path;

    /// A full model, its package and an adapter whose top layer's weights are perturbed.
    pub(crate) fn proxy_parts(alpha: f64) -> (Model, Package, Adapter, Proxy) {
        let config = ModelConfig {
            num_layers: 6,
            ..ModelConfig::tiny()
        };
        let full = Model::random(&config, 21, DType::F32).unwrap();
        let options = EmulatorOptions::layer_drop(1, 2, 1);
        let pkg = Package::build(&full, None, options, Path::new("p.offsite")).unwrap();
        let top = pkg.meta.split.top[0];
        let mut trained = BTreeMap::new();
        for (name, t) in pkg.tensors.iter() {
            if crate::emulator::package::layer_index(name) == Some(top) && t.rank() == 2 {
                trained.insert(name.to_string(), (t * 1.5).unwrap());
            }
        }
        let adapter = Adapter::from_weights(&pkg, &trained, None, None).unwrap();
        let mut tuned = pkg.model().unwrap();
        adapter.apply(&mut tuned).unwrap();
        let proxy = Proxy {
            full: Model::random(&config, 21, DType::F32).unwrap(),
            tuned,
            untuned: pkg.model().unwrap(),
            alpha,
        };
        (full, pkg, adapter, proxy)
    }

    fn logp(model: &Model, ids: &Tensor) -> Vec<Vec<f64>> {
        let l = model.forward(ids).unwrap().get(0).unwrap();
        log_softmax(&l.to_dtype(DType::F64).unwrap())
            .unwrap()
            .to_vec2::<f64>()
            .unwrap()
    }

    #[test]
    fn proxy_nll_equals_a_hand_computation() {
        let (_, _, _, proxy) = proxy_parts(1.5);
        let ids_v = [3u32, 9, 4, 17, 2];
        let ids = Tensor::new(&ids_v, &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let (f, t, u) = (
            logp(&proxy.full, &ids),
            logp(&proxy.tuned, &ids),
            logp(&proxy.untuned, &ids),
        );
        let targets = [9u32, 4, 17, 2, 0];
        let got = proxy.position_nll(&ids, &targets).unwrap();
        for (i, &target) in targets.iter().enumerate() {
            // By hand: s = f + α(t − u), then −(s[target] − log Σ exp s).
            let s: Vec<f64> = (0..f[i].len())
                .map(|v| f[i][v] + 1.5 * (t[i][v] - u[i][v]))
                .collect();
            let lse = s.iter().map(|x| x.exp()).sum::<f64>().ln();
            let want = -(s[target as usize] - lse);
            assert!((got[i] - want).abs() < 1e-6, "{i}: {} vs {want}", got[i]);
        }
        // The cached, shared-prefix path gives the same distributions.
        let ctx = ids.narrow(1, 0, 2).unwrap();
        let rest = ids.narrow(1, 2, 3).unwrap();
        let (first, rest) = proxy.shared_prefix(&ctx, Some(&rest)).unwrap();
        // Scores, normalised by the caller.
        let first = log_softmax(&first).unwrap().to_vec1::<f64>().unwrap();
        let rest = log_softmax(&rest.unwrap().get(0).unwrap())
            .unwrap()
            .to_vec2::<f64>()
            .unwrap();
        assert!((-first[4] - got[1]).abs() < 1e-5);
        assert!((-rest[0][17] - got[2]).abs() < 1e-5);
        assert!((-rest[1][2] - got[3]).abs() < 1e-5);
    }
}

//! The whole decoder: embeddings, a list of addressable decoder layers that each remember their
//! original index, the final norm and the LM head.
//!
//! An emulator is a `Model` whose layer list is a subset of the original's; plug-in swaps layers
//! by original index. Nothing outside `model/` needs to know the family: the family builds the
//! [`Stem`] and the layers, and this file only strings them together.

use super::config::ModelConfig;
use super::families::{architecture, llama::LlamaLayer};
use super::layer::{DecoderLayer, LayerCache, LayerContext, RopeTable};
use super::stem::Stem;
use super::tensor_map::TensorMap;
use super::weight::Weight;
use candle_core::{DType, Device, Result, Tensor, D};
use std::path::Path;

/// A decoder-only language model.
#[derive(Debug)]
pub struct Model {
    config: ModelConfig,
    /// Embeddings, final norm and head.
    stem: Stem,
    layers: Vec<Box<dyn DecoderLayer>>,
    /// Original index (in the full model) of each entry of `layers`.
    layer_ids: Vec<usize>,
    /// For each RoPE θ the layers use: θ and the inverse frequencies, `[head_dim/2]`, in f64
    /// for accurate angles at long positions.
    inv_freq: Vec<(f64, Vec<f64>)>,
    device: Device,
    /// The frozen LM head packed in bf16 for the bf16 kernel ([`Model::set_precision`]).
    head_bf16: Option<std::sync::Arc<crate::ops::Bf16Weight>>,
    /// Products of trained weights and of activations (a trained head, attention) run in bf16
    /// on the bf16 kernel ([`Precision::Bf16`](super::Precision::Bf16)).
    bf16_products: bool,
}

/// One KV cache per layer, for incremental decoding.
#[derive(Debug, Default)]
pub struct ModelCache {
    layers: Vec<LayerCache>,
    len: usize,
}

impl ModelCache {
    /// Number of positions cached.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The cache of a batch-1 prefix repeated for `batch` sequences that continue it (e.g. the
    /// choices of a multiple-choice question after their shared context).
    pub fn repeat_batch(&self, batch: usize) -> Result<ModelCache> {
        let rep = |t: &Option<Tensor>| -> Result<Option<Tensor>> {
            t.as_ref()
                .map(|t| {
                    let mut dims = t.dims().to_vec();
                    dims[0] = batch;
                    t.broadcast_as(dims)?.contiguous()
                })
                .transpose()
        };
        Ok(ModelCache {
            layers: self
                .layers
                .iter()
                .map(|l| {
                    Ok(LayerCache {
                        k: rep(&l.k)?,
                        v: rep(&l.v)?,
                    })
                })
                .collect::<Result<_>>()?,
            len: self.len,
        })
    }
}

impl Clone for Model {
    fn clone(&self) -> Self {
        Model {
            config: self.config.clone(),
            stem: self.stem.clone(),
            layers: self.layers.iter().map(|l| l.boxed_clone()).collect(),
            layer_ids: self.layer_ids.clone(),
            inv_freq: self.inv_freq.clone(),
            device: self.device.clone(),
            head_bf16: self.head_bf16.clone(),
            bf16_products: self.bf16_products,
        }
    }
}

impl Model {
    /// Builds the model from HF-named tensors, keeping the layers listed in `layer_ids` (all
    /// layers when `None`). Every weight starts frozen.
    pub fn from_tensors(
        config: &ModelConfig,
        tensors: &TensorMap,
        layer_ids: Option<&[usize]>,
    ) -> crate::Result<Self> {
        config
            .validate()
            .map_err(|msg| crate::Error::format(tensors.origin(), msg))?;
        let layer_ids: Vec<usize> = match layer_ids {
            Some(ids) => ids.to_vec(),
            // Each layer has at least one weight: a damaged layer count is refused here, before
            // anything is sized by it.
            None if config.num_layers > tensors.len() => {
                return Err(crate::Error::format(
                    tensors.origin(),
                    format!(
                        "the configuration says {} layers but the checkpoint holds only {} tensors",
                        config.num_layers,
                        tensors.len()
                    ),
                ))
            }
            None => (0..config.num_layers).collect(),
        };
        if let Some(bad) = layer_ids.iter().find(|&&i| i >= config.num_layers) {
            return Err(crate::Error::Invalid(format!(
                "layer {bad} does not exist (the model has {})",
                config.num_layers
            )));
        }
        let arch = architecture(config.family);
        let stem = arch.stem(config, tensors)?;
        let device = stem.tokens.1.device();
        let layers = layer_ids
            .iter()
            .map(|&i| arch.layer(config, tensors, i))
            .collect::<crate::Result<Vec<_>>>()?;
        // Families without RoPE never ask for the tables; building them costs next to nothing.
        let half = config.head_dim / 2;
        let inv_freq = [Some(config.rope_theta), config.local_rope_theta]
            .into_iter()
            .flatten()
            .map(|theta| {
                let f = (0..half)
                    .map(|i| 1.0 / theta.powf(2.0 * i as f64 / config.head_dim as f64))
                    .collect();
                (theta, f)
            })
            .collect();
        Ok(Model {
            config: config.clone(),
            stem,
            layers,
            layer_ids,
            inv_freq,
            device,
            head_bf16: None,
            bf16_products: false,
        })
    }

    /// A LLaMA-layout model with random weights (uniform, ±0.035; norms 1 ± 0.1), for tests and
    /// examples. Other families load their (tiny) checkpoints instead.
    pub fn random(config: &ModelConfig, seed: u64, dtype: DType) -> crate::Result<Self> {
        let tensors = random_tensors(config, seed, dtype)?;
        Self::from_tensors(config, &tensors, None)
    }

    /// The configuration of the full model this one derives from.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The dtype of the weights.
    pub fn dtype(&self) -> DType {
        self.stem.tokens.1.dtype()
    }

    /// Original indices of the layers this model runs, in order.
    pub fn layer_ids(&self) -> &[usize] {
        &self.layer_ids
    }

    /// The decoder layers, in order.
    pub fn layers(&self) -> &[Box<dyn DecoderLayer>] {
        &self.layers
    }

    /// Mutable access to the decoder layers.
    pub fn layers_mut(&mut self) -> &mut [Box<dyn DecoderLayer>] {
        &mut self.layers
    }

    /// Every weight with its full HF name (layers under their original index), in a fixed order:
    /// embeddings, layers, final norm, untied head.
    pub fn named_weights(&self) -> Vec<(String, &Weight)> {
        let prefix = architecture(self.config.family).layer_prefix();
        let mut out = self.stem.weights(true);
        for (layer, &id) in self.layers.iter().zip(&self.layer_ids) {
            for (name, w) in layer.weights() {
                out.push((format!("{prefix}{id}.{name}"), w));
            }
        }
        out.extend(self.stem.weights(false));
        out
    }

    /// Mutable [`Model::named_weights`].
    pub fn named_weights_mut(&mut self) -> Vec<(String, &mut Weight)> {
        let prefix = architecture(self.config.family).layer_prefix();
        let Model {
            stem,
            layers,
            layer_ids,
            ..
        } = self;
        let (before, after) = stem.weights_mut();
        let mut out = before;
        for (layer, &id) in layers.iter_mut().zip(layer_ids.iter()) {
            for (name, w) in layer.weights_mut() {
                out.push((format!("{prefix}{id}.{name}"), w));
            }
        }
        out.extend(after);
        out
    }

    /// Sets which products run in bf16 (see [`Precision`](super::Precision)):
    /// frozen linear maps are stored in bf16 and packed ([`Linear::pack_bf16`](
    /// super::Linear::pack_bf16)), a frozen head is packed (it stays f32: it may be the
    /// embedding too), trained maps, a trained head and attention are flagged (their operands
    /// rounded per call). Call it after choosing what trains. Returns
    /// the bytes of the packed copies (0, and no change, without a bf16 kernel).
    pub fn set_precision(&mut self, precision: super::Precision) -> Result<usize> {
        use super::Precision;
        let precision = precision.resolve().0;
        let frozen = precision != Precision::F32;
        self.head_bf16 = None;
        let head = self.head_weight();
        if frozen && !head.is_trainable() {
            self.head_bf16 =
                crate::ops::Bf16Weight::pack(head.dense()?, false)?.map(std::sync::Arc::new);
        }

        self.bf16_products = precision == Precision::Bf16 && crate::ops::gemm_bf16::available();
        let mut bytes = self.head_bf16.as_ref().map_or(0, |p| p.bytes());
        for layer in self.layers.iter_mut() {
            for (_, linear) in layer.linears_mut() {
                bytes += linear.pack_bf16(frozen)?;
                linear.bf16_trained = precision == Precision::Bf16;
            }
        }
        Ok(bytes)
    }

    /// Number of scalar parameters (a tied head counted once).
    pub fn num_parameters(&self) -> usize {
        self.named_weights()
            .iter()
            .map(|(_, w)| w.elem_count())
            .sum()
    }

    /// The weights by name as dense tensors, sharing storage (quantized ones dequantized into
    /// fresh f32 tensors), e.g. for saving or fingerprints.
    pub fn dense_weights(&self) -> Result<Vec<(String, Tensor)>> {
        self.named_weights()
            .into_iter()
            .map(|(name, w)| Ok((name, w.tensor()?.into_owned())))
            .collect()
    }

    /// The weights as a tensor map (as [`Model::dense_weights`]), e.g. for saving.
    pub fn to_tensor_map(&self, origin: &Path) -> Result<TensorMap> {
        let mut map = TensorMap::new(origin);
        for (name, t) in self.dense_weights()? {
            map.insert(name, t, origin);
        }
        Ok(map)
    }

    /// The input of the first layer for `ids` (`[batch, seq]` u32) at positions `0..seq`:
    /// token embeddings plus whatever the family adds (positions, scale, norm).
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        self.stem.embed(ids, 0)
    }

    /// The per-forward context for `seq` positions starting at `offset`.
    pub fn layer_context(&self, offset: usize, seq: usize) -> Result<LayerContext> {
        let dtype = self.dtype();
        let rope = self
            .inv_freq
            .iter()
            .map(|(theta, freqs)| {
                let half = freqs.len();
                let mut cos = Vec::with_capacity(seq * half);
                let mut sin = Vec::with_capacity(seq * half);
                for pos in offset..offset + seq {
                    for &f in freqs {
                        let angle = pos as f64 * f;
                        cos.push(angle.cos());
                        sin.push(angle.sin());
                    }
                }
                Ok(RopeTable {
                    theta: *theta,
                    cos: Tensor::from_vec(cos, (seq, half), &self.device)?.to_dtype(dtype)?,
                    sin: Tensor::from_vec(sin, (seq, half), &self.device)?.to_dtype(dtype)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(LayerContext {
            offset,
            rope,
            dropout_seed: None,
            bf16_products: self.bf16_products,
        })
    }

    /// Runs the layers at positions `range` of this model's layer list over the residual stream.
    pub fn forward_layers(
        &self,
        mut h: Tensor,
        ctx: &LayerContext,
        range: std::ops::Range<usize>,
    ) -> Result<Tensor> {
        for layer in &self.layers[range] {
            h = layer.forward(&h, ctx, None)?;
        }
        Ok(h)
    }

    /// Final norm + LM head: `[batch, seq, hidden]` → logits `[batch, seq, vocab]`.
    pub fn head(&self, h: &Tensor) -> Result<Tensor> {
        self.logits(&self.stem.final_norm(h)?)
    }

    /// The LM head's weight `[vocab, hidden]` (the embedding when tied).
    pub fn head_weight(&self) -> &Weight {
        self.stem.head_weight()
    }

    /// The final norm's output for token ids `[batch, seq]`: what the LM head reads. Losses use
    /// it with the fused head + cross-entropy op instead of materialising the logits.
    pub fn hidden(&self, ids: &Tensor) -> Result<Tensor> {
        self.hidden_seeded(ids, None)
    }

    /// [`Model::hidden`] for training: `dropout_seed` draws this pass's dropout masks.
    pub fn hidden_seeded(&self, ids: &Tensor, dropout_seed: Option<u64>) -> Result<Tensor> {
        let (_, t) = ids.dims2()?;
        let mut ctx = self.layer_context(0, t)?;
        ctx.dropout_seed = dropout_seed;
        let h = self.forward_layers(self.embed(ids)?, &ctx, 0..self.layers.len())?;
        self.stem.final_norm(&h)
    }

    /// The final norm's output, `[batch, seq, hidden]`.
    pub fn final_norm(&self, h: &Tensor) -> Result<Tensor> {
        self.stem.final_norm(h)
    }

    /// Logits `[batch, seq, vocab]` for token ids `[batch, seq]`.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let (_, t) = ids.dims2()?;
        let ctx = self.layer_context(0, t)?;
        let h = self.forward_layers(self.embed(ids)?, &ctx, 0..self.layers.len())?;
        self.head(&h)
    }

    /// The residual stream after the embedding and after each layer: `1 + layers` tensors.
    pub fn hidden_states(&self, ids: &Tensor) -> Result<Vec<Tensor>> {
        let (_, t) = ids.dims2()?;
        let ctx = self.layer_context(0, t)?;
        let mut h = self.embed(ids)?;
        let mut out = vec![h.clone()];
        for layer in &self.layers {
            h = layer.forward(&h, &ctx, None)?;
            out.push(h.clone());
        }
        Ok(out)
    }

    /// Logits for `ids` (`[batch, seq]`) continuing the cached positions; extends the cache.
    pub fn forward_cached(&self, ids: &Tensor, cache: &mut ModelCache) -> Result<Tensor> {
        self.logits(&self.hidden_cached(ids, cache)?)
    }

    /// Logits of the last position only, `[batch, vocab]`, continuing the cache: what decoding
    /// and the context pass of multiple-choice scoring need, without the head on every position.
    pub fn forward_cached_last(&self, ids: &Tensor, cache: &mut ModelCache) -> Result<Tensor> {
        let h = self.hidden_cached(ids, cache)?;
        let t = h.dim(1)?;
        self.logits(&h.narrow(1, t - 1, 1)?)?.squeeze(1)
    }

    /// The LM head alone over final-normed hidden states.
    pub fn logits(&self, h: &Tensor) -> Result<Tensor> {
        let mut head = super::weight::Linear::new(self.head_weight().clone());
        head.bf16 = self.head_bf16.clone();
        head.forward(h)
    }

    /// The frozen head's bf16 packing, while it packs the current head.
    pub fn head_bf16(&self) -> Option<&std::sync::Arc<crate::ops::Bf16Weight>> {
        self.head_bf16
            .as_ref()
            .filter(|p| self.head_weight().dense().is_ok_and(|h| p.packs(h)))
    }

    /// Where the fused head + loss runs its products (see [`Model::set_precision`]).
    pub fn head_products(&self) -> crate::ops::HeadProducts<'_> {
        use crate::ops::HeadProducts;
        match self.head_bf16() {
            Some(packed) => HeadProducts::Packed(packed),
            None if self.bf16_products && self.head_weight().is_trainable() => {
                HeadProducts::PackPerCall
            }
            None => HeadProducts::F32,
        }
    }

    /// Final-normed hidden states for `ids` continuing the cached positions; extends the cache.
    pub fn hidden_cached(&self, ids: &Tensor, cache: &mut ModelCache) -> Result<Tensor> {
        let (_, t) = ids.dims2()?;
        if cache.layers.len() != self.layers.len() {
            cache.layers = vec![LayerCache::default(); self.layers.len()];
            cache.len = 0;
        }
        let ctx = self.layer_context(cache.len, t)?;
        let mut h = self.stem.embed(ids, cache.len)?;
        for (layer, lc) in self.layers.iter().zip(cache.layers.iter_mut()) {
            h = layer.forward(&h, &ctx, Some(lc))?;
        }
        cache.len += t;
        self.stem.final_norm(&h)
    }

    /// Mean next-token cross-entropy of `ids` (`[batch, seq]`), each position predicting the next.
    pub fn mean_next_token_ce(&self, ids: &Tensor) -> Result<Tensor> {
        let (_, t) = ids.dims2()?;
        let logits = self.forward(ids)?.narrow(1, 0, t - 1)?;
        let targets = ids.narrow(1, 1, t - 1)?;
        cross_entropy(&logits, &targets)
    }
}

/// Log-probabilities over the last dimension, in f32 or wider.
pub fn log_softmax(logits: &Tensor) -> Result<Tensor> {
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&lse)
}

/// Mean cross-entropy of `logits` `[.., vocab]` against `targets` `[..]` (u32).
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let v = logits.dim(D::Minus1)?;
    let logp = log_softmax(&logits.reshape(((), v))?)?;
    let picked = logp.gather(&targets.flatten_all()?.unsqueeze(1)?, 1)?;
    picked.mean_all()?.neg()
}

/// Random HF-named tensors for `config`, in LLaMA's layout (see [`Model::random`]).
pub fn random_tensors(config: &ModelConfig, seed: u64, dtype: DType) -> crate::Result<TensorMap> {
    use rand::{Rng, SeedableRng};
    if config.family != super::config::Family::Llama {
        return Err(crate::Error::Invalid(format!(
            "random weights exist for LLaMA's layout only, not {}",
            config.family.name()
        )));
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let origin = Path::new("<random>");
    let mut map = TensorMap::new(origin);
    let mut add = |name: String, shape: &[usize], norm: bool| -> crate::Result<()> {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n)
            .map(|_| {
                let u: f32 = rng.random_range(-1.0..1.0);
                if norm {
                    1.0 + 0.1 * u
                } else {
                    0.035 * u
                }
            })
            .collect();
        let t = Tensor::from_vec(data, shape, &Device::Cpu)?.to_dtype(dtype)?;
        map.insert(name, t, origin);
        Ok(())
    };
    let (v, h) = (config.vocab_size, config.hidden_size);
    add("model.embed_tokens.weight".into(), &[v, h], false)?;
    for i in 0..config.num_layers {
        for (name, shape) in super::llama::WEIGHT_NAMES
            .iter()
            .zip(LlamaLayer::weight_shapes(config))
        {
            add(format!("model.layers.{i}.{name}"), &shape, shape.len() == 1)?;
        }
    }
    add("model.norm.weight".into(), &[h], true)?;
    if !config.tie_word_embeddings {
        add("lm_head.weight".into(), &[v, h], false)?;
    }
    Ok(map)
}

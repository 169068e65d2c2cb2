//! One module per model family. A family supplies, through [`Architecture`]: how to read its
//! `config.json`, where its layers live in the HF names, its [`Stem`] (embeddings, final norm,
//! head), its [`DecoderLayer`], and its PEFT defaults. Everything else (model, emulator,
//! trainer, plug-in, evaluation) is family-agnostic.
//!
//! Adding a family: write `families/<name>.rs` with a config reader, a stem builder and a layer
//! (forward + module list); add a [`Family`] variant (with its HF `model_type` in
//! `Family::name` and its entry in `Family::ALL`) and its arm in [`architecture`].

pub mod bloom;
pub mod classic;
pub mod gemma3;
pub mod gpt2;
pub mod llama;
pub mod opt;
pub mod qwen2;

use super::config::{Family, HfJson, ModelConfig};
use super::layer::DecoderLayer;
use super::stem::Stem;
use super::tensor_map::TensorMap;
use super::weight::{Linear, Norm, NormKind, Weight};
use crate::Result;

/// What a model family implements. The defaults describe LLaMA's layout, which most modern
/// families (Qwen2, Gemma 3, Mistral, …) share: layers under `model.layers.`, an RMSNorm stem,
/// LoRA on every projection, adapters after `o_proj` and `down_proj`.
pub trait Architecture: Sync {
    /// Reads the family's `config.json`.
    fn config(&self, json: &HfJson) -> Result<ModelConfig>;

    /// Builds layer `index` from `tensors` (all frozen).
    fn layer(
        &self,
        config: &ModelConfig,
        tensors: &TensorMap,
        index: usize,
    ) -> Result<Box<dyn DecoderLayer>>;

    /// The HF name prefix of layer `N`'s weights, up to the index (`model.layers.`).
    fn layer_prefix(&self) -> &'static str {
        "model.layers."
    }

    /// Builds the embeddings, final norm and head from `tensors` (all frozen).
    fn stem(&self, config: &ModelConfig, tensors: &TensorMap) -> Result<Stem> {
        llama::rms_stem(config, tensors, NormKind::Rms)
    }

    /// The linear maps LoRA adapts by default (module names).
    fn lora_targets(&self) -> &'static [&'static str] {
        llama::LORA_TARGETS
    }

    /// The linear maps bottleneck adapters follow by default: the attention output and the MLP
    /// output (module names).
    fn adapter_targets(&self) -> &'static [&'static str] {
        &["o_proj", "down_proj"]
    }

    /// Whether the weights LoRA adapts are stored `[in, out]` (GPT-2's `Conv1D`), which PEFT
    /// must be told (`fan_in_fan_out`).
    fn fan_in_fan_out(&self) -> bool {
        false
    }

    /// The prefix of the base model's weights in the causal-LM class (`model.`, GPT-2's and
    /// BLOOM's `transformer.`). Checkpoints saved from the base class (the original GPT-2, OPT
    /// and BLOOM uploads) lack it; [`canonical_names`] adds it.
    fn base_prefix(&self) -> &'static str {
        "model."
    }
}

/// Renames the tensors of a checkpoint saved from the family's base model class (`h.0.…`,
/// `decoder.…`, `word_embeddings.…`) to the causal-LM names the family reads
/// (`transformer.h.0.…`): when no tensor has the base-model prefix, every tensor but the LM head
/// gets it.
pub fn canonical_names(family: Family, tensors: TensorMap) -> TensorMap {
    let prefix = architecture(family).base_prefix();
    if tensors.names().any(|n| n.starts_with(prefix)) {
        return tensors;
    }
    let mut out = TensorMap::new(tensors.origin());
    for (name, tensor, file) in tensors.into_entries() {
        let name = if name.starts_with("lm_head.") {
            name
        } else {
            format!("{prefix}{name}")
        };
        out.insert(name, tensor, &file);
    }
    out
}

/// The original layer index of an HF weight name, for any family (`None` for the stem's
/// weights). Layer prefixes never overlap between families, so the name alone decides.
pub fn layer_index(name: &str) -> Option<usize> {
    Family::ALL.iter().find_map(|&f| {
        name.strip_prefix(architecture(f).layer_prefix())?
            .split('.')
            .next()?
            .parse()
            .ok()
    })
}

/// Whether the weight `name` belongs to one of `layers` (original indices); embeddings, the
/// final norm and the head belong to none.
pub fn in_layers(name: &str, layers: &[usize]) -> bool {
    layer_index(name).is_some_and(|i| layers.contains(&i))
}

/// Element-wise activations of the families' MLPs, each built from candle ops with a backward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `x·σ(x)`.
    Silu,
    /// GELU, tanh approximation (`gelu_new`, `gelu_pytorch_tanh`, BLOOM's GELU).
    GeluTanh,
    /// GELU with erf (`gelu`).
    GeluErf,
    /// `max(x, 0)`.
    Relu,
}

impl Activation {
    /// The activation an HF `activation_function` / `hidden_act` string names.
    pub fn parse(json: &HfJson, keys: &[&str], default: Activation) -> Result<Self> {
        Ok(match json.str(keys)?.as_deref() {
            None => default,
            Some("silu" | "swish") => Activation::Silu,
            Some("gelu_new" | "gelu_pytorch_tanh" | "gelu_fast") => Activation::GeluTanh,
            Some("gelu") => Activation::GeluErf,
            Some("relu") => Activation::Relu,
            Some(other) => return Err(json.error(format!("activation `{other}` is not supported"))),
        })
    }

    /// Applies it.
    pub fn apply(self, x: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
        match self {
            Activation::Silu => x.silu(),
            Activation::GeluTanh => x.gelu(),
            Activation::GeluErf => x.gelu_erf(),
            Activation::Relu => x.relu(),
        }
    }
}

/// The implementation of `family`.
pub fn architecture(family: Family) -> &'static dyn Architecture {
    match family {
        Family::Llama => &llama::Llama,
        Family::Qwen2 => &qwen2::Qwen2,
        Family::Gpt2 => &gpt2::Gpt2,
        Family::Opt => &opt::Opt,
        Family::Bloom => &bloom::Bloom,
        Family::Gemma3 => &gemma3::Gemma3,
    }
}

/// Reads the weights of one module tree (a layer, or the stem) from a tensor map, checking
/// shapes; every weight starts frozen.
pub struct Loader<'a> {
    /// Where the tensors are.
    pub tensors: &'a TensorMap,
    /// Prefix of every name read (`model.layers.3.`, or empty).
    pub prefix: String,
}

impl Loader<'_> {
    /// The frozen weight `prefix + name`, checked to have `shape`.
    pub fn weight(&self, name: &str, shape: &[usize]) -> Result<Weight> {
        self.tensors
            .get(&format!("{}{name}", self.prefix), shape)
            .map(Weight::Frozen)
    }

    /// An `nn.Linear` (`[out, in]`) at module path `path`, with a bias when `bias`; its weight
    /// stays in its block format when the map holds it quantized.
    pub fn linear(&self, path: &str, out_f: usize, in_f: usize, bias: bool) -> Result<Linear> {
        let name = format!("{}{path}.weight", self.prefix);
        let weight = match self.tensors.get_quantized(&name, &[out_f, in_f])? {
            Some(q) => Weight::Quantized(q),
            None => self.weight(&format!("{path}.weight"), &[out_f, in_f])?,
        };
        let bias = bias
            .then(|| self.weight(&format!("{path}.bias"), &[out_f]))
            .transpose()?;
        Ok(Linear::with_bias(weight, bias))
    }

    /// A GPT-2 `Conv1D` (`[in, out]`, with bias) at module path `path`.
    pub fn conv1d(&self, path: &str, in_f: usize, out_f: usize) -> Result<Linear> {
        let weight = self.weight(&format!("{path}.weight"), &[in_f, out_f])?;
        let bias = Some(self.weight(&format!("{path}.bias"), &[out_f])?);
        Ok(Linear {
            fan_in_fan_out: true,
            ..Linear::with_bias(weight, bias)
        })
    }

    /// A LayerNorm (weight and bias) over `dim` at module path `path`.
    pub fn layer_norm(&self, path: &str, dim: usize, eps: f64) -> Result<Norm> {
        Ok(Norm {
            kind: NormKind::Layer,
            weight: self.weight(&format!("{path}.weight"), &[dim])?,
            bias: Some(self.weight(&format!("{path}.bias"), &[dim])?),
            eps,
        })
    }

    /// An RMSNorm of `kind` over `dim` at module path `path`.
    pub fn rms_norm(&self, path: &str, dim: usize, eps: f64, kind: NormKind) -> Result<Norm> {
        Ok(Norm::rms(
            kind,
            self.weight(&format!("{path}.weight"), &[dim])?,
            eps,
        ))
    }
}

/// The family's own `config.json`, which the loaders read their extra settings from.
pub fn hf_json(config: &ModelConfig) -> crate::Result<HfJson<'_>> {
    let raw = config.hf_config.as_ref().ok_or_else(|| {
        crate::Error::Invalid(format!(
            "a {} model needs its config.json settings",
            config.family.name()
        ))
    })?;
    Ok(HfJson {
        raw,
        path: std::path::Path::new("config.json"),
    })
}

/// A loader for layer `index` of a family whose layers live under `prefix`.
pub fn layer_loader<'a>(tensors: &'a TensorMap, prefix: &str, index: usize) -> Loader<'a> {
    Loader {
        tensors,
        prefix: format!("{prefix}{index}."),
    }
}

/// A loader for names as they are (the stem).
pub fn root_loader(tensors: &TensorMap) -> Loader<'_> {
    Loader {
        tensors,
        prefix: String::new(),
    }
}

/// The untied LM head `lm_head.weight` when the config says the head is not tied.
pub fn untied_head(config: &ModelConfig, tensors: &TensorMap) -> Result<Option<(String, Weight)>> {
    if config.tie_word_embeddings {
        return Ok(None);
    }
    let w =
        root_loader(tensors).weight("lm_head.weight", &[config.vocab_size, config.hidden_size])?;
    Ok(Some(("lm_head.weight".into(), w)))
}

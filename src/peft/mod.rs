//! Parameter-efficient tuning: LoRA, bottleneck adapters and BitFit. Injection is by module name
//! through the `DecoderLayer` trait, so it works for any family that names its linear maps; the
//! tuning code (adapter or full model) only says which layers and which [`Method`].

pub mod bottleneck;
pub mod lora;

pub use bottleneck::{Bottleneck, BottleneckConfig};
pub use lora::{Lora, LoraConfig};

use crate::model::{architecture, Linear, Model, ModelConfig, TensorMap};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// What of the chosen layers is trained.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Every weight.
    Full,
    /// A LoRA update of their linear maps.
    Lora(LoraConfig),
    /// Bottleneck adapters on the outputs of some linear maps.
    Adapter(BottleneckConfig),
    /// Their 1-D parameters only (norm weights; biases where the family has them).
    BitFit,
}

impl Method {
    /// Short name, as `--peft` spells it (`full` for all weights).
    pub fn name(&self) -> &'static str {
        match self {
            Method::Full => "full",
            Method::Lora(_) => "lora",
            Method::Adapter(_) => "adapter",
            Method::BitFit => "bitfit",
        }
    }

    /// The method with the family's default target maps filled in where none were given (the
    /// adapter files then record the maps actually adapted).
    pub fn for_model(&self, config: &ModelConfig) -> Method {
        match self {
            Method::Lora(c) => Method::Lora(LoraConfig {
                targets: default_targets(config, &c.targets, false),
                fan_in_fan_out: architecture(config.family).fan_in_fan_out(),
                ..c.clone()
            }),
            Method::Adapter(c) => Method::Adapter(BottleneckConfig {
                targets: default_targets(config, &c.targets, true),
                ..c.clone()
            }),
            other => other.clone(),
        }
    }

    /// Adds the method's modules (if any) to `layers` (original indices) of `model`, seeded.
    pub fn inject(&self, model: &mut Model, layers: &[usize], seed: u64) -> Result<()> {
        match self {
            Method::Full | Method::BitFit => Ok(()),
            Method::Lora(config) => add_lora(model, layers, config, seed),
            Method::Adapter(config) => add_bottleneck(model, layers, config, seed),
        }
    }

    /// Whether the weight `name` (with the given rank) of a chosen layer is trained.
    pub fn trains(&self, name: &str, rank: usize) -> bool {
        match self {
            Method::Full => !is_peft_weight(name),
            Method::Lora(_) => is_lora_weight(name),
            Method::Adapter(_) => is_bottleneck_weight(name),
            Method::BitFit => rank == 1 && !is_peft_weight(name),
        }
    }
}

/// `targets`, or when empty the family's default LoRA (or, with `adapter`, bottleneck adapter)
/// targets.
fn default_targets(config: &ModelConfig, targets: &[String], adapter: bool) -> Vec<String> {
    if !targets.is_empty() {
        return targets.to_vec();
    }
    let arch = architecture(config.family);
    let names = if adapter {
        arch.adapter_targets()
    } else {
        arch.lora_targets()
    };
    names.iter().map(|s| s.to_string()).collect()
}

/// Calls `f(original layer index, position of the map in its layer, map)` for every linear map
/// of `layers` whose module name (last path component, e.g. `q_proj`, or the full path) is in
/// `targets`; fails when a target matches no map.
fn for_each_target(
    model: &mut Model,
    layers: &[usize],
    targets: &[String],
    mut f: impl FnMut(usize, usize, &mut Linear) -> Result<()>,
) -> Result<()> {
    let ids = model.layer_ids().to_vec();
    let mut matched = std::collections::BTreeSet::new();
    for (layer, id) in model.layers_mut().iter_mut().zip(ids) {
        if !layers.contains(&id) {
            continue;
        }
        for (j, (module, linear)) in layer.linears_mut().into_iter().enumerate() {
            let short = module.rsplit('.').next().unwrap_or(module);
            let Some(t) = targets.iter().find(|t| *t == short || *t == module) else {
                continue;
            };
            matched.insert(t.clone());
            f(id, j, linear)?;
        }
    }
    match targets.iter().find(|t| !matched.contains(*t)) {
        Some(t) => Err(Error::Invalid(format!(
            "no linear map named `{t}` in the chosen layers"
        ))),
        None => Ok(()),
    }
}

/// Adds a fresh LoRA to every linear map whose module name is in `config.targets`, in the layers
/// whose original index is in `layers`. Initialisation is seeded per layer and module, so it is
/// reproducible.
pub fn add_lora(model: &mut Model, layers: &[usize], config: &LoraConfig, seed: u64) -> Result<()> {
    if config.r == 0 {
        return Err(Error::Invalid("LoRA rank must be at least 1".into()));
    }
    let dtype = model.dtype();
    let targets = default_targets(model.config(), &config.targets, false);
    for_each_target(model, layers, &targets, |id, j, linear| {
        let (out_f, in_f) = linear.dims()?;
        let s = lora::mix_seed(seed, (id * 64 + j) as u64);
        linear.lora = Some(Lora::init(out_f, in_f, config, s, dtype)?);
        Ok(())
    })
}

/// Adds a fresh bottleneck adapter after every linear map whose module name is in
/// `config.targets`, in the layers whose original index is in `layers`; seeded like
/// [`add_lora`].
pub fn add_bottleneck(
    model: &mut Model,
    layers: &[usize],
    config: &BottleneckConfig,
    seed: u64,
) -> Result<()> {
    if config.size == 0 {
        return Err(Error::Invalid("the adapter size must be at least 1".into()));
    }
    if !(0.0..1.0).contains(&config.dropout) {
        return Err(Error::Invalid(format!(
            "the adapter dropout must be in [0, 1), not {}",
            config.dropout
        )));
    }
    let dtype = model.dtype();
    let targets = default_targets(model.config(), &config.targets, true);
    for_each_target(model, layers, &targets, |id, j, linear| {
        let (out_f, _) = linear.dims()?;
        // Offset from LoRA's streams so that both on one map would not share an init.
        let s = lora::mix_seed(seed, (id * 64 + j) as u64 + 0x4000_0000);
        linear.adapter = Some(Bottleneck::init(out_f, config, s, dtype)?);
        Ok(())
    })
}

/// Rebuilds the (frozen) bottleneck adapters whose weights `tensors` holds — a plugged model in
/// offsite's format — on the maps of `model` they belong to. Returns how many it attached.
pub fn attach_stored_bottlenecks(model: &mut Model, tensors: &TensorMap) -> Result<usize> {
    let ids = model.layer_ids().to_vec();
    let prefix = model.config().layer_prefix();
    let mut attached = 0;
    for (layer, id) in model.layers_mut().iter_mut().zip(ids) {
        for (module, linear) in layer.linears_mut() {
            let name = |suffix: &str| format!("{prefix}{id}.{module}.{suffix}");
            if !tensors.contains(&name(bottleneck::WEIGHT_SUFFIXES[0])) {
                continue;
            }
            let (dim, _) = linear.dims()?;
            // The shape checks below report a malformed tensor against its file.
            let size = tensors
                .dims(&name(bottleneck::WEIGHT_SUFFIXES[0]))
                .and_then(|d| d.first().copied())
                .unwrap_or(0);
            let shapes = [vec![size, dim], vec![size], vec![dim, size], vec![dim]];
            let mut parts = Vec::with_capacity(4);
            for (suffix, shape) in bottleneck::WEIGHT_SUFFIXES.iter().zip(&shapes) {
                parts.push(tensors.get(&name(suffix), shape)?);
            }
            let parts: [candle_core::Tensor; 4] = parts.try_into().expect("four weights");
            linear.adapter = Some(Bottleneck::from_tensors(parts));
            attached += 1;
        }
    }
    Ok(attached)
}

/// Folds every LoRA update into its base weight.
pub fn merge_lora(model: &mut Model) -> Result<()> {
    for layer in model.layers_mut() {
        for (_, linear) in layer.linears_mut() {
            linear.merge_lora()?;
        }
    }
    Ok(())
}

/// Whether a weight name is a LoRA weight.
pub fn is_lora_weight(name: &str) -> bool {
    name.contains(".lora_A.") || name.contains(".lora_B.")
}

/// Whether a weight name is a bottleneck adapter's weight.
pub fn is_bottleneck_weight(name: &str) -> bool {
    name.contains(".adapter.down.") || name.contains(".adapter.up.")
}

/// Whether a weight belongs to a PEFT module rather than to the model itself.
pub fn is_peft_weight(name: &str) -> bool {
    is_lora_weight(name) || is_bottleneck_weight(name)
}

#[cfg(test)]
mod tests;

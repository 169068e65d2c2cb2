//! Parameter-efficient tuning inside the adapter layers: LoRA now; bottleneck adapters and
//! BitFit next. Injection is by module name through the `DecoderLayer` trait, so it works for any
//! family that names its linear maps.

pub mod lora;

pub use lora::{Lora, LoraConfig};

use crate::model::Model;
use crate::{Error, Result};

/// Adds a fresh LoRA to every linear map whose module name (last path component, e.g.
/// `q_proj`) is in `config.targets`, in the layers whose original index is in `layers`.
/// Initialisation is seeded per layer and module, so it is reproducible.
pub fn add_lora(model: &mut Model, layers: &[usize], config: &LoraConfig, seed: u64) -> Result<()> {
    if config.r == 0 {
        return Err(Error::Invalid("LoRA rank must be at least 1".into()));
    }
    let dtype = model.dtype();
    let ids = model.layer_ids().to_vec();
    let mut matched = std::collections::BTreeSet::new();
    for (layer, id) in model.layers_mut().iter_mut().zip(ids) {
        if !layers.contains(&id) {
            continue;
        }
        for (j, (module, linear)) in layer.linears_mut().into_iter().enumerate() {
            let short = module.rsplit('.').next().unwrap_or(module);
            if !config.targets.iter().any(|t| t == short || t == module) {
                continue;
            }
            matched.insert(short.to_string());
            let (out_f, in_f) = linear.weight.tensor().dims2()?;
            let s = lora::mix_seed(seed, (id * 64 + j) as u64);
            linear.lora = Some(Lora::init(out_f, in_f, config, s, dtype)?);
        }
    }
    if let Some(t) = config
        .targets
        .iter()
        .find(|t| !matched.contains(t.as_str()))
    {
        return Err(Error::Invalid(format!(
            "no linear map named `{t}` in the adapter layers"
        )));
    }
    Ok(())
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

#[cfg(test)]
mod tests;

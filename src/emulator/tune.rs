//! The data owner's step: train the adapter layers through the frozen emulator — all their
//! weights, or a LoRA update of them.

use super::adapter::Adapter;
use super::package::{layer_index, Package};
use crate::data::Sequence;
use crate::peft::{add_lora, is_lora_weight, LoraConfig};
use crate::train::{self, loss::lm_loss, trainable_params, TrainJob, TrainOptions};
use crate::Result;
use std::path::Path;

/// What of the adapter layers is trained.
#[derive(Clone, Debug, PartialEq)]
pub enum Method {
    /// Every weight of the adapter layers.
    Full,
    /// A LoRA update of their linear maps.
    Lora(LoraConfig),
    /// Their 1-D parameters only (norm weights; biases where the family has them).
    BitFit,
}

/// Tunes the adapter of `package` on `train` (validating on `val`) and writes it to `output`
/// (a file; a PEFT directory for LoRA). Embeddings, head and emulator layers stay frozen; with
/// `lora`, the adapter layers' own weights stay frozen too and only LoRA matrices train.
pub fn tune(
    package: &Package,
    train_data: &[Sequence],
    val: Option<&[Sequence]>,
    options: &TrainOptions,
    method: &Method,
    pad: u32,
    output: &Path,
) -> Result<Adapter> {
    let mut model = package.model()?;
    let adapter_layers = package.meta.split.adapter();
    let in_adapter = |name: &str| layer_index(name).is_some_and(|i| adapter_layers.contains(&i));
    let params = match method {
        Method::Full => trainable_params(&mut model, in_adapter)?,
        Method::Lora(config) => {
            add_lora(&mut model, &adapter_layers, config, options.seed)?;
            trainable_params(&mut model, |n| in_adapter(n) && is_lora_weight(n))?
        }
        Method::BitFit => {
            let one_d: Vec<String> = model
                .named_weights()
                .into_iter()
                .filter(|(n, w)| in_adapter(n) && w.tensor().rank() == 1)
                .map(|(n, _)| n)
                .collect();
            trainable_params(&mut model, |n| one_d.iter().any(|o| o == n))?
        }
    };
    let total = model.num_parameters();
    let mut job = TrainJob::beside(output, "tune", params, train_data, val, pad, options, total);
    job.device = model.device().clone();
    let checkpoint_dir = job.checkpoint_dir.clone();
    let outcome = train::train(job, &|batch, seed| lm_loss(&model, batch, seed))?;
    let (training, metrics) = (Some(options.clone()), Some(outcome.summary));
    let adapter = match method {
        Method::Full => Adapter::from_weights(package, &outcome.params, training, metrics)?,
        Method::Lora(config) => {
            Adapter::from_lora(package, config, &outcome.params, training, metrics)?
        }
        Method::BitFit => Adapter::bitfit(package, &outcome.params, training, metrics)?,
    };
    adapter.save(output)?;
    // The adapter is written; the run's checkpoints are no longer needed.
    let _ = std::fs::remove_dir_all(&checkpoint_dir);
    Ok(adapter)
}

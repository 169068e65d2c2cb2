//! The data owner's step: train the adapter layers through the frozen emulator — all their
//! weights, or a parameter-efficient part of them (LoRA, bottleneck adapters, BitFit).

use super::adapter::Adapter;
use super::package::Package;
use crate::data::Sequence;
use crate::peft::Method;
use crate::train::loss::{lm_loss, Pull};
use crate::train::{self, prepare, TrainJob, TrainOptions};
use crate::{Error, Result};
use std::path::Path;

/// Where a tuning round starts when it does not start from the package's own adapter: an
/// earlier round's adapter (FedBiOT-style rounds through a re-distilled emulator, federated
/// rounds), with an optional pull towards it.
pub struct TuneStart<'a> {
    /// The adapter to start from: all adapter-layer weights (or BitFit's 1-D ones) of the same
    /// model's adapter layers, tuned through this package or an earlier one of the same model.
    pub adapter: &'a Adapter,
    /// Weight of the L2 pull towards its weights ([`Pull`]); 0 for none.
    pub pull: f64,
}

impl TuneStart<'_> {
    /// Refuses a start that is not an adapter of `package`'s model and layers, or one the
    /// method cannot continue.
    fn check(&self, package: &Package, method: &Method) -> Result<()> {
        let a = self.adapter;
        let origin = a.tensors.origin();
        if a.meta.source_fingerprint != package.meta.source_fingerprint {
            return Err(Error::format(
                origin,
                "this adapter belongs to another model than the emulator package's",
            ));
        }
        if a.meta.adapter_layers != package.meta.split.adapter() {
            return Err(Error::format(
                origin,
                format!(
                    "this adapter holds layers {:?}, the package's adapter is layers {:?}",
                    a.meta.adapter_layers,
                    package.meta.split.adapter()
                ),
            ));
        }
        let continuable = matches!(
            (a.kind(), method),
            ("full", Method::Full) | ("bitfit", Method::BitFit)
        );
        if !continuable {
            return Err(Error::format(
                origin,
                format!(
                    "a {} adapter cannot start a {} tuning (start from a full adapter without \
                     --peft, or a BitFit one with --peft bitfit)",
                    a.kind(),
                    method.name()
                ),
            ));
        }
        Ok(())
    }
}

/// Tunes the adapter of `package` on `train` (validating on `val`) and writes it to `output`
/// (a file; a PEFT directory for LoRA). Embeddings, head and emulator layers stay frozen; with a
/// PEFT method, only what [`Method::trains`] names in the adapter layers trains.
pub fn tune(
    package: &Package,
    train_data: &[Sequence],
    val: Option<&[Sequence]>,
    options: &TrainOptions,
    method: &Method,
    pad: u32,
    output: &Path,
) -> Result<Adapter> {
    tune_from(package, None, train_data, val, options, method, pad, output)
}

/// [`tune`] from `start` instead of the package's own adapter (when given).
#[allow(clippy::too_many_arguments)]
pub fn tune_from(
    package: &Package,
    start: Option<&TuneStart>,
    train_data: &[Sequence],
    val: Option<&[Sequence]>,
    options: &TrainOptions,
    method: &Method,
    pad: u32,
    output: &Path,
) -> Result<Adapter> {
    if let Some(format) = options.frozen_quantized {
        // The package itself must hold the blocks, so that its f32 copies are gone too.
        if package.tensors.iter_quantized().next().is_none() {
            return Err(Error::Invalid(format!(
                "--frozen-quantized {format}: quantize the package's emulator first \
                 (Package::quantize_emulator)"
            )));
        }
    }
    let options = &options.resolved("tune");
    let method = &method.for_model(&package.meta.config);
    let mut model = package.model()?;
    if let Some(start) = start {
        start.check(package, method)?;
        start.adapter.apply(&mut model)?;
    }
    // The emulator is never written back (only the adapter is), so storing it in bf16 is safe.
    let adapter_layers = package.meta.split.adapter();
    let (params, _) = prepare(
        &mut model,
        method,
        Some(&adapter_layers),
        options.seed,
        options.precision,
    )?;
    let pull = Pull::new(&params, start.map_or(0.0, |s| s.pull))?;
    let total = model.num_parameters();
    let mut job = TrainJob::beside(output, "tune", params, train_data, val, pad, options, total);
    job.device = model.device().clone();
    let checkpoint_dir = job.checkpoint_dir.clone();
    let outcome = train::train(job, &|batch, seed| {
        let loss = lm_loss(&model, batch, seed)?;
        if pull.is_active() {
            loss + pull.loss()?
        } else {
            Ok(loss)
        }
    })?;
    let (training, metrics) = (Some(options.clone()), Some(outcome.summary));
    let adapter = match method {
        Method::Full => Adapter::from_weights(package, &outcome.params, training, metrics)?,
        Method::Lora(config) => {
            Adapter::from_lora(package, config, &outcome.params, training, metrics)?
        }
        Method::Adapter(config) => {
            Adapter::from_bottleneck(package, config, &outcome.params, training, metrics)?
        }
        Method::BitFit => Adapter::bitfit(package, &outcome.params, training, metrics)?,
    };
    adapter.save(output)?;
    // The adapter is written; the run's checkpoints are no longer needed.
    let _ = std::fs::remove_dir_all(&checkpoint_dir);
    Ok(adapter)
}

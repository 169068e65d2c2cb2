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
        if a.kind() != method.name() {
            return Err(Error::format(
                origin,
                format!(
                    "a {} adapter cannot start a {} tuning (continue it with the same method: \
                     {})",
                    a.kind(),
                    method.name(),
                    match a.kind() {
                        "full" => "no --peft".to_string(),
                        kind => format!("--peft {kind}"),
                    }
                ),
            ));
        }
        let configured = match method {
            Method::Lora(c) => a.meta.lora.as_ref() == Some(c),
            Method::Adapter(c) => a.meta.bottleneck.as_ref() == Some(c),
            Method::Full | Method::BitFit => true,
        };
        if !configured {
            return Err(Error::format(
                origin,
                format!(
                    "this {} adapter was made with other settings ({}) than this tuning's ({})",
                    a.kind(),
                    settings(&a.meta.lora, &a.meta.bottleneck),
                    match method {
                        Method::Lora(c) => settings(&Some(c.clone()), &None),
                        Method::Adapter(c) => settings(&None, &Some(c.clone())),
                        _ => String::new(),
                    }
                ),
            ));
        }
        Ok(())
    }

    /// Sets the freshly injected PEFT modules' variables (`params`) to the start's LoRA or
    /// bottleneck weights, which must be exactly those variables. (Full and BitFit starts are
    /// applied to the model's weights before the variables are made.)
    fn set_peft(&self, params: &[crate::train::Param]) -> Result<()> {
        let a = self.adapter;
        let origin = a.tensors.origin();
        if let Some(missing) = params.iter().find(|p| !a.tensors.contains(&p.name)) {
            return Err(Error::format(
                origin,
                format!("the start adapter has no `{}`", missing.name),
            ));
        }
        if let Some(extra) = a
            .tensors
            .names()
            .find(|n| !params.iter().any(|p| p.name == *n))
        {
            return Err(Error::format(
                origin,
                format!("`{extra}` is not a weight this tuning trains"),
            ));
        }
        for p in params {
            let t = a.tensors.get(&p.name, p.var.dims())?;
            p.var.set(&t.to_dtype(p.var.dtype())?)?;
        }
        Ok(())
    }
}

/// A PEFT configuration as a user would compare it.
fn settings(
    lora: &Option<crate::peft::LoraConfig>,
    bottleneck: &Option<crate::peft::BottleneckConfig>,
) -> String {
    match (lora, bottleneck) {
        (Some(c), _) => format!(
            "r {}, alpha {}, dropout {}, targets {:?}",
            c.r, c.alpha, c.dropout, c.targets
        ),
        (_, Some(c)) => format!("size {}, targets {:?}", c.size, c.targets),
        _ => "none".into(),
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
    let peft_start = matches!(method, Method::Lora(_) | Method::Adapter(_));
    if let Some(start) = start {
        start.check(package, method)?;
        if !peft_start {
            start.adapter.apply(&mut model)?;
        }
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
    if let Some(start) = start.filter(|_| peft_start) {
        // LoRA / bottleneck rounds continue the start's modules, not fresh ones.
        start.set_peft(&params)?;
    }
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
    let adapter = Adapter::of_method(package, method, &outcome.params, training, metrics)?;
    // In a data-parallel run every rank holds the same adapter; rank 0 writes it.
    if crate::train::collective::world().is_root() {
        adapter.save(output)?;
        // The adapter is written; the run's checkpoints are no longer needed.
        let _ = std::fs::remove_dir_all(&checkpoint_dir);
    }
    Ok(adapter)
}

/// The adapter `package` ships for `method` before any tuning: the package's adapter weights
/// (every one, or BitFit's 1-D ones), or fresh LoRA / bottleneck modules seeded with `seed`
/// exactly as [`tune`] injects them. Where a coordinator's federated rounds start.
pub fn initial_adapter(package: &Package, method: &Method, seed: u64) -> Result<Adapter> {
    let method = &method.for_model(&package.meta.config);
    let mut model = package.model()?;
    let layers = package.meta.split.adapter();
    let (params, _) = prepare(
        &mut model,
        method,
        Some(&layers),
        seed,
        crate::model::Precision::F32,
    )?;
    let weights = params
        .iter()
        .map(|p| (p.name.clone(), p.var.as_tensor().clone()))
        .collect();
    Adapter::of_method(package, method, &weights, None, None)
}

//! The experiment's ingredients: its training and validation data, the emulator package and
//! the adapter behind each row (tuned through the emulator, through the real middle, aligned),
//! each made by the same library calls as the separate commands and kept on disk.

use super::{AlignSetup, ExperimentConfig};
use crate::data::records::DataKind;
use crate::data::sequences::record_sequence;
use crate::data::tasks::load_task;
use crate::data::{load_training_data, read_texts, Dataset, Sequence};
use crate::emulator::align::{align, align_sequences, AlignRun};
use crate::emulator::package::PackageMeta;
use crate::emulator::tune::tune;
use crate::emulator::{model_fingerprint, Adapter, EmulatorOptions, Package};
use crate::io::tokenizer::Tokenizer;
use crate::io::{atomic, checkpoint};
use crate::peft::Method;
use crate::train::TrainOptions;
use crate::{Error, Result};
use candle_core::Device;
use std::path::{Path, PathBuf};

pub(super) fn limit<T>(mut v: Vec<T>, n: Option<usize>) -> Vec<T> {
    v.truncate(n.unwrap_or(usize::MAX));
    v
}

/// Training sequences of a file: a task's records (context → gold choice), our records, or text.
pub(super) fn training_data(
    cfg: &ExperimentConfig,
    path: &Path,
    tok: &Tokenizer,
    n: Option<usize>,
) -> Result<Dataset> {
    let block = cfg.training.block_size;
    let Some(task) = cfg.task else {
        return load_training_data(path, tok, block, n);
    };
    let eos = tok.eos_id().unwrap_or(0);
    let mut sequences: Vec<Sequence> = Vec::new();
    let mut truncated = 0;
    for r in limit(load_task(task, path)?, n) {
        let answer = &r.choices[r.gold_indices()[0]];
        if let Some((s, cut)) = record_sequence(
            &tok.encode_start(&r.context)?,
            &tok.encode(answer)?,
            eos,
            block,
        ) {
            truncated += cut as usize;
            sequences.push(s);
        }
    }
    Ok(Dataset {
        sequences,
        kind: DataKind::Records,
        truncated,
    })
}

pub(super) fn validation_data(cfg: &ExperimentConfig, tok: &Tokenizer) -> Result<Option<Dataset>> {
    cfg.val
        .as_ref()
        .map(|v| training_data(cfg, v, tok, cfg.limit_val))
        .transpose()
}

/// The emulator package: the given one (checked against the model and the options), or the one
/// in `out` (built by the same code as `offsite emulator` when missing).
pub(super) fn emulator_package(
    cfg: &ExperimentConfig,
    ckpt: &checkpoint::Checkpoint,
    tok: &Tokenizer,
    out: &Path,
) -> Result<Package> {
    let path = match &cfg.emulator_package {
        Some(given) => given.clone(),
        None => out.join("emulator.offsite"),
    };
    if cfg.emulator_package.is_none() && !path.is_file() {
        eprintln!("experiment: building the emulator");
        Package::build(&ckpt.model()?, Some(tok), cfg.emulator.clone(), &path)?.save(&path)?;
    }
    let package = Package::load(&path, &Device::Cpu)?;
    // A given package's header was checked before the run started (`run`); its seal is checked
    // by the load, so only the folder's own package is left to check.
    if cfg.emulator_package.is_none() {
        check_package_meta(cfg, &package.meta, &path, ckpt)?;
    }
    Ok(package)
}

/// Refuses a package that was not made from `ckpt`'s model with the experiment's options.
pub(super) fn check_package_meta(
    cfg: &ExperimentConfig,
    meta: &PackageMeta,
    path: &Path,
    ckpt: &checkpoint::Checkpoint,
) -> Result<()> {
    if !meta.options.same_as(&cfg.emulator) {
        let hint = if cfg.emulator_package.is_some() {
            format!(
                "was built with other emulator options ({} + {} + {} layers, {}) than this \
                 experiment's; leave the emulator flags out to use the package's own",
                meta.options.bottom,
                meta.options.keep,
                meta.options.top,
                meta.options.compression()
            )
        } else {
            "was built with other emulator options; use another output folder".into()
        };
        return Err(Error::format(path, hint));
    }
    if cfg.emulator_package.is_some()
        && meta.source_fingerprint != model_fingerprint(&ckpt.model()?)?
    {
        return Err(Error::format(
            path,
            format!(
                "was built from another model than {} (its source fingerprint differs)",
                cfg.model.display()
            ),
        ));
    }
    Ok(())
}

/// The adapter tuned through `package` (by the same code as `offsite tune`), resumed or made.
pub(super) fn tuned_adapter(
    cfg: &ExperimentConfig,
    package: &Package,
    options: &TrainOptions,
    pad: u32,
    out: &Path,
) -> Result<Adapter> {
    let path = match &cfg.method {
        Method::Full => out.join("adapter.safetensors"),
        Method::Lora(_) => out.join("adapter-lora"),
        m => out.join(format!("adapter-{}.safetensors", m.name())),
    };
    // A LoRA adapter is a directory, complete once its config is written (last).
    let done = path.is_file() || path.join("adapter_config.json").is_file();
    if !done {
        eprintln!("experiment: tuning the adapter through the emulator");
        let tok = package.tokenizer()?;
        let train = training_data(cfg, &cfg.train, &tok, cfg.limit_train)?;
        let val = validation_data(cfg, &tok)?;
        let val = val.as_ref().map(|v| v.sequences.as_slice());
        tune(
            package,
            &train.sequences,
            val,
            options,
            &cfg.method,
            pad,
            &path,
        )?;
    }
    Adapter::load(&path, &Device::Cpu)
}

/// The oracle's adapter: tuned (same data and options) through a package that keeps every
/// middle layer, in `out/oracle/`.
pub(super) fn oracle_adapter(
    cfg: &ExperimentConfig,
    ckpt: &checkpoint::Checkpoint,
    tok: &Tokenizer,
    options: &TrainOptions,
    pad: u32,
    out: &Path,
) -> Result<Adapter> {
    let dir = out.join("oracle");
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let path = dir.join("emulator.offsite");
    if !path.is_file() {
        eprintln!("experiment: building the oracle's package (every middle layer)");
        let full = ckpt.model()?;
        let (b, t) = (cfg.emulator.bottom, cfg.emulator.top);
        let m = full.config().num_layers.saturating_sub(b + t);
        let options = EmulatorOptions::layer_drop(b, m, t);
        Package::build(&full, Some(tok), options, &path)?.save(&path)?;
    }
    let package = Package::load(&path, &Device::Cpu)?;
    tuned_adapter(cfg, &package, options, pad, &dir)
}

/// The adapter aligned by `setup` (by the same code as `offsite align`), resumed or made, in
/// `dir` with the setup beside it.
pub(super) fn aligned_adapter(
    ckpt: &checkpoint::Checkpoint,
    package: &Package,
    adapter: &Adapter,
    setup: &AlignSetup,
    tok: &Tokenizer,
    pad: u32,
    dir: &Path,
) -> Result<Adapter> {
    let path = dir.join("adapter.safetensors");
    if !path.is_file() {
        eprintln!(
            "experiment: aligning the plug-in on {}",
            setup.data.display()
        );
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        atomic::write_json(&dir.join("setup.json"), setup)?;
        let template = setup.options.template.as_deref();
        let block = setup.training.block_size;
        let load = |p: &PathBuf| -> Result<Vec<Sequence>> {
            align_sequences(tok, &limit(read_texts(p)?, setup.limit), block, template)
        };
        let data = load(&setup.data)?;
        let val = setup.val.as_ref().map(load).transpose()?;
        let sha = crate::io::fetch::file_sha256(&setup.data)?;
        let training = TrainOptions {
            resume: true,
            ..setup.training.clone()
        };
        let corpus = setup.data.display().to_string();
        let aligned = align(&AlignRun {
            ckpt,
            package,
            adapter,
            data: &data,
            val: val.as_deref(),
            corpus: (&corpus, &sha),
            options: &setup.options,
            training: &training,
            pad,
            output: &path,
        })?;
        aligned.save(&path)?;
    }
    Adapter::load(&path, &Device::Cpu)
}

//! The paper's comparison table for one model and task, in one resumable run: full model
//! zero-shot, emulator zero-shot, emulator fine-tuned, plug-in and full fine-tuning. Every step
//! goes through the same library calls as the separate commands (`emulator`, `tune`, `plug`,
//! `finetune`, `eval`); each finished artifact and row is kept on disk and not recomputed.

pub mod ablation;
pub mod chart;
mod folder;
pub mod lm_eval;
mod report;
mod steps;

pub use report::{redraw_chart, write_report};
use steps::{
    aligned_adapter, check_package_meta, emulator_package, limit, oracle_adapter, training_data,
    tuned_adapter, validation_data,
};

use crate::data::read_texts;
use crate::data::records::{record_kind, RecordKind};
use crate::data::tasks::{load_mc, load_task, McRecord, Task};
use crate::emulator::align::AlignOptions;
use crate::emulator::package::PackageMeta;
use crate::emulator::proxy::Proxy;
use crate::emulator::{plug, Adapter, EmulatorOptions, Package};
use crate::eval::multiple_choice::evaluate_mc;
use crate::eval::perplexity;
use crate::eval::Scorer;
use crate::io::{atomic, checkpoint};
use crate::peft::Method;
use crate::train::{finetune::finetune, TrainOptions};
use crate::{Error, Result};
use candle_core::Device;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The rows of the table, in the paper's order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Row {
    /// The full model, untrained.
    #[value(name = "zero-shot")]
    ZeroShot,
    /// The emulator package, untrained.
    #[value(name = "emulator-zero-shot")]
    EmulatorZeroShot,
    /// The emulator with the tuned adapter.
    #[value(name = "emulator-ft")]
    EmulatorFt,
    /// The ceiling of offsite-tuning with this adapter: the adapter tuned through the full
    /// model's real (frozen) middle, then plugged in. Tells "the adapter can't learn it" from
    /// "the emulator doesn't transfer".
    #[value(name = "oracle")]
    Oracle,
    /// The full model with the tuned adapter plugged in.
    #[value(name = "plug-in")]
    PlugIn,
    /// The full model's log-probabilities plus α × the emulator's change (logit arithmetic:
    /// [`crate::emulator::proxy`]), without a plug-in.
    #[value(name = "proxy")]
    Proxy,
    /// The plug-in after the model owner's alignment on public text
    /// ([`crate::emulator::align`]); run when the experiment has an alignment setup.
    #[value(name = "plug-in-aligned")]
    PlugInAligned,
    /// The full model with every weight fine-tuned.
    #[value(name = "full-ft")]
    FullFt,
}

impl Row {
    /// All rows.
    pub const ALL: [Row; 8] = [
        Row::ZeroShot,
        Row::EmulatorZeroShot,
        Row::EmulatorFt,
        Row::Oracle,
        Row::PlugIn,
        Row::Proxy,
        Row::PlugInAligned,
        Row::FullFt,
    ];

    /// The row's name in `report.json`.
    pub fn name(self) -> &'static str {
        match self {
            Row::ZeroShot => "zero_shot",
            Row::EmulatorZeroShot => "emulator_zero_shot",
            Row::EmulatorFt => "emulator_ft",
            Row::Oracle => "oracle",
            Row::PlugIn => "plug_in",
            Row::Proxy => "proxy",
            Row::PlugInAligned => "plug_in_aligned",
            Row::FullFt => "full_ft",
        }
    }

    /// A human label.
    pub fn label(self) -> &'static str {
        match self {
            Row::ZeroShot => "full model, zero-shot",
            Row::EmulatorZeroShot => "emulator, zero-shot",
            Row::EmulatorFt => "emulator, fine-tuned",
            Row::Oracle => "oracle (tuned through the real middle)",
            Row::PlugIn => "plug-in",
            Row::Proxy => "proxy (logit arithmetic)",
            Row::PlugInAligned => "plug-in, aligned",
            Row::FullFt => "full fine-tuning",
        }
    }
}

/// What to run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExperimentConfig {
    /// The full model as the user named it: a path, or a known model's name (`smollm2`).
    pub model: PathBuf,
    /// Training data.
    pub train: PathBuf,
    /// Validation data (best adapter / model kept).
    pub val: Option<PathBuf>,
    /// Test data.
    pub test: PathBuf,
    /// Read train/val/test as this task's Hugging Face records.
    pub task: Option<Task>,
    /// How the emulator is made.
    pub emulator: EmulatorOptions,
    /// A ready emulator package of the model (e.g. a distilled one) to use instead of building
    /// one; it must have been made from the model with `emulator`'s options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emulator_package: Option<PathBuf>,
    /// Training options of both the adapter tuning and full fine-tuning.
    pub training: TrainOptions,
    /// What of the adapter is tuned (full fine-tuning always trains every weight).
    #[serde(default = "full_method")]
    pub method: Method,
    /// Rows not to run.
    pub skip: Vec<Row>,
    /// First N training records/documents only.
    pub limit_train: Option<usize>,
    /// First N validation records/documents only.
    pub limit_val: Option<usize>,
    /// First N test records/documents only.
    pub limit_test: Option<usize>,
    /// Evaluation block size (perplexity) / longest scored sequence (multiple choice).
    pub eval_block_size: usize,
    /// The proxy row's α.
    #[serde(default = "default_alpha")]
    pub proxy_alpha: f64,
    /// How the model owner aligns the plug-in (the `plug-in-aligned` row runs only with one).
    /// Not part of the settings a resumed folder must share: each alignment setup keeps its
    /// adapter and row under its own digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alignment: Option<AlignSetup>,
}

/// The model owner's alignment of the returned adapter, as the experiment runs it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlignSetup {
    /// Public text (never the task's own data).
    pub data: PathBuf,
    /// Held-out public text (the aligned weights with the lowest KL on it are kept).
    pub val: Option<PathBuf>,
    /// First N documents of each.
    pub limit: Option<usize>,
    /// Target, positions, trained part, template.
    pub options: AlignOptions,
    /// Trainer options of the alignment.
    pub training: TrainOptions,
}

impl ExperimentConfig {
    /// Reads a run file (`--config run.toml`): every setting of an experiment in TOML, as
    /// [`ExperimentConfig::to_toml`] writes it.
    pub fn read_toml(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        toml::from_str(&text).map_err(|e| Error::format(path, e.message().to_string()))
    }

    /// The settings as a TOML run file: `offsite experiment --config` repeats the run from it.
    pub fn to_toml(&self) -> Result<String> {
        let body = toml::to_string(self).map_err(|e| Error::Invalid(e.to_string()))?;
        Ok(format!(
            "# offsite experiment run file: `offsite experiment --config run.toml -o OUT` repeats \
             this run\n# (paths are relative to the folder it was started from).\n{body}"
        ))
    }

    /// The full model's file or folder (a known model's name fetched or found in the cache).
    pub fn model_path(&self) -> Result<PathBuf> {
        crate::io::fetch::resolve_model(&self.model.to_string_lossy())
    }

    /// The settings with every file path made canonical (a known model's name resolved), so
    /// that a folder started with `data/x.jsonl` resumes under `./data/x.jsonl` or its absolute
    /// path, and with `smollm2` under the cached file's path.
    fn canonical(&self) -> Self {
        let canon = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
        let mut c = self.clone();
        c.model = self
            .model_path()
            .map_or_else(|_| self.model.clone(), |p| canon(&p));
        c.train = canon(&c.train);
        c.test = canon(&c.test);
        c.val = c.val.as_deref().map(canon);
        c.emulator_package = c.emulator_package.as_deref().map(canon);
        c.emulator.calibration = c.emulator.calibration.as_deref().map(canon);
        c
    }
}

impl AlignSetup {
    /// A short digest of the setup: the name under which its adapter and row are kept.
    pub fn digest(&self) -> String {
        use sha2::Digest;
        // Paths made canonical: the same files typed another way are the same setup.
        let canon = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
        let setup = AlignSetup {
            data: canon(&self.data),
            val: self.val.as_deref().map(canon),
            ..self.clone()
        };
        let mut v = serde_json::to_value(setup).unwrap_or_default();
        if let Some(t) = v.get_mut("training").and_then(|t| t.as_object_mut()) {
            t.remove("resume");
        }
        hex::encode(sha2::Sha256::digest(v.to_string().as_bytes()))[..10].to_string()
    }
}

fn default_alpha() -> f64 {
    crate::emulator::proxy::DEFAULT_ALPHA
}

fn full_method() -> Method {
    Method::Full
}

/// One row of the report: its name and metrics under `eval --json`'s keys.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RowResult {
    /// `zero_shot`, `emulator_zero_shot`, `emulator_ft`, `plug_in` or `full_ft`.
    pub name: String,
    /// The metrics (acc, acc_stderr, … or token_perplexity, …).
    #[serde(flatten)]
    pub metrics: serde_json::Map<String, serde_json::Value>,
    /// Seconds the evaluation took.
    pub seconds: f64,
}

/// Multiple choice or perplexity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// acc / acc_norm.
    Mc,
    /// Perplexities.
    Ppl,
}

/// The test data, loaded once.
enum TestSet {
    Mc(Vec<McRecord>),
    Text(Vec<String>),
}

/// Runs (or resumes) the experiment into `out`; returns the rows in order.
pub fn run(cfg: &ExperimentConfig, out: &Path) -> Result<Vec<RowResult>> {
    let device = Device::Cpu;
    // Not yet per row: the experiment's rows share one set of training options.
    cfg.training.dense_only("`offsite experiment`")?;
    let cfg = &folder::resolve_precision(cfg, out)?;
    folder::check_same_experiment(cfg, out)?;
    let ckpt = checkpoint::load(&cfg.model_path()?, &device)?;
    let tok = ckpt.tokenizer()?.clone();
    let metric =
        match cfg.task {
            Some(_) => Metric::Mc,
            None => match record_kind(&cfg.test)? {
                RecordKind::Text => Metric::Ppl,
                RecordKind::MultipleChoice => Metric::Mc,
                RecordKind::Completion => return Err(Error::format(
                    &cfg.test,
                    "prompt/completion records: the experiment's test set is text (perplexity) \
                     or multiple-choice records (`offsite eval --metric answer` scores these)",
                )),
            },
        };
    let (test, test_records) = match (metric, cfg.task) {
        (Metric::Mc, task) => {
            let all = match task {
                Some(task) => load_task(task, &cfg.test)?,
                None => load_mc(&cfg.test)?,
            };
            let n = all.len();
            (TestSet::Mc(limit(all, cfg.limit_test)), n)
        }
        (Metric::Ppl, _) => {
            let all = read_texts(&cfg.test)?;
            let n = all.len();
            (TestSet::Text(limit(all, cfg.limit_test)), n)
        }
    };
    // Checked before the folder records the settings, so that a start that fails on a given
    // package leaves nothing behind that a corrected rerun would be refused by.
    if let Some(path) = &cfg.emulator_package {
        check_package_meta(cfg, &PackageMeta::peek(path)?, path, &ckpt)?;
    }
    std::fs::create_dir_all(out.join("rows")).map_err(|e| Error::io(out, e))?;
    atomic::write_json(&out.join("config.json"), cfg)?;
    atomic::write_bytes(&out.join("run.toml"), cfg.to_toml()?.as_bytes())?;
    let digest = cfg.alignment.as_ref().map(AlignSetup::digest);
    let row_path = |row: Row| match (row, &digest) {
        (Row::PlugInAligned, Some(d)) => out.join("rows").join(format!("{}-{d}.json", row.name())),
        _ => out.join("rows").join(format!("{}.json", row.name())),
    };
    let evaluate = |row: Row, model: &dyn Scorer| -> Result<RowResult> {
        eprintln!("experiment: evaluating {}", row.label());
        let start = std::time::Instant::now();
        let metrics = match &test {
            TestSet::Mc(records) => {
                serde_json::to_value(evaluate_mc(model, &tok, records, cfg.eval_block_size)?)
            }
            TestSet::Text(docs) => {
                serde_json::to_value(perplexity(model, &tok, docs, cfg.eval_block_size, 4)?)
            }
        }
        .map_err(|e| Error::Invalid(e.to_string()))?;
        let result = RowResult {
            name: row.name().into(),
            metrics: metrics.as_object().cloned().unwrap_or_default(),
            seconds: start.elapsed().as_secs_f64(),
        };
        atomic::write_json(&row_path(row), &result)?;
        Ok(result)
    };
    let pad = tok.pad_id().or(tok.eos_id()).unwrap_or(0);
    let tuning = TrainOptions {
        resume: true,
        ..cfg.training.clone()
    };
    // Artifacts, made on first need and kept on disk (a rerun picks them up).
    let mut package: Option<Package> = None;
    let mut adapter: Option<Adapter> = None;
    let mut rows = Vec::new();
    let runs =
        |r: &Row| !cfg.skip.contains(r) && (*r != Row::PlugInAligned || cfg.alignment.is_some());
    for row in Row::ALL.into_iter().filter(runs) {
        if let Some(done) = std::fs::read_to_string(row_path(row))
            .ok()
            .and_then(|t| serde_json::from_str::<RowResult>(&t).ok())
        {
            eprintln!("experiment: {} already done", row.label());
            rows.push(done);
            continue;
        }
        let needs_adapter = matches!(
            row,
            Row::EmulatorFt | Row::PlugIn | Row::Proxy | Row::PlugInAligned
        );
        if (needs_adapter || row == Row::EmulatorZeroShot) && package.is_none() {
            package = Some(emulator_package(cfg, &ckpt, &tok, out)?);
        }
        if needs_adapter && adapter.is_none() {
            let pkg = package.as_ref().expect("made above");
            adapter = Some(tuned_adapter(cfg, pkg, &tuning, pad, out)?);
        }
        let result = match row {
            Row::ZeroShot => evaluate(row, &ckpt.model()?)?,
            Row::EmulatorZeroShot => evaluate(row, &package.as_ref().expect("made").model()?)?,
            Row::EmulatorFt => {
                let (pkg, a) = (
                    package.as_ref().expect("made"),
                    adapter.as_ref().expect("made"),
                );
                let mut emu = pkg.model()?;
                a.check_package(pkg)?;
                a.apply(&mut emu)?;
                evaluate(row, &emu)?
            }
            Row::Oracle => {
                let a = oracle_adapter(cfg, &ckpt, &tok, &tuning, pad, out)?;
                evaluate(row, &plug(&ckpt, &a)?)?
            }
            Row::PlugIn => evaluate(row, &plug(&ckpt, adapter.as_ref().expect("made"))?)?,
            Row::Proxy => {
                let (pkg, a) = (
                    package.as_ref().expect("made"),
                    adapter.as_ref().expect("made"),
                );
                evaluate(row, &Proxy::new(&ckpt, pkg, a, cfg.proxy_alpha)?)?
            }
            Row::PlugInAligned => {
                let (pkg, a) = (
                    package.as_ref().expect("made"),
                    adapter.as_ref().expect("made"),
                );
                let setup = cfg.alignment.as_ref().expect("filtered above");
                let dir = out.join(format!("aligned-{}", digest.as_deref().unwrap_or("")));
                let aligned = aligned_adapter(&ckpt, pkg, a, setup, &tok, pad, &dir)?;
                evaluate(row, &plug(&ckpt, &aligned)?)?
            }
            Row::FullFt => {
                let ft_dir = out.join("full-ft");
                let model = if ft_dir.join("config.json").is_file() {
                    checkpoint::load(&ft_dir, &device)?.model()?
                } else {
                    eprintln!("experiment: full fine-tuning (baseline)");
                    let train = training_data(cfg, &cfg.train, &tok, cfg.limit_train)?;
                    let val = validation_data(cfg, &tok)?;
                    let val = val.as_ref().map(|v| v.sequences.as_slice());
                    let full = Method::Full;
                    finetune(&ckpt, &train.sequences, val, &tuning, &full, pad, &ft_dir)?.0
                };
                evaluate(row, &model)?
            }
        };
        rows.push(result);
    }
    write_report(cfg, metric, &rows, test_records, out)?;
    Ok(rows)
}

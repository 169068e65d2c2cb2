//! `offsite experiment MODEL --train T --val V --test X [--task t] [--keep K] [--skip rows] -o OUT`:
//! the paper's table (plus an oracle row) for one model and task, resumable, with a report and a chart.

use super::ModelSpec;
use anyhow::Result;
use offsite::data::tasks::Task;
use offsite::emulator::make::options::EmulatorFlags;
use offsite::emulator::package::PackageMeta;
use offsite::emulator::EmulatorOptions;
use offsite::experiment::{run, AlignSetup, ExperimentConfig, Row};
use offsite::train::TrainOptions;
use std::path::PathBuf;

/// What an experiment (or each point of an ablation) runs on and how it trains: everything but
/// the emulator options.
#[derive(clap::Args)]
pub struct StudyArgs {
    /// Every setting of the run from a TOML file, as written beside each report (`run.toml`);
    /// then give only `-o` (and `ablate`'s grid). Paths in it are relative to the working
    /// folder, as they were typed.
    #[arg(long, conflicts_with_all = ["model", "train", "test"])]
    config: Option<PathBuf>,
    /// The full model.
    #[arg(required_unless_present = "config")]
    model: Option<ModelSpec>,
    /// Training data (tune and full fine-tuning).
    #[arg(long, required_unless_present = "config")]
    train: Option<PathBuf>,
    /// Validation data (the best adapter / model is kept).
    #[arg(long)]
    val: Option<PathBuf>,
    /// Test data: multiple-choice records (acc, acc_norm) or a text corpus (perplexity).
    #[arg(long, required_unless_present = "config")]
    test: Option<PathBuf>,
    /// Read train/val/test as this task's Hugging Face records, with lm-eval's prompts.
    #[arg(long, value_enum)]
    task: Option<Task>,
    /// Rows not to run (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',')]
    skip: Vec<Row>,
    /// Use only the first N training records/documents.
    #[arg(long)]
    limit_train: Option<usize>,
    /// Use only the first N validation records/documents.
    #[arg(long)]
    limit_val: Option<usize>,
    /// Use only the first N test records/documents.
    #[arg(long)]
    limit_test: Option<usize>,
    /// Evaluation block size (perplexity) or longest scored sequence (multiple choice).
    #[arg(long, default_value_t = 512)]
    eval_block_size: usize,
    /// The proxy row's α: the full model's log-probabilities plus α × the emulator's change.
    #[arg(long, default_value_t = offsite::emulator::proxy::DEFAULT_ALPHA)]
    proxy_alpha: f64,
    /// Public text on which the model owner aligns the plug-in (JSONL {"text"} or .txt, never
    /// the task's own data): adds the `plug-in-aligned` row.
    #[arg(long)]
    align_data: Option<PathBuf>,
    /// Held-out public text for the alignment.
    #[arg(long, requires = "align_data")]
    align_val: Option<PathBuf>,
    /// Use only the first N documents of the alignment's text.
    #[arg(long, requires = "align_data")]
    align_limit: Option<usize>,
    /// Optimizer steps of the alignment (batch size, block size, schedule, seed and
    /// checkpointing as the tuning's).
    #[arg(long, default_value_t = 100)]
    align_steps: usize,
    /// Learning rate of the alignment.
    #[arg(long, default_value_t = 1e-4)]
    align_lr: f64,
    #[command(flatten)]
    align: offsite::emulator::align::AlignOptions,
    /// Output folder (reports, charts, and the artifacts).
    #[arg(short, long)]
    pub output: PathBuf,
    // Applied to the adapter tuning; full fine-tuning trains every weight.
    #[command(flatten)]
    peft: super::PeftArgs,
    #[command(flatten)]
    train_options: TrainOptions,
}

impl StudyArgs {
    /// The run file given with `--config`, once no other setting was typed beside it (`allowed`:
    /// the flags that may be, besides `--config` and `-o`).
    pub fn config_file(&self, allowed: &[&str]) -> Result<Option<ExperimentConfig>> {
        let Some(path) = &self.config else {
            return Ok(None);
        };
        let typed: Vec<String> = std::env::args().skip(2).collect();
        let stray = typed.iter().find(|a| {
            let flag = a.split('=').next().unwrap_or(a);
            a.starts_with('-')
                && !["--config", "-o", "--output"].contains(&flag)
                && !allowed.contains(&flag)
        });
        if let Some(flag) = stray {
            anyhow::bail!(
                "{flag} given with --config {}: the file holds every setting of the run (edit it, \
                 or leave --config out and give the flags)",
                path.display()
            );
        }
        Ok(Some(ExperimentConfig::read_toml(path)?))
    }

    /// The experiment these flags describe, with `emulator`'s options.
    pub fn config(
        self,
        emulator: EmulatorOptions,
        emulator_package: Option<PathBuf>,
    ) -> Result<ExperimentConfig> {
        let missing = |what: &str| anyhow::anyhow!("{what} is required (or give --config)");
        let model = self.model.ok_or_else(|| missing("MODEL"))?;
        let train = self.train.ok_or_else(|| missing("--train"))?;
        let test = self.test.ok_or_else(|| missing("--test"))?;
        let alignment = self.align_data.map(|data| AlignSetup {
            data,
            val: self.align_val,
            limit: self.align_limit,
            options: self.align,
            // Alignment runs in f32 whatever the tuning's precision (its weights are written
            // back), and its setup's digest names its row: the same setup, the same digest.
            training: TrainOptions {
                max_steps: Some(self.align_steps),
                lr: self.align_lr,
                precision: offsite::model::Precision::F32,
                ..self.train_options.clone()
            },
        });
        Ok(ExperimentConfig {
            model: PathBuf::from(&model.0),
            train,
            val: self.val,
            test,
            task: self.task,
            emulator,
            emulator_package,
            training: self.train_options,
            method: self.peft.method(),
            skip: self.skip,
            limit_train: self.limit_train,
            limit_val: self.limit_val,
            limit_test: self.limit_test,
            eval_block_size: self.eval_block_size,
            proxy_alpha: self.proxy_alpha,
            alignment,
        })
    }
}

/// Arguments of `offsite experiment`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    study: StudyArgs,
    #[command(flatten)]
    emulator: EmulatorFlags,
    /// Use this emulator package of MODEL (e.g. one made with `offsite emulator --distill`)
    /// instead of building one: its own options are used, and an emulator flag given must
    /// agree with them.
    #[arg(long)]
    emulator_package: Option<PathBuf>,
}

/// Runs or resumes the experiment and prints the report.
pub fn run_cmd(args: Args) -> Result<()> {
    let out = args.study.output.clone();
    if let Some(cfg) = args.study.config_file(&[])? {
        run(&cfg, &out)?;
        print!("{}", std::fs::read_to_string(out.join("report.md"))?);
        return Ok(());
    }
    let emulator = match &args.emulator_package {
        Some(package) => args
            .emulator
            .agree_with(package, &PackageMeta::peek(package)?.options)?,
        None => args.emulator.options()?,
    };
    run(&args.study.config(emulator, args.emulator_package)?, &out)?;
    print!("{}", std::fs::read_to_string(out.join("report.md"))?);
    Ok(())
}

//! `offsite experiment MODEL --train T --val V --test X [--task t] [--keep K] [--skip rows] -o OUT`:
//! the paper's five-row table for one model and task, resumable, with a report and a chart.

use super::ModelSpec;
use anyhow::Result;
use offsite::data::tasks::Task;
use offsite::emulator::EmulatorOptions;
use offsite::experiment::{run, ExperimentConfig, Row};
use offsite::train::TrainOptions;
use std::path::PathBuf;

/// Arguments of `offsite experiment`.
#[derive(clap::Args)]
pub struct Args {
    /// The full model.
    model: ModelSpec,
    /// Training data (tune and full fine-tuning).
    #[arg(long)]
    train: PathBuf,
    /// Validation data (the best adapter / model is kept).
    #[arg(long)]
    val: Option<PathBuf>,
    /// Test data: multiple-choice records (acc, acc_norm) or a text corpus (perplexity).
    #[arg(long)]
    test: PathBuf,
    /// Read train/val/test as this task's Hugging Face records, with lm-eval's prompts.
    #[arg(long, value_enum)]
    task: Option<Task>,
    #[command(flatten)]
    emulator: EmulatorOptions,
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
    /// Output folder (report.md, report.json, chart.svg, and the artifacts).
    #[arg(short, long)]
    output: PathBuf,
    // Applied to the adapter tuning; full fine-tuning trains every weight.
    #[command(flatten)]
    peft: super::PeftArgs,
    #[command(flatten)]
    train_options: TrainOptions,
}

/// Runs or resumes the experiment and prints the report.
pub fn run_cmd(args: Args) -> Result<()> {
    let cfg = ExperimentConfig {
        model: args.model.path()?,
        train: args.train,
        val: args.val,
        test: args.test,
        task: args.task,
        emulator: args.emulator,
        training: args.train_options,
        method: args.peft.method(),
        skip: args.skip,
        limit_train: args.limit_train,
        limit_val: args.limit_val,
        limit_test: args.limit_test,
        eval_block_size: args.eval_block_size,
    };
    run(&cfg, &args.output)?;
    print!(
        "{}",
        std::fs::read_to_string(args.output.join("report.md"))?
    );
    Ok(())
}

//! Command-line interface: one file per command, each a clap `Args` struct with a `run`.

mod ablate;
mod adapter;
mod align;
mod bench;
mod chart;
mod demo;
mod emulator;
mod eval;
mod experiment;
mod fetch;
mod finetune;
mod generate;
mod inspect;
mod plug;
mod probe;
mod sample;
mod score;
mod tune;

use anyhow::Result;
use clap::{Parser, Subcommand};
use offsite::io::checkpoint::{self, Checkpoint};
use std::path::PathBuf;

/// Offsite-Tuning: adapt a foundation model to private data without either side handing over
/// what it owns.
#[derive(Parser)]
#[command(name = "offsite", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Download a known demo model (verified by sha256) and print its path.
    Fetch(fetch::Args),
    /// Describe a model: family, layers, parameters, tensor dtypes, tokenizer.
    Inspect(inspect::Args),
    /// Continue a prompt (greedy by default).
    Generate(generate::Args),
    /// Per-token log-probabilities and mean cross-entropy of a text.
    Score(score::Args),
    /// Model owner: split a model into adapter + emulator and write the package to ship.
    Emulator(emulator::Args),
    /// Data owner: tune the adapter through the emulator on private data.
    Tune(tune::Args),
    /// The adapter a package ships before tuning, or plain arrays (a federated average) checked
    /// and written as an adapter file.
    Adapter(adapter::Args),
    /// Model owner: plug a tuned adapter into the full model, write a Hugging Face directory.
    Plug(plug::Args),
    /// Model owner: align a returned adapter on public text so that, plugged in, it matches the
    /// proxy (or the emulator) it was tuned for; writes the aligned adapter.
    Align(align::Args),
    /// Measure a model, an emulator, or either with a tuned adapter.
    Eval(eval::Args),
    /// A corpus of the model's own samples (data-free calibration and distillation text).
    Sample(sample::Args),
    /// Emulator against full model on the same text: residual stream at the top adapter's
    /// input, KL of the next-token distributions, perplexities.
    Probe(probe::Args),
    /// Baseline: fine-tune every weight of the full model, write a Hugging Face directory.
    Finetune(finetune::Args),
    /// The paper's five-row table (zero-shot, emulator zero-shot, emulator fine-tuned, plug-in,
    /// full fine-tuning) for one model and task: report.md, report.json and chart.svg.
    Experiment(experiment::Args),
    /// Redraw experiment reports' charts (SVG and PNG, ±1 stderr whiskers) from their
    /// report.json.
    Chart(chart::Args),
    /// Emulator compression ablation (layer drop, pruning, quantization) against emulator and
    /// plug-in quality: ablation.md, ablation.json and line charts (the paper's Figure 4).
    Ablate(ablate::Args),
    /// The whole exchange on the demo model: emulator → tune → plug → eval.
    Demo(demo::Args),
    /// Training and inference throughput and peak memory per mode (ft, ot, infer).
    Bench(bench::Args),
    /// One bench mode in this process (used by `bench`).
    #[command(hide = true)]
    BenchWorker(bench::WorkerArgs),
}

/// Runs the command line and turns errors into a message and exit code 1.
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // Under `mpiexec`, join the other ranks first (and stay joined until the command ends).
    let _mpi = match offsite::train::collective::init() {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("error: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Fetch(a) => fetch::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Score(a) => score::run(a),
        Command::Emulator(a) => emulator::run(a),
        Command::Tune(a) => tune::run(a),
        Command::Adapter(a) => adapter::run(a),
        Command::Plug(a) => plug::run(a),
        Command::Align(a) => align::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Probe(a) => probe::run(a),
        Command::Sample(a) => sample::run(a),
        Command::Finetune(a) => finetune::run(a),
        Command::Experiment(a) => experiment::run_cmd(a),
        Command::Ablate(a) => ablate::run(a),
        Command::Chart(a) => chart::run(a),
        Command::Demo(a) => demo::run(a),
        Command::Bench(a) => bench::run(a),
        Command::BenchWorker(a) => bench::worker(a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The training-data flags shared by `tune` and `finetune`.
#[derive(clap::Args)]
pub struct DataArgs {
    /// Training data: JSONL {"text"} or .txt (language modelling), or JSONL
    /// {"context","choices","label"} / {"prompt","completion"} (loss on the answer only).
    #[arg(long)]
    data: std::path::PathBuf,
    /// Validation data (same formats); the weights with the lowest validation loss are kept.
    #[arg(long)]
    val: Option<std::path::PathBuf>,
    /// Use only the first N documents/records of each file.
    #[arg(long)]
    limit: Option<usize>,
}

impl DataArgs {
    /// Loads training and (optionally) validation data and says what was loaded.
    pub fn load(
        &self,
        tok: &offsite::io::tokenizer::Tokenizer,
        block: usize,
    ) -> Result<(offsite::data::Dataset, Option<offsite::data::Dataset>)> {
        use offsite::data::load_training_data;
        let train = load_training_data(&self.data, tok, block, self.limit)?;
        let val = self
            .val
            .as_deref()
            .map(|v| load_training_data(v, tok, block, self.limit))
            .transpose()?;
        for (name, d) in [("training", Some(&train)), ("validation", val.as_ref())] {
            if let Some(d) = d {
                let cut = match d.truncated {
                    0 => String::new(),
                    n => format!(", {n} records cut from the left to fit {block} tokens"),
                };
                eprintln!(
                    "{name} data: {} sequences, {} target tokens{cut}",
                    d.sequences.len(),
                    d.num_targets()
                );
            }
        }
        Ok((train, val))
    }
}

/// A MODEL argument: a `.gguf` file, a Hugging Face directory, or a known model's name
/// (`smollm2`, `gemma3-270m`), which is fetched on first use.
#[derive(Clone, Debug)]
pub struct ModelSpec(pub String);

impl std::str::FromStr for ModelSpec {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(ModelSpec(s.to_string()))
    }
}

impl ModelSpec {
    /// The path the spec stands for (fetching a known model if needed).
    pub fn path(&self) -> Result<PathBuf> {
        Ok(offsite::io::fetch::resolve_model(&self.0)?)
    }

    /// Loads the checkpoint on the CPU.
    pub fn load(&self) -> Result<Checkpoint> {
        let path = self.path()?;
        // Our errors already name the file; no extra context needed.
        Ok(checkpoint::load(&path, &candle_core::Device::Cpu)?)
    }
}

/// `--peft` and the flags of each method, shared by `tune`, `finetune` and `experiment`.
#[derive(clap::Args, Clone, Debug)]
pub struct PeftArgs {
    /// Train a parameter-efficient part instead of every weight (LoRA is merged on plug-in;
    /// bottleneck adapters stay separate modules, in offsite's format).
    #[arg(long, value_enum)]
    peft: Option<Peft>,
    #[command(flatten)]
    lora: offsite::peft::LoraConfig,
    #[command(flatten)]
    bottleneck: offsite::peft::BottleneckConfig,
}

/// Parameter-efficient methods.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Peft {
    /// LoRA on the linear maps (`--lora-*` flags).
    Lora,
    /// Bottleneck adapters (Houlsby) after the chosen maps (`--adapter-*` flags).
    Adapter,
    /// BitFit: only the 1-D parameters (norm weights, biases).
    Bitfit,
}

impl PeftArgs {
    /// The chosen method with its flags' configuration (every weight without `--peft`).
    pub fn method(&self) -> offsite::peft::Method {
        use offsite::peft::Method;
        match self.peft {
            None => Method::Full,
            Some(Peft::Lora) => Method::Lora(self.lora.clone()),
            Some(Peft::Adapter) => Method::Adapter(self.bottleneck.clone()),
            Some(Peft::Bitfit) => Method::BitFit,
        }
    }
}

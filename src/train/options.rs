//! The options every training command shares (`tune`, `finetune`, distillation).

use crate::model::Precision;
use serde::{Deserialize, Serialize};

/// Learning-rate schedule after warm-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Stay at the peak rate.
    Constant,
    /// Decay linearly to zero at the last step.
    Linear,
    /// Decay along a half cosine to zero at the last step.
    Cosine,
}

/// The update rule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// AdamW (PyTorch's defaults: betas 0.9, 0.999, eps 1e-8).
    #[default]
    Adamw,
    /// SGD with momentum 0.9 (PyTorch's form: `buf = 0.9·buf + g`, `w -= lr·buf`). It moves
    /// along the gradient, which for an adapter tuned through an emulator keeps the update in
    /// the directions the emulator's loss actually constrains; AdamW's per-coordinate
    /// normalisation moves every weight by about `lr`, however little the loss depends on it.
    Sgd,
}

impl OptimizerKind {
    fn is_default(&self) -> bool {
        *self == OptimizerKind::Adamw
    }
}

/// Training options (also the command-line flags of every training command).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct TrainOptions {
    /// Passes over the training data.
    #[arg(long, default_value_t = 1)]
    pub epochs: usize,
    /// Stop after this many optimizer steps (overrides --epochs when smaller).
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Sequences per micro-batch.
    #[arg(long, default_value_t = 4)]
    pub batch_size: usize,
    /// Micro-batches whose gradients are summed into one optimizer step.
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 1e-4)]
    pub lr: f64,
    /// Schedule after warm-up.
    #[arg(long, value_enum, default_value_t = Schedule::Cosine)]
    pub schedule: Schedule,
    /// Steps of linear warm-up from 0 to --lr.
    #[arg(long, default_value_t = 0)]
    pub warmup_steps: usize,
    /// The update rule (SGD usually wants a learning rate 100–1000× AdamW's).
    #[arg(long, value_enum, default_value_t = OptimizerKind::Adamw)]
    #[serde(default, skip_serializing_if = "OptimizerKind::is_default")]
    pub optimizer: OptimizerKind,
    /// AdamW decoupled weight decay (never applied to norms and biases).
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// Clip the global gradient norm to this value (0: no clipping).
    #[arg(long, default_value_t = 1.0)]
    pub clip: f64,
    /// Tokens per sequence (corpora are packed into blocks of this size; records are cut to it).
    #[arg(long, default_value_t = 512)]
    pub block_size: usize,
    /// Evaluate on the validation data every N steps (0: only at the end).
    #[arg(long, default_value_t = 0)]
    pub eval_every: usize,
    /// Write a resumable checkpoint every N steps (0: never).
    #[arg(long, default_value_t = 0)]
    pub save_every: usize,
    /// Seed of the data order and of any random initialisation.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Continue from the latest checkpoint of this run, if there is one.
    #[arg(long)]
    pub resume: bool,
    /// Which matrix products run in bf16 (CPUs that have them; elsewhere f32): `auto` (the
    /// fastest this CPU runs whose results agree with f32: `bf16` with a bf16 kernel, else
    /// `f32`; resolved before the run, the choice printed and recorded), `f32` (none),
    /// `frozen-bf16` (the frozen weights, stored in bf16) or `bf16` (also the trained maps, as
    /// autocast; weights, gradients and AdamW stay f32).
    #[arg(long, default_value = "auto")]
    #[serde(default, skip_serializing_if = "Precision::is_f32")]
    pub precision: Precision,
    /// The GGUF block format the frozen emulator layers' weight matrices were kept in while
    /// tuning (`tune --frozen-quantized`; recorded with the adapter). Steps without a frozen
    /// emulator refuse it ([`TrainOptions::dense_only`]).
    #[arg(skip)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frozen_quantized: Option<crate::model::QuantType>,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            epochs: 1,
            max_steps: None,
            batch_size: 4,
            grad_accum: 1,
            lr: 1e-4,
            schedule: Schedule::Cosine,
            warmup_steps: 0,
            optimizer: OptimizerKind::Adamw,
            weight_decay: 0.0,
            clip: 1.0,
            block_size: 512,
            eval_every: 0,
            save_every: 0,
            seed: 42,
            resume: false,
            precision: Precision::F32,
            frozen_quantized: None,
        }
    }
}

impl TrainOptions {
    /// The options with `--precision auto` made concrete for this CPU; the choice is printed
    /// (prefixed by `label`) so the run's log says what ran.
    pub fn resolved(&self, label: &str) -> TrainOptions {
        let (precision, why) = self.precision.resolve();
        if let Some(why) = why {
            eprintln!("{label}: precision {why}");
        }
        TrainOptions {
            precision,
            ..self.clone()
        }
    }

    /// The options of a step that runs in f32 only (alignment, distillation): `auto` becomes
    /// `f32`, an explicit bf16 setting is refused naming `what`.
    pub fn f32_only(&self, what: &str) -> crate::Result<TrainOptions> {
        self.dense_only(what)?;
        let precision = self
            .precision
            .f32_only(what)
            .map_err(crate::Error::Invalid)?;
        Ok(TrainOptions {
            precision,
            ..self.clone()
        })
    }

    /// Refuses `--frozen-quantized` for `what`, a step that has no frozen emulator to keep
    /// quantized (or writes its weights back).
    pub fn dense_only(&self, what: &str) -> crate::Result<()> {
        match self.frozen_quantized {
            Some(f) => Err(crate::Error::Invalid(format!(
                "{what} does not keep weights quantized (--frozen-quantized {f} is for `offsite \
                 tune` through a frozen emulator): drop it"
            ))),
            None => Ok(()),
        }
    }

    /// Checks the options make sense together.
    pub fn validate(&self) -> crate::Result<()> {
        let bad = |m: &str| Err(crate::Error::Invalid(m.to_string()));
        if self.batch_size == 0 || self.grad_accum == 0 {
            return bad("--batch-size and --grad-accum must be at least 1");
        }
        if self.epochs == 0 && self.max_steps.is_none() {
            return bad("--epochs must be at least 1 (or give --max-steps)");
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad("--lr must be a positive number");
        }
        if self.clip < 0.0 || self.weight_decay < 0.0 {
            return bad("--clip and --weight-decay must not be negative");
        }
        if self.block_size < 2 {
            return bad("--block-size must be at least 2");
        }
        Ok(())
    }
}

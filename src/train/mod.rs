//! Training: options, learning-rate schedules, AdamW, resumable checkpoints, the loop, and the
//! language-modelling loss.

pub mod checkpoint;
pub mod collective;
mod evaluate;
pub mod finetune;
pub mod loss;
mod metrics_log;
pub mod optimizer;
pub mod options;
pub mod prepare;
pub mod schedule;
pub mod trainer;

pub use evaluate::{evaluate, evaluate_on};
pub use optimizer::{AdamW, Param};
pub use options::{Schedule, TrainOptions};
pub use prepare::prepare;
pub use trainer::{run_files, train, trainable_params, TrainJob, TrainOutcome, TrainSummary};

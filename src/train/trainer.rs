//! The training loop. It knows nothing about offsite-tuning: it gets the trainable parameters,
//! a loss over a batch, the data and the options. Emulator tuning, distillation and full
//! fine-tuning are short callers of [`train`].

use super::checkpoint::{self, LoopState, Snapshot};
use super::collective::{self, Collective};
use super::evaluate::evaluate_on;
use super::metrics_log::MetricsLog;
use super::optimizer::{AdamW, Param};
use super::options::TrainOptions;
use super::schedule::learning_rate;
use crate::data::{Batch, Sequence};
use crate::{Error, Result};
use candle_core::{Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What to train and where to keep the run's files.
pub struct TrainJob<'a> {
    /// The trainable parameters (everything else is frozen by construction).
    pub params: Vec<Param>,
    /// Training sequences.
    pub train: &'a [Sequence],
    /// Validation sequences; with them the best parameters (lowest validation loss) are kept.
    pub val: Option<&'a [Sequence]>,
    /// Padding id for batches.
    pub pad: u32,
    /// Device of the batches.
    pub device: Device,
    /// The options.
    pub options: TrainOptions,
    /// Folder for resumable checkpoints.
    pub checkpoint_dir: PathBuf,
    /// JSON-lines metrics log.
    pub metrics_log: PathBuf,
    /// Parameters of the model being trained, for the "trainable share" line.
    pub total_params: usize,
    /// A word for the progress bar ("tune", "finetune").
    pub label: String,
    /// Stop with [`Error::Interrupted`] once this many steps are done, as a crash would (tests
    /// of resumption; `None` in normal runs).
    pub stop_at: Option<usize>,
    /// Whether the loss is a mean token negative log-likelihood, so that its exponential is a
    /// perplexity worth reporting (not so for a distillation's weighted sum of losses).
    pub loss_is_nll: bool,
    /// The processes the run is spread over ([`collective::world`]: one, or MPI's ranks): each
    /// takes its slice of every batch; only rank 0 writes the log and checkpoints.
    pub collective: std::sync::Arc<dyn Collective>,
}

/// How the run went.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct TrainSummary {
    /// Optimizer steps taken.
    pub steps: usize,
    /// Input tokens processed.
    pub tokens: usize,
    /// Mean training loss over the last logged window of steps.
    pub final_train_loss: Option<f64>,
    /// Best validation loss and the step it was reached at.
    pub best_val_loss: Option<f64>,
    /// Step of the best validation loss (the returned parameters are from then).
    pub best_step: Option<usize>,
    /// Trainable scalars.
    pub trainable_params: usize,
    /// Wall time of this process's part of the run.
    pub seconds: f64,
    /// Tokens per second over this process's part of the run.
    pub tokens_per_s: f64,
}

/// The trained parameters (best on validation when there is validation data, else final).
#[derive(Debug)]
pub struct TrainOutcome {
    /// Parameter values by name.
    pub params: BTreeMap<String, Tensor>,
    /// Run summary.
    pub summary: TrainSummary,
}

/// Makes the weights of `model` whose names `pick` accepts trainable (all others frozen) and
/// returns them as the parameters to train.
pub fn trainable_params(
    model: &mut crate::model::Model,
    pick: impl Fn(&str) -> bool,
) -> Result<Vec<Param>> {
    let mut params = Vec::new();
    for (name, w) in model.named_weights_mut() {
        w.set_trainable(pick(&name))?;
        if let Some(var) = w.var() {
            params.push(Param::new(name, var.clone()));
        }
    }
    Ok(params)
}

impl<'a> TrainJob<'a> {
    /// A job whose checkpoints and metrics log sit beside `output` (see [`run_files`]).
    #[allow(clippy::too_many_arguments)]
    pub fn beside(
        output: &Path,
        label: &str,
        params: Vec<Param>,
        train: &'a [Sequence],
        val: Option<&'a [Sequence]>,
        pad: u32,
        options: &TrainOptions,
        total_params: usize,
    ) -> Self {
        let (checkpoint_dir, metrics_log) = run_files(output);
        TrainJob {
            params,
            train,
            val,
            pad,
            device: Device::Cpu,
            options: options.clone(),
            checkpoint_dir,
            metrics_log,
            total_params,
            label: label.into(),
            // Tests of resumption stop command-line runs as a crash would.
            stop_at: std::env::var("OFFSITE_TEST_STOP_AT_STEP")
                .ok()
                .and_then(|v| v.parse().ok()),
            loss_is_nll: true,
            collective: collective::world(),
        }
    }
}

/// Where a training run that writes `output` keeps its checkpoints (`OUTPUT.ckpt/`) and its
/// metrics log (`OUTPUT.metrics.jsonl`), beside the output.
pub fn run_files(output: &Path) -> (PathBuf, PathBuf) {
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "run".into());
    (
        output.with_file_name(format!("{name}.ckpt")),
        output.with_file_name(format!("{name}.metrics.jsonl")),
    )
}

/// The order of the sequences in epoch `epoch`: a permutation fixed by the seed and the epoch.
fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng =
        rand::rngs::StdRng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ epoch as u64);
    order.shuffle(&mut rng);
    order
}

/// A digest of the options that determine the run's result (a resume must not change them).
fn options_digest(o: &TrainOptions) -> String {
    let mut o = o.clone();
    o.resume = false;
    o.eval_every = 0;
    o.save_every = 0;
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(serde_json::to_vec(&o).unwrap_or_default())[..8])
}

/// Number of optimizer steps of the run.
pub fn total_steps(o: &TrainOptions, num_sequences: usize) -> usize {
    let micro_per_epoch = num_sequences.div_ceil(o.batch_size);
    match o.max_steps {
        Some(s) => s,
        None => (o.epochs * micro_per_epoch).div_ceil(o.grad_accum),
    }
}

fn snapshot_params(params: &[Param]) -> Result<BTreeMap<String, Tensor>> {
    params
        .iter()
        .map(|p| Ok((p.name.clone(), p.var.as_tensor().copy()?)))
        .collect()
}

/// The error for a step whose loss or gradient is not finite, naming the step and the first
/// parameter whose gradient is not (the update is never applied, so the parameters, the last
/// checkpoint and any earlier output stay as they were).
fn non_finite(job: &TrainJob<'_>, step: usize, loss: f64, grads: &[Tensor]) -> Error {
    let culprit = job.params.iter().zip(grads).find_map(|(p, g)| {
        let sq = g
            .sqr()
            .and_then(|s| {
                s.sum_all()?
                    .to_dtype(candle_core::DType::F64)?
                    .to_scalar::<f64>()
            })
            .unwrap_or(f64::NAN);
        (!sq.is_finite()).then(|| p.name.clone())
    });
    let what = match (loss.is_finite(), culprit) {
        (false, Some(name)) => {
            format!("the loss is {loss} and the gradient of `{name}` is not finite")
        }
        (false, None) => format!("the loss is {loss}"),
        (true, Some(name)) => format!("the gradient of `{name}` is not finite"),
        (true, None) => "the gradient norm is not finite".into(),
    };
    Error::Invalid(format!(
        "{}: step {step}: {what}; stopped before applying it, nothing written. The last \
         checkpoint in {} is intact (step {} was the last good one), but a resume repeats the \
         same step: run again with a lower --lr or a --clip",
        job.label,
        job.checkpoint_dir.display(),
        step - 1
    ))
}

/// Trains `job.params` to lower `loss` over `job.train`. `loss` gets a dropout seed during
/// training and `None` when evaluating.
pub fn train(
    job: TrainJob<'_>,
    loss: &dyn Fn(&Batch, Option<u64>) -> candle_core::Result<Tensor>,
) -> Result<TrainOutcome> {
    let o = &job.options;
    o.validate()?;
    if job.train.is_empty() {
        return Err(Error::Invalid("no training data".into()));
    }
    let group = job.collective.clone();
    // Rank 0 speaks for a data-parallel run (the others hold the same state).
    let root = group.is_root();
    let trainable: usize = job.params.iter().map(|p| p.var.elem_count()).sum();
    if root {
        eprintln!(
            "{}: {} trainable parameters ({:.2}% of {}), {} training sequences",
            job.label,
            trainable,
            100.0 * trainable as f64 / job.total_params.max(1) as f64,
            job.total_params,
            job.train.len()
        );
    }
    if group.size() > o.batch_size {
        return Err(Error::Invalid(format!(
            "--batch-size {} is smaller than the {} processes that share each batch",
            o.batch_size,
            group.size()
        )));
    }
    let total = total_steps(o, job.train.len());
    let digest = options_digest(o);
    let mut opt = AdamW::of_kind(&job.params, o.weight_decay, o.optimizer)?;
    let mut state = LoopState {
        step: 0,
        epoch: 0,
        micro: 0,
        tokens: 0,
        best: None,
        seed: o.seed,
        options_digest: digest.clone(),
    };
    let mut best: Option<BTreeMap<String, Tensor>> = None;

    let resumed = if o.resume {
        checkpoint::load_latest(&job.checkpoint_dir)?
    } else {
        None
    };
    if let Some(snap) = resumed {
        if snap.state.options_digest != digest {
            return Err(Error::format(
                &job.checkpoint_dir,
                "the checkpoint was written with other training options; resume with the same ones",
            ));
        }
        for (i, p) in job.params.iter().enumerate() {
            let missing =
                || Error::format(&job.checkpoint_dir, format!("no state for `{}`", p.name));
            p.var.set(snap.params.get(&p.name).ok_or_else(missing)?)?;
            opt.m[i] = snap.m.get(&p.name).ok_or_else(missing)?.clone();
            opt.v[i] = snap.v.get(&p.name).ok_or_else(missing)?.clone();
        }
        opt.t = snap.state.step;
        best = snap.best;
        state = snap.state;
        if root {
            eprintln!("{}: resumed at step {} of {total}", job.label, state.step);
        }
    } else if o.resume && root {
        eprintln!(
            "{}: no checkpoint in {}, starting from scratch",
            job.label,
            job.checkpoint_dir.display()
        );
    }
    if group.size() > 1 {
        // Every rank starts from rank 0's parameters (and checkpoint, read by all).
        collective::broadcast_params(group.as_ref(), &job.params)?;
        if root {
            eprintln!(
                "{}: data-parallel over {} processes, each batch of {} split between them",
                job.label,
                group.size(),
                o.batch_size
            );
        }
    }
    let mut log = root
        .then(|| MetricsLog::open(job.metrics_log.clone(), o.resume.then_some(state.step)))
        .transpose()?;

    let pb = if root {
        ProgressBar::new(total as u64).with_position(state.step as u64)
    } else {
        ProgressBar::hidden()
    };
    pb.set_style(
        ProgressStyle::with_template(
            "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg} (ETA {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb.set_prefix(job.label.clone());

    let micro_per_epoch = job.train.len().div_ceil(o.batch_size);
    let mut order = epoch_order(job.train.len(), o.seed, state.epoch);
    let started = Instant::now();
    let tokens_at_start = state.tokens;
    let mut window = Vec::new();
    let mut last_eval_step = None;
    let do_eval = |state: &mut LoopState,
                   best: &mut Option<BTreeMap<String, Tensor>>,
                   log: &mut Option<MetricsLog>|
     -> Result<()> {
        let Some(val) = job.val else { return Ok(()) };
        let v = evaluate_on(
            group.as_ref(),
            val,
            o.batch_size,
            job.pad,
            &job.device,
            loss,
        )?;
        let improved = state.best.is_none_or(|(b, _)| v < b);
        if improved {
            state.best = Some((v, state.step));
            *best = Some(snapshot_params(&job.params)?);
        }
        let mut record = serde_json::json!({"step": state.step, "val_loss": v, "best": improved});
        let mut line = format!("{}: step {} validation loss {v:.4}", job.label, state.step);
        if job.loss_is_nll {
            record["val_ppl"] = v.exp().into();
            line += &format!(" (ppl {:.2})", v.exp());
        }
        if improved {
            line += " *best*";
        }
        let Some(log) = log else { return Ok(()) };
        log.write(record)?;
        // A hidden bar (stderr not a terminal) swallows `println`.
        if pb.is_hidden() {
            eprintln!("{line}");
        } else {
            pb.println(line);
        }
        Ok(())
    };

    while state.step < total {
        let step_start = Instant::now();
        let mut grads: Vec<Option<Tensor>> = vec![None; job.params.len()];
        let mut step_loss = 0.0;
        let mut step_tokens = 0;
        for k in 0..o.grad_accum {
            if state.micro >= micro_per_epoch {
                state.epoch += 1;
                state.micro = 0;
                order = epoch_order(job.train.len(), o.seed, state.epoch);
            }
            let idx = &order
                [state.micro * o.batch_size..((state.micro + 1) * o.batch_size).min(order.len())];
            let idx = collective::slice(idx, group.rank(), group.size());
            state.micro += 1;
            let seqs: Vec<&Sequence> = idx.iter().map(|&i| &job.train[i]).collect();
            let batch = match seqs.is_empty() {
                true => None,
                false => Some(Batch::new(&seqs, job.pad, &job.device)?),
            };
            // Over several ranks each rank's mean loss counts by its share of the batch's
            // targets, so that the summed gradients are those of the whole batch's mean.
            let share = match (&batch, group.size()) {
                (_, 1) => 1.0,
                (b, _) => {
                    let mine = b.as_ref().map_or(0.0, |b| b.num_targets as f64);
                    let mut all = [mine];
                    group.all_reduce_sum_f64(&mut all)?;
                    mine / all[0].max(1.0)
                }
            };
            let Some(batch) = batch else { continue };
            // Each micro-batch's dropout masks come from the seed and its position in the run,
            // so a resumed run draws the same masks.
            let step_seed = crate::peft::lora::mix_seed(o.seed, state.step as u64);
            let micro_seed = crate::peft::lora::mix_seed(step_seed, k as u64);
            let mut l = loss(&batch, Some(micro_seed))?;
            if group.size() > 1 {
                l = (l * share)?;
            }
            step_loss +=
                l.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()? / o.grad_accum as f64;
            let g = (l / o.grad_accum as f64)?.backward()?;
            for (acc, p) in grads.iter_mut().zip(&job.params) {
                if let Some(gp) = g.get(&p.var) {
                    *acc = Some(match acc.take() {
                        Some(a) => (a + gp)?,
                        None => gp.clone(),
                    });
                }
            }
            step_tokens += batch.num_tokens;
        }
        let grads: Vec<Tensor> = grads
            .into_iter()
            .zip(&job.params)
            .map(|(g, p)| g.map_or_else(|| p.var.as_tensor().zeros_like(), Ok))
            .collect::<candle_core::Result<_>>()?;
        let grads = if group.size() > 1 {
            let mut sums = [step_loss, step_tokens as f64];
            group.all_reduce_sum_f64(&mut sums)?;
            (step_loss, step_tokens) = (sums[0], sums[1] as usize);
            collective::all_reduce_tensors(group.as_ref(), &grads)?
        } else {
            grads
        };
        let mut sq = 0.0;
        for g in &grads {
            sq += g
                .sqr()?
                .sum_all()?
                .to_dtype(candle_core::DType::F64)?
                .to_scalar::<f64>()?;
        }
        let norm = sq.sqrt();
        if !step_loss.is_finite() || !norm.is_finite() {
            pb.abandon();
            return Err(non_finite(&job, state.step + 1, step_loss, &grads));
        }
        let grads = if o.clip > 0.0 && norm > o.clip {
            let scale = o.clip / (norm + 1e-6);
            grads
                .iter()
                .map(|g| g * scale)
                .collect::<candle_core::Result<Vec<_>>>()?
        } else {
            grads
        };
        let lr = learning_rate(o.schedule, o.lr, o.warmup_steps, state.step, total);
        opt.step(&job.params, &grads, lr)?;
        state.step += 1;
        state.tokens += step_tokens;
        let dt = step_start.elapsed().as_secs_f64();
        window.push(step_loss);
        if window.len() > 10 {
            window.remove(0);
        }
        log.as_mut().map_or(Ok(()), |log| {
            log.write(serde_json::json!({
                "step": state.step, "epoch": state.epoch, "loss": step_loss, "lr": lr,
                "grad_norm": norm, "tokens": state.tokens, "tokens_per_s": step_tokens as f64 / dt,
                "elapsed_s": started.elapsed().as_secs_f64(),
            }))
        })?;
        pb.set_position(state.step as u64);
        pb.set_message(format!(
            "loss {step_loss:.4} lr {lr:.2e} {:.0} tok/s",
            step_tokens as f64 / dt
        ));
        if root && pb.is_hidden() && (state.step.is_multiple_of(10) || state.step == total) {
            eprintln!(
                "{}: step {}/{total} loss {step_loss:.4} lr {lr:.2e} {:.0} tok/s",
                job.label,
                state.step,
                step_tokens as f64 / dt
            );
        }
        if o.eval_every > 0 && state.step.is_multiple_of(o.eval_every) {
            do_eval(&mut state, &mut best, &mut log)?;
            last_eval_step = Some(state.step);
        }
        if root && o.save_every > 0 && state.step.is_multiple_of(o.save_every) {
            checkpoint::save(
                &job.checkpoint_dir,
                &Snapshot {
                    state: state.clone(),
                    params: snapshot_params(&job.params)?,
                    m: job
                        .params
                        .iter()
                        .map(|p| p.name.clone())
                        .zip(opt.m.iter().cloned())
                        .collect(),
                    v: job
                        .params
                        .iter()
                        .map(|p| p.name.clone())
                        .zip(opt.v.iter().cloned())
                        .collect(),
                    best: best.clone(),
                },
            )?;
        }
        if job.stop_at == Some(state.step) {
            pb.abandon();
            return Err(Error::Interrupted(state.step));
        }
    }
    if job.val.is_some() && last_eval_step != Some(state.step) {
        do_eval(&mut state, &mut best, &mut log)?;
    }
    pb.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let tokens = state.tokens - tokens_at_start;
    let params = match best {
        Some(b) => b,
        None => snapshot_params(&job.params)?,
    };
    Ok(TrainOutcome {
        params,
        summary: TrainSummary {
            steps: state.step,
            tokens: state.tokens,
            final_train_loss: (!window.is_empty())
                .then(|| window.iter().sum::<f64>() / window.len() as f64),
            best_val_loss: state.best.map(|b| b.0),
            best_step: state.best.map(|b| b.1),
            trainable_params: trainable,
            seconds,
            tokens_per_s: tokens as f64 / seconds.max(1e-9),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;
    use std::cell::Cell;

    #[test]
    fn a_nan_loss_stops_the_run_naming_the_step_and_keeps_the_last_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let w = Var::new(&[1f32, 2.0], &Device::Cpu).unwrap();
        let data: Vec<Sequence> = (0..4)
            .map(|i| Sequence {
                ids: vec![1, 2, 3 + i],
                loss_from: 1,
            })
            .collect();
        let options = TrainOptions {
            max_steps: Some(6),
            batch_size: 1,
            save_every: 2,
            lr: 1e-2,
            ..TrainOptions::default()
        };
        for poison in [f32::NAN, f32::INFINITY] {
            let job = TrainJob::beside(
                &dir.path().join("out.safetensors"),
                "test",
                vec![Param::new("w", w.clone())],
                &data,
                None,
                0,
                &options,
                2,
            );
            let calls = Cell::new(0);
            // Steps 1-2 are fine; step 3's loss (poison · w²) is non-finite in value or gradient.
            let loss = |_: &Batch, _: Option<u64>| {
                calls.set(calls.get() + 1);
                let scale = if calls.get() >= 3 { poison } else { 1.0 };
                w.as_tensor().sqr()?.sum_all()? * scale as f64
            };
            let before = w.as_tensor().to_vec1::<f32>().unwrap();
            let err = train(job, &loss).unwrap_err().to_string();
            assert!(err.contains("step 3:") && err.contains("`w`"), "{err}");
            assert!(err.contains("out.safetensors.ckpt"), "{err}");
            // The parameters are those of step 2, finite; the checkpoint of step 2 is there.
            let after = w.as_tensor().to_vec1::<f32>().unwrap();
            assert!(after.iter().all(|v| v.is_finite()) && after != before);
            let snap = checkpoint::load_latest(&dir.path().join("out.safetensors.ckpt"))
                .unwrap()
                .unwrap();
            assert_eq!(snap.state.step, 2);
            assert_eq!(snap.params["w"].to_vec1::<f32>().unwrap(), after);
            std::fs::remove_dir_all(dir.path().join("out.safetensors.ckpt")).unwrap();
            w.set(&Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap())
                .unwrap();
        }
    }
}

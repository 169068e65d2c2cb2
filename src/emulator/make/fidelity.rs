//! How faithfully an emulator stands in for the full model's middle: the residual stream at the
//! top adapter's input, emulator against full model, on the same text.
//!
//! Every figure is per token and then averaged over tokens, so that one massive activation (e.g.
//! SmolLM2's ~22k at position 0, dimension 507) counts as one token, not as most of the energy of
//! a block; the first position is also reported on its own.

use super::plan::Split;
use crate::data::Batch;
use crate::model::Model;
use crate::{Error, Result};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

/// Per-token agreement of two residual streams, averaged over the counted tokens.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Fidelity {
    /// Tokens compared.
    pub tokens: usize,
    /// Mean cosine similarity of emulator and full-model vectors.
    pub cosine: f64,
    /// Mean `‖s − t‖ / ‖t‖` (s: emulator, t: full model).
    pub rel_l2: f64,
    /// Mean `‖s‖ / ‖t‖`.
    pub norm_ratio: f64,
    /// `‖s − t‖ / ‖t‖` at the first position of each row alone (where attention sinks and
    /// massive activations sit), averaged over rows.
    pub first_rel_l2: f64,
}

/// Running sums behind a [`Fidelity`]: add batches, then [`FidelitySums::finish`].
#[derive(Clone, Debug, Default)]
pub struct FidelitySums {
    tokens: usize,
    cosine: f64,
    rel_l2: f64,
    norm_ratio: f64,
    rows: usize,
    first_rel_l2: f64,
}

impl FidelitySums {
    /// The averages over everything added.
    pub fn finish(&self) -> Fidelity {
        let n = self.tokens.max(1) as f64;
        Fidelity {
            tokens: self.tokens,
            cosine: self.cosine / n,
            rel_l2: self.rel_l2 / n,
            norm_ratio: self.norm_ratio / n,
            first_rel_l2: self.first_rel_l2 / self.rows.max(1) as f64,
        }
    }

    /// Adds `[batch, seq, hidden]` full-model (`t`) and emulator (`s`) states at the positions
    /// where `lens` (each row's real length) says there is a token.
    pub fn add(&mut self, t: &Tensor, s: &Tensor, lens: &[usize]) -> Result<()> {
        let t = t.to_dtype(candle_core::DType::F32)?.to_vec3::<f32>()?;
        let s = s.to_dtype(candle_core::DType::F32)?.to_vec3::<f32>()?;
        for ((tr, sr), &len) in t.iter().zip(&s).zip(lens) {
            for (pos, (tv, sv)) in tr.iter().zip(sr).take(len).enumerate() {
                let (mut tt, mut ss, mut ts, mut dd) = (0f64, 0f64, 0f64, 0f64);
                for (&a, &b) in tv.iter().zip(sv) {
                    let (a, b) = (a as f64, b as f64);
                    tt += a * a;
                    ss += b * b;
                    ts += a * b;
                    dd += (a - b) * (a - b);
                }
                let (tn, sn) = (tt.sqrt(), ss.sqrt());
                let rel = dd.sqrt() / tn.max(f64::MIN_POSITIVE);
                self.tokens += 1;
                self.cosine += ts / (tn * sn).max(f64::MIN_POSITIVE);
                self.rel_l2 += rel;
                self.norm_ratio += sn / tn.max(f64::MIN_POSITIVE);
                if pos == 0 {
                    self.rows += 1;
                    self.first_rel_l2 += rel;
                }
            }
        }
        Ok(())
    }
}

/// Compares full-model states `teacher` with emulator states `student` (`[batch, seq, hidden]`)
/// over the first `lens[r]` positions of each row `r`.
pub fn compare(teacher: &Tensor, student: &Tensor, lens: &[usize]) -> Result<Fidelity> {
    if teacher.dims() != student.dims() {
        return Err(Error::Invalid(format!(
            "cannot compare hidden states of shapes {:?} and {:?}",
            teacher.dims(),
            student.dims()
        )));
    }
    let mut sums = FidelitySums::default();
    sums.add(teacher, student, lens)?;
    Ok(sums.finish())
}

/// Each row's real length in `batch` (padding after it).
pub fn row_lengths(batch: &Batch) -> Result<Vec<usize>> {
    let (b, t) = batch.inputs.dims2()?;
    let w = batch.weights.to_vec2::<f32>()?;
    // Packed text counts every target, records only the answer: the row ends at its last
    // counted target either way (what comes after is padding).
    Ok((0..b)
        .map(|r| w[r].iter().rposition(|&x| x > 0.0).map_or(t, |p| p + 1))
        .collect())
}

/// One calibration batch with the full model's states at the emulator's input and output.
struct Cached {
    /// Bottom adapter's output: the emulator's input.
    input: Tensor,
    /// The full model's middle output: what the emulator should reproduce.
    target: Tensor,
    lens: Vec<usize>,
    ctx: crate::model::LayerContext,
}

/// The full model's middle on calibration text, kept so that any emulator layer map (including
/// maps that repeat a layer) can be scored against it without rerunning the full model: what
/// the data-driven strategies search with.
pub struct MiddleProbe<'a> {
    full: &'a Model,
    bottom: usize,
    top: usize,
    batches: Vec<Cached>,
}

impl<'a> MiddleProbe<'a> {
    /// Runs `full` (all its layers) over `batches` once.
    pub fn new(full: &'a Model, bottom: usize, top: usize, batches: &[Batch]) -> Result<Self> {
        let n = full.config().num_layers;
        if full.layer_ids() != (0..n).collect::<Vec<_>>() {
            return Err(Error::Invalid(
                "measuring an emulator needs the full model with all its layers".into(),
            ));
        }
        if bottom + top > n {
            return Err(Error::Invalid(format!(
                "an adapter of {bottom} + {top} layers does not fit a {n}-layer model"
            )));
        }
        if batches.is_empty() {
            return Err(Error::Invalid("no calibration text to measure on".into()));
        }
        let batches = batches
            .iter()
            .map(|b| {
                let (_, t) = b.inputs.dims2()?;
                let ctx = full.layer_context(0, t)?;
                let input = full.forward_layers(full.embed(&b.inputs)?, &ctx, 0..bottom)?;
                let target = full.forward_layers(input.clone(), &ctx, bottom..n - top)?;
                Ok(Cached {
                    input,
                    target,
                    lens: row_lengths(b)?,
                    ctx,
                })
            })
            .collect::<Result<_>>()?;
        Ok(MiddleProbe {
            full,
            bottom,
            top,
            batches,
        })
    }

    /// The full model.
    pub fn full(&self) -> &Model {
        self.full
    }

    /// The middle layers' original indices.
    pub fn middle(&self) -> std::ops::Range<usize> {
        self.bottom..self.full.config().num_layers - self.top
    }

    /// The emulator's input of every calibration batch (the bottom adapter's output).
    pub fn inputs(&self) -> impl Iterator<Item = (&Tensor, &[usize])> {
        self.batches.iter().map(|c| (&c.input, c.lens.as_slice()))
    }

    /// Runs original layers `map` (in order) over `h`, the state of batch `b`.
    pub fn run(&self, b: usize, h: Tensor, map: &[usize]) -> Result<Tensor> {
        let ctx = &self.batches[b].ctx;
        let mut h = h;
        for &i in map {
            h = self.full.layers()[i].forward(&h, ctx, None)?;
        }
        Ok(h)
    }

    /// Fidelity of the emulator that runs original middle layers `map`.
    pub fn fidelity(&self, map: &[usize]) -> Result<Fidelity> {
        let mut sums = FidelitySums::default();
        for (b, c) in self.batches.iter().enumerate() {
            let out = self.run(b, c.input.clone(), map)?;
            sums.add(&c.target, &out, &c.lens)?;
        }
        Ok(sums.finish())
    }

    /// The states after each prefix of `map`, per batch: `states[b][j]` is batch `b` after
    /// `map[..j]` (so `j = 0` is the input). Lets a search score a change at position `j`
    /// starting from `states[b][j]`.
    pub fn prefix_states(&self, map: &[usize]) -> Result<Vec<Vec<Tensor>>> {
        self.batches
            .iter()
            .map(|c| {
                let mut h = c.input.clone();
                let mut out = vec![h.clone()];
                for &i in map {
                    h = self.full.layers()[i].forward(&h, &c.ctx, None)?;
                    out.push(h.clone());
                }
                Ok(out)
            })
            .collect()
    }

    /// Fidelity of running `rest` from given per-batch states (`starts[b]`).
    pub fn fidelity_from(&self, starts: &[&Tensor], rest: &[usize]) -> Result<Fidelity> {
        let mut sums = FidelitySums::default();
        for (b, c) in self.batches.iter().enumerate() {
            let out = self.run(b, starts[b].clone(), rest)?;
            sums.add(&c.target, &out, &c.lens)?;
        }
        Ok(sums.finish())
    }
}

/// The fidelity of `split`'s emulator of `full` on `batches`.
pub fn split_fidelity(full: &Model, split: &Split, batches: &[Batch]) -> Result<Fidelity> {
    MiddleProbe::new(full, split.bottom.len(), split.top.len(), batches)?.fidelity(&split.emulator)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn per_token_figures_match_a_hand_computation() {
        // Row 0: t = (3, 4), s = (3, 0) at position 0; t = (1, 0), s = (2, 0) at position 1.
        // Row 1 has one real token: t = (0, 2), s = (0, 2); its second position is padding.
        let t = Tensor::new(
            &[[[3.0f32, 4.0], [1.0, 0.0]], [[0.0, 2.0], [7.0, 7.0]]],
            &Device::Cpu,
        )
        .unwrap();
        let s = Tensor::new(
            &[[[3.0f32, 0.0], [2.0, 0.0]], [[0.0, 2.0], [0.0, 0.0]]],
            &Device::Cpu,
        )
        .unwrap();
        let f = compare(&t, &s, &[2, 1]).unwrap();
        assert_eq!(f.tokens, 3);
        // Cosines 3/5, 1, 1; relative errors 4/5, 1, 0; norm ratios 3/5, 2, 1.
        let close = |a: f64, b: f64| assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        close(f.cosine, (0.6 + 1.0 + 1.0) / 3.0);
        close(f.rel_l2, (0.8 + 1.0 + 0.0) / 3.0);
        close(f.norm_ratio, (0.6 + 2.0 + 1.0) / 3.0);
        // First positions: 4/5 and 0.
        close(f.first_rel_l2, 0.4);
        assert!(compare(&t, &s.narrow(1, 0, 1).unwrap(), &[1, 1]).is_err());
    }

    #[test]
    fn the_whole_middle_is_exact_and_dropping_layers_is_not() {
        use crate::model::ModelConfig;
        let config = ModelConfig {
            num_layers: 6,
            ..ModelConfig::tiny()
        };
        let full = Model::random(&config, 3, candle_core::DType::F32).unwrap();
        let seq = crate::data::Sequence {
            ids: (0..9).map(|i| (i * 7 % 31 + 1) as u32).collect(),
            loss_from: 1,
        };
        let batch = Batch::new(&[&seq], 0, &Device::Cpu).unwrap();
        let probe = MiddleProbe::new(&full, 1, 1, std::slice::from_ref(&batch)).unwrap();
        assert_eq!(probe.middle(), 1..5);
        let exact = probe.fidelity(&[1, 2, 3, 4]).unwrap();
        assert_eq!(exact.tokens, 8);
        assert!(exact.rel_l2 < 1e-6 && (exact.cosine - 1.0).abs() < 1e-6);
        let dropped = probe.fidelity(&[1, 4]).unwrap();
        assert!(dropped.rel_l2 > 1e-3, "{dropped:?}");
        // Scoring from cached prefix states gives the same figures.
        let states = probe.prefix_states(&[1, 2]).unwrap();
        let from = probe.fidelity_from(&[&states[0][1]], &[4]).unwrap();
        assert_eq!(from, probe.fidelity(&[1, 4]).unwrap());
        let split = crate::emulator::plan(6, 1, 1, 2).unwrap();
        assert_eq!(split_fidelity(&full, &split, &[batch]).unwrap(), dropped);
    }
}

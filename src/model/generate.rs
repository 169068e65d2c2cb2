//! Text generation with a KV cache: greedy by default, or temperature + nucleus sampling.

use super::model::{Model, ModelCache};
use candle_core::{Result, Tensor};
use rand::{Rng, SeedableRng};

/// How the next token is picked.
#[derive(Clone, Debug, PartialEq)]
pub enum Sampling {
    /// The most likely token (ties go to the lowest id, as `torch.argmax` does).
    Greedy,
    /// Sample from `softmax(logits / temperature)` restricted to the smallest set of tokens
    /// whose probability mass reaches `top_p`.
    Random {
        /// Softmax temperature (> 0).
        temperature: f64,
        /// Nucleus mass in (0, 1].
        top_p: f64,
        /// Seed of the sampler's random generator.
        seed: u64,
    },
}

/// Index of the largest value (first one on ties).
fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best as u32
}

/// Draws from the nucleus of `softmax(logits / temperature)`.
fn sample(logits: &[f32], temperature: f64, top_p: f64, rng: &mut impl Rng) -> u32 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let mut probs: Vec<(u32, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, ((l as f64 - max) / temperature).exp()))
        .collect();
    let total: f64 = probs.iter().map(|p| p.1).sum();
    let probs = nucleus(&mut probs, total, top_p);
    let kept_total: f64 = probs.iter().map(|p| p.1).sum();
    let mut r = rng.random::<f64>() * kept_total;
    for &(id, p) in probs {
        if r < p {
            return id;
        }
        r -= p;
    }
    probs[probs.len() - 1].0
}

/// The smallest most-probable prefix of `probs` (by probability, then id) whose mass reaches
/// `top_p` of `total`, in that order. Only the leading candidates are sorted: a partial
/// selection of 64, then 256, … until their mass reaches `top_p`, instead of sorting the whole
/// vocabulary (262,144 entries for Gemma) for every token. The same prefix as a full sort.
fn nucleus(probs: &mut [(u32, f64)], total: f64, top_p: f64) -> &[(u32, f64)] {
    let order = |a: &(u32, f64), b: &(u32, f64)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    let mut k = 64.min(probs.len());
    loop {
        if k < probs.len() {
            probs.select_nth_unstable_by(k - 1, order);
        }
        probs[..k].sort_by(order);
        let mut mass = 0.0;
        for (i, (_, p)) in probs[..k].iter().enumerate() {
            mass += p / total;
            if mass >= top_p {
                return &probs[..=i];
            }
        }
        if k == probs.len() {
            return probs;
        }
        k = (k * 4).min(probs.len());
    }
}

/// Continues `prompt` by up to `max_tokens` tokens, stopping before any token in `stop` (which
/// is not returned). Returns the continuation's ids.
pub fn generate(
    model: &Model,
    prompt: &[u32],
    max_tokens: usize,
    stop: &[u32],
    sampling: &Sampling,
) -> Result<Vec<u32>> {
    if prompt.is_empty() {
        candle_core::bail!("cannot generate from an empty prompt");
    }
    let mut rng = match sampling {
        Sampling::Random { seed, .. } => rand::rngs::StdRng::seed_from_u64(*seed),
        Sampling::Greedy => rand::rngs::StdRng::seed_from_u64(0),
    };
    let mut cache = ModelCache::default();
    let mut input = prompt.to_vec();
    let mut out = Vec::new();
    while out.len() < max_tokens {
        let ids = Tensor::new(input.as_slice(), model.device())?.unsqueeze(0)?;
        let last = model
            .forward_cached_last(&ids, &mut cache)?
            .squeeze(0)?
            .to_dtype(candle_core::DType::F32)?
            .to_vec1::<f32>()?;
        let next = match sampling {
            Sampling::Greedy => argmax(&last),
            Sampling::Random {
                temperature, top_p, ..
            } => sample(&last, *temperature, *top_p, &mut rng),
        };
        if stop.contains(&next) {
            break;
        }
        out.push(next);
        input = vec![next];
    }
    Ok(out)
}

/// Continues one `prompt` `samplings.len()` times at once, the i-th continuation drawn with
/// `samplings[i]`: the prompt runs once, then every step runs all continuations as one batch,
/// so the weights are read once per step for all of them (a step of one continuation is bound
/// by reading the weights; a batch of 8 costs little more). Each continuation stops before a
/// token in `stop` or at `max_tokens`, as [`generate`]'s does. A batch's products can round
/// differently from one row's (they did on SmolLM2, not on the tiny test model), so a
/// continuation depends on the batch it ran in: callers that must reproduce a sample fix the
/// batches (`offsite sample` does).
pub fn generate_batch(
    model: &Model,
    prompt: &[u32],
    max_tokens: usize,
    stop: &[u32],
    samplings: &[Sampling],
) -> Result<Vec<Vec<u32>>> {
    if prompt.is_empty() {
        candle_core::bail!("cannot generate from an empty prompt");
    }
    let n = samplings.len();
    let mut rngs: Vec<rand::rngs::StdRng> = samplings
        .iter()
        .map(|s| match s {
            Sampling::Random { seed, .. } => rand::rngs::StdRng::seed_from_u64(*seed),
            Sampling::Greedy => rand::rngs::StdRng::seed_from_u64(0),
        })
        .collect();
    let mut out = vec![Vec::new(); n];
    if n == 0 || max_tokens == 0 {
        return Ok(out);
    }
    let mut done = vec![false; n];
    let pick = |last: &[f32], s: &Sampling, rng: &mut rand::rngs::StdRng| match s {
        Sampling::Greedy => argmax(last),
        Sampling::Random {
            temperature, top_p, ..
        } => sample(last, *temperature, *top_p, rng),
    };
    let mut cache = ModelCache::default();
    let ids = Tensor::new(prompt, model.device())?.unsqueeze(0)?;
    let first = model
        .forward_cached_last(&ids, &mut cache)?
        .squeeze(0)?
        .to_dtype(candle_core::DType::F32)?
        .to_vec1::<f32>()?;
    let mut cache = cache.repeat_batch(n)?;
    let mut rows: Vec<Vec<f32>> = vec![first; n];
    loop {
        let mut next = vec![0u32; n];
        for i in 0..n {
            if done[i] {
                continue;
            }
            let t = pick(&rows[i], &samplings[i], &mut rngs[i]);
            if stop.contains(&t) {
                done[i] = true;
            } else {
                out[i].push(t);
                next[i] = t;
                done[i] = out[i].len() >= max_tokens;
            }
        }
        if done.iter().all(|&d| d) {
            return Ok(out);
        }
        // A finished continuation keeps a row in the batch (its outputs are ignored).
        let ids = Tensor::new(next.as_slice(), model.device())?.unsqueeze(1)?;
        rows = model
            .forward_cached_last(&ids, &mut cache)?
            .to_dtype(candle_core::DType::F32)?
            .to_vec2::<f32>()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The partial selection keeps exactly the prefix a full sort gives, ties by id.
    #[test]
    fn nucleus_equals_a_full_sort() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for n in [1usize, 5, 64, 65, 1000, 5000] {
            for top_p in [1e-9, 0.3, 0.9, 0.999, 1.0] {
                // Peaked and flat distributions, with ties.
                let probs: Vec<(u32, f64)> = (0..n as u32)
                    .map(|i| (i, ((rng.random::<f64>() * 8.0).floor()).exp()))
                    .collect();
                let total: f64 = probs.iter().map(|p| p.1).sum();
                let mut full = probs.clone();
                full.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                let mut mass = 0.0;
                let mut kept = 0;
                for (_, p) in &full {
                    mass += p / total;
                    kept += 1;
                    if mass >= top_p {
                        break;
                    }
                }
                let mut work = probs.clone();
                assert_eq!(
                    nucleus(&mut work, total, top_p),
                    &full[..kept],
                    "n {n} p {top_p}"
                );
            }
        }
    }

    #[test]
    fn argmax_takes_first_of_ties() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
    }

    #[test]
    fn tiny_top_p_is_greedy_and_seed_is_reproducible() {
        let logits = [0.1f32, 2.0, 1.9, -1.0];
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for _ in 0..20 {
            assert_eq!(sample(&logits, 1.0, 1e-9, &mut rng), 1);
        }
        let draw = |seed| {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            (0..10)
                .map(|_| sample(&logits, 1.0, 1.0, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
    }

    /// A batch of continuations gives each one what it gives alone where the batched products
    /// round as single ones do (they do on this tiny f32 model), greedy and sampled, with stops.
    #[test]
    fn a_batch_continues_like_each_continuation_alone() -> Result<()> {
        use crate::model::ModelConfig;
        let config = ModelConfig::tiny();
        let model = Model::random(&config, 11, candle_core::DType::F32).unwrap();
        let prompt = [1u32, 5, 9, 3];
        let samplings: Vec<Sampling> = std::iter::once(Sampling::Greedy)
            .chain((0..5).map(|seed| Sampling::Random {
                temperature: 1.5,
                top_p: 0.9,
                seed,
            }))
            .collect();
        for stop in [vec![], vec![2u32, 7]] {
            let batch = generate_batch(&model, &prompt, 12, &stop, &samplings)?;
            for (s, got) in samplings.iter().zip(&batch) {
                assert_eq!(got, &generate(&model, &prompt, 12, &stop, s)?, "{s:?}");
                assert!(got.iter().all(|t| !stop.contains(t)));
            }
        }
        assert!(generate_batch(&model, &[], 4, &[], &samplings).is_err());
        assert!(generate_batch(&model, &prompt, 4, &[], &[])?.is_empty());
        Ok(())
    }
}

//! Multiple-choice scoring with lm-evaluation-harness semantics: each choice's summed
//! log-likelihood as a continuation of the context; `acc` takes the argmax of the sums,
//! `acc_norm` of the sums divided by the choice's length in characters; both with lm-eval's
//! standard error (sample standard deviation / √n).
//!
//! Tokenization follows lm-eval's `_encode_pair`: trailing spaces of the context move to the
//! continuation, the context is encoded alone, and the continuation's tokens are those of
//! `encode(context + continuation)` after the context's token count — so a choice that merges
//! with the context at the boundary is scored on the tokens lm-eval scores.
//!
//! The context is run once per question; its KV cache is shared by all the choices, which are
//! scored together as one batch. Anything that is a [`Scorer`] can be scored (a model, or the
//! proxy's logit arithmetic).

use super::scorer::Scorer;
use crate::data::tasks::McRecord;
use crate::io::tokenizer::Tokenizer;
use crate::model::log_softmax;
use crate::{Error, Result};
use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

/// lm-eval's `_encode_pair`: (context tokens, continuation tokens).
pub fn encode_pair(
    tok: &Tokenizer,
    context: &str,
    continuation: &str,
) -> Result<(Vec<u32>, Vec<u32>)> {
    let trimmed = context.trim_end_matches(' ');
    let n_spaces = context.len() - trimmed.len();
    let (context, continuation) = if n_spaces > 0 {
        (
            trimmed,
            format!("{}{continuation}", &context[trimmed.len()..]),
        )
    } else {
        (context, continuation.to_string())
    };
    let whole = tok.encode_start(&format!("{context}{continuation}"))?;
    let ctx = tok.encode_start(context)?;
    let cont = whole.get(ctx.len()..).unwrap_or_default().to_vec();
    Ok((ctx, cont))
}

/// The summed log-likelihood of each choice given the context.
pub fn choice_logliks(
    model: &dyn Scorer,
    tok: &Tokenizer,
    context: &str,
    choices: &[String],
    max_len: usize,
    prefix: u32,
) -> Result<Vec<f64>> {
    let mut pairs = Vec::with_capacity(choices.len());
    for c in choices {
        let (ctx, cont) = if context.is_empty() {
            // lm-eval: an empty context is the prefix token.
            (vec![prefix], tok.encode(c)?)
        } else {
            encode_pair(tok, context, c)?
        };
        pairs.push((ctx, cont));
    }
    let ctx = pairs[0].0.clone();
    let max_cont = pairs.iter().map(|p| p.1.len()).max().unwrap_or(0);
    if max_cont == 0 {
        return Err(Error::Invalid(format!(
            "a choice has no tokens of its own after the context {context:?}"
        )));
    }
    // Left-truncate the context so that context + longest continuation fits (as lm-eval does).
    let keep = max_len.saturating_sub(max_cont).max(1);
    let ctx = &ctx[ctx.len().saturating_sub(keep)..];
    if ctx.is_empty() {
        return Err(Error::Invalid("empty context after tokenization".into()));
    }
    let device = model.device();
    let ctx = Tensor::new(ctx, device)?.unsqueeze(0)?;
    // The rest of each continuation, all choices in one batch after the shared context.
    let n = choices.len();
    let len = max_cont - 1;
    let rest = if len > 0 {
        let mut ids = vec![0u32; n * len];
        for (row, (_, c)) in pairs.iter().enumerate() {
            for (i, &t) in c[..c.len() - 1].iter().enumerate() {
                ids[row * len + i] = t;
            }
        }
        Some(Tensor::from_vec(ids, (n, len), device)?)
    } else {
        None
    };
    let (first, rest) = model.shared_prefix(&ctx, rest.as_ref())?;
    // Log-probabilities of the first continuation token, from the context's last position.
    let first = log_softmax(&first.to_dtype(DType::F64)?)?.to_vec1::<f64>()?;
    let mut out: Vec<f64> = pairs.iter().map(|(_, c)| first[c[0] as usize]).collect();
    if let Some(logits) = rest {
        let logp = log_softmax(&logits.to_dtype(DType::F64)?)?;
        for (row, (_, c)) in pairs.iter().enumerate() {
            if c.len() < 2 {
                continue;
            }
            let targets = Tensor::new(&c[1..], device)?.unsqueeze(1)?;
            let lp = logp
                .get(row)?
                .narrow(0, 0, c.len() - 1)?
                .gather(&targets, 1)?;
            out[row] += lp.sum_all()?.to_scalar::<f64>()?;
        }
    }
    Ok(out)
}

/// Accuracy of a multiple-choice evaluation, with lm-eval's keys.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct McReport {
    /// Fraction of questions whose highest-likelihood choice is right.
    pub acc: f64,
    /// Standard error of `acc`.
    pub acc_stderr: f64,
    /// Same with likelihoods divided by the choice's length in characters.
    pub acc_norm: f64,
    /// Standard error of `acc_norm`.
    pub acc_norm_stderr: f64,
    /// Questions scored.
    pub n: usize,
    /// Mean margin in nats: the best gold choice's log-likelihood minus the best wrong one's
    /// (> 0 where `acc` counts the question right). Tells "no transfer" (margins unchanged)
    /// from "transfer short of the decision threshold" (margins moved, accuracy not yet).
    #[serde(default)]
    pub margin: f64,
    /// Standard error of `margin`.
    #[serde(default)]
    pub margin_stderr: f64,
    /// For two-choice tasks with one gold each: the ROC AUC of `ll[1] − ll[0]` as a score for
    /// "choice 1 is gold" — threshold-free, so a shifted but informative model shows here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auc: Option<f64>,
}

/// Index of the largest value (first on ties, as numpy's argmax).
fn argmax(v: &[f64]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

/// lm-eval's `mean` and `mean_stderr` (sample standard deviation over √n).
fn mean_and_stderr(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    if xs.len() < 2 {
        return (mean, 0.0);
    }
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, (var / n).sqrt())
}

/// The choice's length for `acc_norm`: characters of the choice as lm-eval's `doc_to_choice`
/// gives it, i.e. without the single leading space our records carry as lm-eval's target
/// delimiter.
pub fn choice_chars(choice: &str) -> usize {
    choice.strip_prefix(' ').unwrap_or(choice).chars().count()
}

/// acc / acc_norm from per-question log-likelihoods and their records (a question counts as
/// right when the argmax is one of its gold choices).
pub fn mc_metrics(scored: &[(Vec<f64>, &McRecord)]) -> McReport {
    let mut acc = Vec::with_capacity(scored.len());
    let mut acc_norm = Vec::with_capacity(scored.len());
    for (ll, record) in scored {
        acc.push(record.is_gold(argmax(ll)) as u8 as f64);
        let normed: Vec<f64> = ll
            .iter()
            .zip(&record.choices)
            .map(|(l, c)| l / choice_chars(c).max(1) as f64)
            .collect();
        acc_norm.push(record.is_gold(argmax(&normed)) as u8 as f64);
    }
    let (a, ae) = mean_and_stderr(&acc);
    let (an, ane) = mean_and_stderr(&acc_norm);
    let margins: Vec<f64> = scored.iter().map(|(ll, r)| margin(ll, r)).collect();
    let (m, me) = mean_and_stderr(&margins);
    McReport {
        acc: a,
        acc_stderr: ae,
        acc_norm: an,
        acc_norm_stderr: ane,
        n: scored.len(),
        margin: m,
        margin_stderr: me,
        auc: binary_auc(scored),
    }
}

/// Best gold log-likelihood minus best wrong one (0 when every choice is gold).
fn margin(ll: &[f64], record: &McRecord) -> f64 {
    let best = |gold: bool| {
        ll.iter()
            .enumerate()
            .filter(|(i, _)| record.is_gold(*i) == gold)
            .map(|(_, &l)| l)
            .fold(f64::NEG_INFINITY, f64::max)
    };
    let (g, w) = (best(true), best(false));
    if w == f64::NEG_INFINITY {
        0.0
    } else {
        g - w
    }
}

/// Mann–Whitney ROC AUC of `ll[1] − ll[0]` against "gold is choice 1", ties counted half; `None`
/// unless every question has exactly two choices and one gold, and both classes occur.
fn binary_auc(scored: &[(Vec<f64>, &McRecord)]) -> Option<f64> {
    let mut pos = Vec::new();
    let mut neg = Vec::new();
    for (ll, r) in scored {
        if ll.len() != 2 || r.gold_indices().len() != 1 {
            return None;
        }
        let s = ll[1] - ll[0];
        if r.is_gold(1) {
            pos.push(s);
        } else {
            neg.push(s);
        }
    }
    if pos.is_empty() || neg.is_empty() {
        return None;
    }
    // Rank-sum form, O(n log n): sort all scores, average ranks over ties.
    let mut all: Vec<(f64, bool)> = pos.iter().map(|&s| (s, true)).collect();
    all.extend(neg.iter().map(|&s| (s, false)));
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        while j < all.len() && all[j].0 == all[i].0 {
            j += 1;
        }
        let avg = (i + j + 1) as f64 / 2.0; // ranks i+1..=j
        rank_sum += all[i..j].iter().filter(|x| x.1).count() as f64 * avg;
        i = j;
    }
    let (np, nn) = (pos.len() as f64, neg.len() as f64);
    Some((rank_sum - np * (np + 1.0) / 2.0) / (np * nn))
}

/// Scores every record with `model` (a progress bar on stderr) and computes acc / acc_norm.
pub fn evaluate_mc(
    model: &dyn Scorer,
    tok: &Tokenizer,
    records: &[McRecord],
    max_len: usize,
) -> Result<McReport> {
    let logliks = score_mc(model, tok, records, max_len)?;
    let scored: Vec<(Vec<f64>, &McRecord)> = logliks.into_iter().zip(records).collect();
    Ok(mc_metrics(&scored))
}

/// Each record's per-choice summed log-likelihoods (a progress bar on stderr), in order.
pub fn score_mc(
    model: &dyn Scorer,
    tok: &Tokenizer,
    records: &[McRecord],
    max_len: usize,
) -> Result<Vec<Vec<f64>>> {
    if records.is_empty() {
        return Err(Error::Invalid("no records to evaluate".into()));
    }
    let prefix = tok.bos_id().or(tok.eos_id()).unwrap_or(0);
    let pb = indicatif::ProgressBar::new(records.len() as u64).with_style(
        indicatif::ProgressStyle::with_template(
            "scoring [{elapsed_precise}] {wide_bar} {pos}/{len} (ETA {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut out = Vec::with_capacity(records.len());
    for r in records {
        out.push(choice_logliks(
            model, tok, &r.context, &r.choices, max_len, prefix,
        )?);
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Model, ModelConfig};

    fn tiny() -> (Model, Tokenizer) {
        let config = ModelConfig {
            vocab_size: 263,
            ..ModelConfig::tiny()
        };
        (
            Model::random(&config, 11, DType::F32).unwrap(),
            Tokenizer::tiny_byte_level(),
        )
    }

    /// Σ log p(cont | ctx) by scoring the whole sequence at once, by hand.
    fn by_hand(model: &Model, ctx: &[u32], cont: &[u32]) -> f64 {
        let ids: Vec<u32> = ctx.iter().chain(cont).copied().collect();
        let t = Tensor::new(ids.as_slice(), model.device())
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let logp = log_softmax(
            &model
                .forward(&t)
                .unwrap()
                .get(0)
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap(),
        )
        .unwrap()
        .to_vec2::<f64>()
        .unwrap();
        (0..cont.len())
            .map(|i| logp[ctx.len() + i - 1][cont[i] as usize])
            .sum()
    }

    #[test]
    fn shared_context_scoring_matches_hand_computed_sums() {
        let (model, tok) = tiny();
        let choices = vec![
            " hello".to_string(),
            " world again".to_string(),
            " w".to_string(),
        ];
        let got = choice_logliks(&model, &tok, "Say it:", &choices, 64, 0).unwrap();
        for (c, g) in choices.iter().zip(&got) {
            let (ctx, cont) = encode_pair(&tok, "Say it:", c).unwrap();
            let want = by_hand(&model, &ctx, &cont);
            assert!((g - want).abs() < 1e-4, "{c}: {g} vs {want}");
        }
    }

    #[test]
    fn boundary_merges_are_scored_on_lm_evals_continuation_tokens() {
        let (_, tok) = tiny();
        // The tiny vocabulary merges h+e, l+l, he+ll, hell+o and Ġ+w. "x hell" encodes as
        // [x, Ġ, hell]; "x hello w" as [x, Ġ, hello, Ġw]: the choice "o w" merges into the
        // context's last token, and lm-eval scores only what follows the context's 3 tokens.
        let (ctx, cont) = encode_pair(&tok, "x hell", "o w").unwrap();
        let whole = tok.encode("x hello w").unwrap();
        assert_eq!(ctx.len(), 3);
        assert_eq!(cont, whole[3..].to_vec());
        assert_eq!(cont, vec![tok.token_to_id("Ġw").unwrap()]);
        assert_ne!(
            cont,
            tok.encode("o w").unwrap(),
            "the boundary merge changes the tokens"
        );
        // Trailing spaces of the context move to the continuation.
        let (ctx2, cont2) = encode_pair(&tok, "x ", "hello").unwrap();
        assert_eq!(ctx2, tok.encode("x").unwrap());
        assert_eq!(cont2, tok.encode("x hello").unwrap()[ctx2.len()..].to_vec());
    }

    #[test]
    fn acc_and_acc_norm_by_hand() {
        // Question 1: sums favour choice 0, per-char favours choice 1 (gold 1).
        // Question 2: both pick choice 0 (gold 0).
        let rec = |choices: [&str; 2], label| McRecord {
            context: "Q:".into(),
            choices: choices.iter().map(|c| c.to_string()).collect(),
            label,
            golds: vec![],
        };
        let (q1, q2) = (rec([" ab", " abcdefghij"], 1), rec([" x", " y"], 0));
        let scored = vec![(vec![-4.0, -5.0], &q1), (vec![-1.0, -3.0], &q2)];
        let r = mc_metrics(&scored);
        assert_eq!((r.acc, r.acc_norm, r.n), (0.5, 1.0, 2));
        // Sample std of [0, 1] is √0.5; / √2 = 0.5.
        assert!((r.acc_stderr - 0.5).abs() < 1e-12);
        assert_eq!(r.acc_norm_stderr, 0.0);
        assert_eq!(choice_chars(" yes"), 3);
        // Margins: q1 gold 1: -5 - -4 = -1; q2 gold 0: -1 - -3 = 2 → mean 0.5.
        assert!((r.margin - 0.5).abs() < 1e-12);
        // AUC: positive (gold 1) score -1, negative score -2 → the positive ranks higher.
        assert_eq!(r.auc, Some(1.0));
    }

    #[test]
    fn auc_by_hand_with_ties_and_none_when_undefined() {
        let rec = |label| McRecord {
            context: "Q:".into(),
            choices: vec![" a".into(), " b".into()],
            label,
            golds: vec![],
        };
        let (p, n) = (rec(1), rec(0));
        // Scores ll[1]-ll[0]: positives 1, 0; negatives 0, -1. Pairs (p,n): (1,0) win, (1,-1)
        // win, (0,0) tie, (0,-1) win → (3 + 0.5) / 4.
        let scored = vec![
            (vec![0.0, 1.0], &p),
            (vec![0.0, 0.0], &p),
            (vec![0.0, 0.0], &n),
            (vec![1.0, 0.0], &n),
        ];
        assert_eq!(binary_auc(&scored), Some(0.875));
        // One class only, or three choices: no AUC.
        assert_eq!(binary_auc(&scored[..2]), None);
        let three = McRecord {
            choices: vec![" a".into(), " b".into(), " c".into()],
            ..rec(0)
        };
        assert_eq!(binary_auc(&[(vec![0.0, 1.0, 2.0], &three)]), None);
        // A question where every choice is gold has margin 0.
        let all_gold = McRecord {
            golds: vec![0, 1],
            ..rec(0)
        };
        assert_eq!(margin(&[1.0, 2.0], &all_gold), 0.0);
    }
}

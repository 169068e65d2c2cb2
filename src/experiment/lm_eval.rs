//! The experiment's rows in lm-evaluation-harness's results layout (v0.4: `results.{task}`
//! with `{metric},{filter}` and `{metric}_stderr,{filter}` keys, `versions`, `n-shot`,
//! `higher_is_better`, `n-samples`, `config`), one file per row as lm-eval writes one per model,
//! so that scripts that compare lm-eval runs read ours unchanged.

use super::{ExperimentConfig, Metric, RowResult};
use crate::io::atomic;
use crate::io::provenance::{FileRef, RunInfo};
use crate::Result;
use serde_json::{json, Map, Value};
use std::path::Path;

/// lm-eval's filter name for metrics computed on unfiltered responses.
const FILTER: &str = "none";

/// The task's name in the results: `--task`'s, else the test file's folder (`spam/test.jsonl`
/// → `spam`) when the file is named like a split, else the file's stem.
pub fn task_name(cfg: &ExperimentConfig) -> String {
    if let Some(t) = cfg.task {
        return t.name().to_string();
    }
    let stem = cfg
        .test
        .file_stem()
        .map_or("test".into(), |s| s.to_string_lossy().into_owned());
    let split = ["test", "validation", "val", "train", "dev"].contains(&stem.as_str());
    match cfg.test.parent().and_then(|p| p.file_name()) {
        Some(folder) if split => folder.to_string_lossy().into_owned(),
        _ => stem,
    }
}

/// The metrics of `metric` and whether higher is better, in lm-eval's names (ours beside them:
/// token perplexity, margin, AUC).
fn metrics(metric: Metric) -> &'static [(&'static str, bool)] {
    match metric {
        Metric::Mc => &[
            ("acc", true),
            ("acc_norm", true),
            ("margin", true),
            ("auc", true),
        ],
        Metric::Ppl => &[
            ("word_perplexity", false),
            ("byte_perplexity", false),
            ("bits_per_byte", false),
            ("token_perplexity", false),
        ],
    }
}

/// One row as an lm-eval results document.
pub fn results(
    cfg: &ExperimentConfig,
    metric: Metric,
    row: &RowResult,
    model: Option<&FileRef>,
    run: &RunInfo,
    test_records: usize,
) -> Value {
    let task = task_name(cfg);
    let mut scores = Map::new();
    scores.insert("alias".into(), json!(task));
    let mut higher = Map::new();
    for &(name, up) in metrics(metric) {
        let Some(v) = row.metrics.get(name) else {
            continue;
        };
        scores.insert(format!("{name},{FILTER}"), v.clone());
        // lm-eval writes "N/A" where a metric has no standard error (the perplexities).
        let stderr = row
            .metrics
            .get(&format!("{name}_stderr"))
            .cloned()
            .unwrap_or_else(|| json!("N/A"));
        scores.insert(format!("{name}_stderr,{FILTER}"), stderr);
        higher.insert(name.into(), json!(up));
    }
    let n = row.metrics.get("n").and_then(Value::as_u64).unwrap_or(0);
    let model_args = format!(
        "row={},model={},emulator={}+{}+{} {}",
        row.name,
        model.map_or("?", |m| m.name.as_str()),
        cfg.emulator.bottom,
        cfg.emulator.keep,
        cfg.emulator.top,
        cfg.emulator.compression()
    );
    json!({
        "results": {&task: scores},
        "group_subtasks": {&task: []},
        "configs": {&task: {
            "task": task,
            "output_type": match metric { Metric::Mc => "multiple_choice", Metric::Ppl => "loglikelihood_rolling" },
            "num_fewshot": 0,
            "metric_list": metrics(metric).iter().map(|(m, up)| json!({"metric": m, "higher_is_better": up})).collect::<Vec<_>>(),
        }},
        "versions": {&task: format!("offsite-{}", run.version)},
        "n-shot": {&task: 0},
        "higher_is_better": {&task: higher},
        "n-samples": {&task: {"original": test_records, "effective": n}},
        "config": {
            "model": "offsite",
            "model_args": model_args,
            "model_sha256": model.map(|m| m.sha256.clone()),
            "batch_size": 4,
            "device": "cpu",
            "limit": cfg.limit_test,
            "random_seed": cfg.training.seed,
            "precision": run.precision,
        },
        "git_hash": run.commit,
        "model_name": row.name,
        "model_source": "offsite experiment",
        "seconds": row.seconds,
    })
}

/// Writes `lm_eval/{row}/results.json` for every row.
pub fn write(
    cfg: &ExperimentConfig,
    metric: Metric,
    rows: &[RowResult],
    model: Option<&FileRef>,
    run: &RunInfo,
    test_records: usize,
    out: &Path,
) -> Result<()> {
    for row in rows {
        let doc = results(cfg, metric, row, model, run, test_records);
        let dir = out.join("lm_eval").join(&row.name);
        std::fs::create_dir_all(&dir).map_err(|e| crate::Error::io(&dir, e))?;
        atomic::write_json(&dir.join("results.json"), &doc)?;
    }
    Ok(())
}

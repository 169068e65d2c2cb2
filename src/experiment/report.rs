//! The experiment's report: `report.json`, `report.md` and `chart.svg`.

use super::{chart, ExperimentConfig, Metric, Row, RowResult};
use crate::emulator::distill::DistillRecord;
use crate::io::atomic;
use crate::peft::Method;
use crate::Result;
use std::path::Path;

/// The metric shown in the chart and first in the table.
/// How a report names a file or folder: its name and the first 12 hex digits of its SHA-256
/// (of the weights file for a model directory) — never the machine's path, since reports are
/// shared with the other party and pasted into papers.
fn named(path: &Path) -> String {
    let name = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let file = if path.is_dir() {
        ["model.safetensors", crate::io::hf_dir::OFFSITE_WEIGHTS]
            .iter()
            .map(|w| path.join(w))
            .find(|w| w.is_file())
    } else {
        Some(path.to_path_buf())
    };
    match file.map(|f| crate::io::fetch::file_sha256(&f)) {
        Some(Ok(h)) => format!("`{name}` (sha256 {}…)", &h[..12]),
        _ => format!("`{name}`"),
    }
}

fn primary(metric: Metric) -> (&'static str, &'static str) {
    match metric {
        Metric::Mc => ("acc", "accuracy"),
        Metric::Ppl => ("token_perplexity", "token perplexity"),
    }
}

/// Writes `report.json`, `report.md` and `chart.svg`.
pub fn write_report(
    cfg: &ExperimentConfig,
    metric: Metric,
    rows: &[RowResult],
    out: &Path,
) -> Result<()> {
    atomic::write_json(
        &out.join("report.json"),
        &serde_json::json!({
            "model": cfg.model, "task": cfg.task.map(|t| t.name()), "train": cfg.train,
            "val": cfg.val, "test": cfg.test, "metric": metric, "emulator": cfg.emulator, "strategy": cfg.emulator.strategy, "emulator_package": cfg.emulator_package,
            "training": cfg.training, "method": cfg.method, "limits": {"train": cfg.limit_train, "val": cfg.limit_val, "test": cfg.limit_test},
            "proxy_alpha": cfg.proxy_alpha, "alignment": cfg.alignment,
            "rows": rows,
        }),
    )?;
    let keys: &[&str] = match metric {
        Metric::Mc => &[
            "acc",
            "acc_stderr",
            "acc_norm",
            "acc_norm_stderr",
            "margin",
            "auc",
            "n",
        ],
        Metric::Ppl => &[
            "token_perplexity",
            "word_perplexity",
            "byte_perplexity",
            "bits_per_byte",
            "n",
        ],
    };
    let t = &cfg.training;
    let method = match &cfg.method {
        Method::Full => "all adapter-layer weights".to_string(),
        Method::Lora(l) => format!(
            "LoRA r {} alpha {} on {}",
            l.r,
            l.alpha,
            targets_text(&l.targets)
        ),
        Method::Adapter(b) => format!(
            "bottleneck adapters of size {} after {}",
            b.size,
            targets_text(&b.targets)
        ),
        Method::BitFit => "BitFit (1-D parameters)".to_string(),
    };
    let limit = |n: Option<usize>| n.map_or("all".to_string(), |n| format!("first {n}"));
    let mut md = format!(
        "# Offsite-tuning experiment\n\nmodel {}, test {}{}; emulator {} + {} + {} layers ({}).\n\n\
         Adapter tuning ({}): {}; full fine-tuning trains every weight. Both: {} × batch {} × {} \
         tokens, lr {} ({:?}, {} warm-up steps). Records used: train {}, validation {}, test {}.\n\n\
         {}| row | {} | seconds |\n| --- |{} ---: |\n",
        named(&cfg.model),
        named(&cfg.test),
        cfg.task.map_or(String::new(), |t| format!(" (task {})", t.name())),
        cfg.emulator.bottom,
        cfg.emulator.keep,
        cfg.emulator.top,
        emulator_text(cfg),
        cfg.method.name(),
        method,
        t.max_steps.map_or(format!("{} epoch(s)", t.epochs), |n| format!("at most {n} steps")),
        t.batch_size * t.grad_accum,
        t.block_size,
        t.lr,
        t.schedule,
        t.warmup_steps,
        limit(cfg.limit_train),
        limit(cfg.limit_val),
        limit(cfg.limit_test),
        alignment_text(cfg),
        keys.join(" | "),
        " ---: |".repeat(keys.len()),
    );
    for r in rows {
        let label = Row::ALL
            .iter()
            .find(|x| x.name() == r.name)
            .map_or(r.name.as_str(), |x| x.label());
        let cells: Vec<String> = keys
            .iter()
            .map(|k| match r.metrics.get(*k) {
                Some(serde_json::Value::Number(n)) if n.is_f64() => {
                    format!("{:.4}", n.as_f64().unwrap_or(f64::NAN))
                }
                Some(v) => v.to_string(),
                None => "-".into(),
            })
            .collect();
        md += &format!("| {label} | {} | {:.0} |\n", cells.join(" | "), r.seconds);
    }
    atomic::write_bytes(&out.join("report.md"), md.as_bytes())?;
    let (key, axis) = primary(metric);
    let bars: Vec<(String, f64)> = rows
        .iter()
        .map(|r| {
            (
                r.name.clone(),
                r.metrics
                    .get(key)
                    .and_then(|v| v.as_f64())
                    .unwrap_or(f64::NAN),
            )
        })
        .collect();
    let title = format!(
        "{} on {}",
        axis,
        cfg.test
            .file_name()
            .map_or("test".into(), |f| f.to_string_lossy().into_owned())
    );
    atomic::write_bytes(
        &out.join("chart.svg"),
        chart::bar_chart(&title, axis, &bars).as_bytes(),
    )
}

/// How the report describes the emulator: its compression, and for a given package its path
/// and distillation (read from the package's header).
fn emulator_text(cfg: &ExperimentConfig) -> String {
    let mut text = cfg.emulator.compression();
    if let (true, Some(cal)) = (
        cfg.emulator.strategy.needs_calibration(),
        &cfg.emulator.calibration,
    ) {
        text += &format!(
            ", strategy `{}` measured on {} ({} tokens)",
            cfg.emulator.strategy,
            named(cal),
            cfg.emulator.calibration_tokens
        );
    }
    let Some(path) = &cfg.emulator_package else {
        return text;
    };
    let distillation = crate::io::offsite_file::meta(path)
        .and_then(|m| m.get("distillation").cloned())
        .and_then(|d| serde_json::from_value::<DistillRecord>(d).ok());
    if let Some(d) = distillation {
        text += &format!(
            ", distilled on `{}` for {} steps (kd weight {}, lm weight {})",
            d.corpus, d.metrics.steps, d.weights.kd_weight, d.weights.lm_weight
        );
    }
    text + &format!("; package {}", named(path))
}

/// The proxy's α and, with an alignment setup, how the plug-in was aligned (a paragraph).
fn alignment_text(cfg: &ExperimentConfig) -> String {
    let mut text = format!(
        "Proxy: full model + {} × (emulator fine-tuned − emulator zero-shot) log-probabilities, \
         renormalised.",
        cfg.proxy_alpha
    );
    if let Some(a) = &cfg.alignment {
        let o = &a.options;
        text += &format!(
            " Aligned plug-in: the model owner trains the plugged adapter's {:?} weights (pull {}) \
             towards the {:?} target (α {}) at {:?} positions of public text {}{}, {} steps × \
             batch {} × {} tokens, lr {}.",
            o.params,
            o.pull,
            o.target,
            o.alpha,
            o.positions,
            named(&a.data),
            o.template
                .as_ref()
                .map_or(String::new(), |t| format!(" in the template {t:?}")),
            a.training.max_steps.unwrap_or(0),
            a.training.batch_size * a.training.grad_accum,
            a.training.block_size,
            a.training.lr
        );
    }
    text + "\n\n"
}

/// PEFT target maps as the report names them (none given: the family's defaults).
fn targets_text(targets: &[String]) -> String {
    if targets.is_empty() {
        "the family's default maps".into()
    } else {
        targets.join(",")
    }
}

//! The experiment's report: `report.json`, `report.md` and `chart.svg`.

use super::{chart, ExperimentConfig, Metric, Row, RowResult};
use crate::emulator::align::flag_value;
use crate::emulator::make::distill::DistillRecord;
use crate::io::atomic;
use crate::io::provenance::{self, without_paths, FileRef, RunInfo};
use crate::peft::Method;
use crate::Result;
use std::path::Path;

/// The metric shown in the chart and first in the table.
/// The experiment's input files as the report names them (`None` where a file is not given or
/// cannot be read).
#[derive(serde::Serialize)]
struct InputFiles {
    model: Option<FileRef>,
    train: Option<FileRef>,
    val: Option<FileRef>,
    test: Option<FileRef>,
    emulator_package: Option<FileRef>,
    calibration: Option<FileRef>,
    align_data: Option<FileRef>,
    align_val: Option<FileRef>,
}

impl InputFiles {
    fn of(cfg: &ExperimentConfig) -> Self {
        let file = |p: Option<&Path>| p.and_then(|p| FileRef::of(p).ok());
        let align = cfg.alignment.as_ref();
        InputFiles {
            model: file(cfg.model_path().ok().as_deref()),
            train: file(Some(&cfg.train)),
            val: file(cfg.val.as_deref()),
            test: file(Some(&cfg.test)),
            emulator_package: file(cfg.emulator_package.as_deref()),
            calibration: file(cfg.emulator.calibration.as_deref()),
            align_data: file(align.map(|a| a.data.as_path())),
            align_val: file(align.and_then(|a| a.val.as_deref())),
        }
    }
}

/// A file as the Markdown report shows it: name, sha256 and size, or the name alone.
fn shown(file: &Option<FileRef>, path: &Path) -> String {
    file.as_ref().map_or_else(
        || {
            format!(
                "`{}`",
                path.file_name().unwrap_or_default().to_string_lossy()
            )
        },
        FileRef::markdown,
    )
}

fn primary(metric: Metric) -> (&'static str, &'static str) {
    match metric {
        Metric::Mc => ("acc", "accuracy"),
        Metric::Ppl => ("token_perplexity", "token perplexity"),
    }
}

/// Writes `report.json`, `report.md`, `chart.svg` and `chart.png` (±1 stderr whiskers) and
/// `lm_eval/{row}/results.json`.
pub fn write_report(
    cfg: &ExperimentConfig,
    metric: Metric,
    rows: &[RowResult],
    test_records: usize,
    out: &Path,
) -> Result<()> {
    let files = InputFiles::of(cfg);
    let run = RunInfo::current(cfg.training.precision);
    super::lm_eval::write(
        cfg,
        metric,
        rows,
        files.model.as_ref(),
        &run,
        test_records,
        out,
    )?;
    atomic::write_json(
        &out.join("report.json"),
        &serde_json::json!({
            "files": files, "run": run,
            "task": cfg.task.map(|t| t.name()), "metric": metric,
            "emulator": without_paths(serde_json::to_value(&cfg.emulator).unwrap_or_default()),
            "strategy": cfg.emulator.strategy,
            "training": cfg.training, "method": cfg.method, "limits": {"train": cfg.limit_train, "val": cfg.limit_val, "test": cfg.limit_test},
            "proxy_alpha": cfg.proxy_alpha,
            "alignment": without_paths(serde_json::to_value(&cfg.alignment).unwrap_or_default()),
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
        "# Offsite-tuning experiment\n\n{}model {}, test {}{}; emulator {} + {} + {} layers ({}).\n\n\
         Adapter tuning ({}): {}; full fine-tuning trains every weight. Both: {} × batch {} × {} \
         tokens, lr {} ({:?}, {} warm-up steps). Records used: train {}, validation {}, test {}.\n\n\
         {}| row | {} | seconds |\n| --- |{} ---: |\n",
        run.markdown(),
        shown(&files.model, &cfg.model),
        shown(&files.test, &cfg.test),
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
    let test = cfg
        .test
        .file_name()
        .map_or("test".into(), |f| f.to_string_lossy().into_owned());
    draw_chart(metric, rows, &test, out)
}

/// `chart.svg` and `chart.png` in `out`: the primary metric of each row with ±1 stderr.
fn draw_chart(metric: Metric, rows: &[RowResult], test: &str, out: &Path) -> Result<()> {
    let (key, axis) = primary(metric);
    let bars: Vec<chart::Bar> = rows
        .iter()
        .map(|r| {
            let get = |k: &str| r.metrics.get(k).and_then(|v| v.as_f64());
            chart::Bar {
                label: r.name.clone(),
                value: get(key).unwrap_or(f64::NAN),
                stderr: get(&format!("{key}_stderr")),
            }
        })
        .collect();
    chart::bar_chart(
        &out.join("chart"),
        &format!("{axis} on {test}"),
        axis,
        &bars,
    )
}

/// Redraws the chart of the experiment report in `dir` from its `report.json` alone (also
/// reports written by earlier versions, which named the test file by its path).
pub fn redraw_chart(dir: &Path) -> Result<()> {
    let path = dir.join("report.json");
    let text = std::fs::read_to_string(&path).map_err(|e| crate::Error::io(&path, e))?;
    #[derive(serde::Deserialize)]
    struct Saved {
        metric: Metric,
        rows: Vec<RowResult>,
        #[serde(default)]
        files: Option<serde_json::Value>,
        #[serde(default)]
        test: Option<std::path::PathBuf>,
    }
    let saved: Saved =
        serde_json::from_str(&text).map_err(|e| crate::Error::format(&path, e.to_string()))?;
    let test = saved
        .files
        .as_ref()
        .and_then(|f| f["test"]["name"].as_str().map(String::from))
        .or_else(|| {
            let name = saved.test.as_ref()?.file_name()?;
            Some(name.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "test".into());
    draw_chart(saved.metric, &saved.rows, &test, dir)
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
            ", strategy `{}` measured on {} tokens of {}",
            cfg.emulator.strategy,
            cfg.emulator.calibration_tokens,
            provenance::markdown(cal)
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
            // The package records the corpus as its maker typed it: its name is what we share.
            Path::new(&d.corpus)
                .file_name()
                .map_or(d.corpus.clone(), |n| n.to_string_lossy().into_owned()),
            d.metrics.steps,
            d.weights.kd_weight,
            d.weights.lm_weight
        );
    }
    text + &format!("; package {}", provenance::markdown(path))
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
            " Aligned plug-in: the model owner trains the plugged adapter's {} (pull {}) \
             towards the `{}` target (α {}) at `{}` positions of public text {}{}, {} steps × \
             batch {} × {} tokens, lr {}.",
            o.trained_part(),
            o.pull,
            flag_value(&o.target),
            o.alpha,
            flag_value(&o.positions),
            provenance::markdown(&a.data),
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

//! The paper's Figure 4 for one model and task: how the way the middle is compressed (layer drop
//! to K layers, magnitude pruning, uniform quantization) trades emulator size against emulator
//! zero-shot, emulator fine-tuned and plug-in quality. Each grid point is an experiment (the same
//! runner, the same resumability) without the model-only rows; the ablation collects them.

use super::{chart, run, ExperimentConfig, Row, RowResult};
use crate::emulator::{EmulatorOptions, Package};
use crate::io::atomic;
use crate::io::provenance::{FileRef, RunInfo};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// How one grid point compresses the middle.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "value")]
pub enum Compression {
    /// Layer drop to this many middle layers.
    Keep(usize),
    /// Every middle layer kept, this fraction of each weight matrix pruned.
    Prune(f64),
    /// Every middle layer kept, each weight matrix quantized to this many bits.
    Bits(u8),
}

impl Compression {
    /// The emulator options of this point for a model with `middle` middle layers.
    fn options(self, bottom: usize, top: usize, middle: usize) -> EmulatorOptions {
        match self {
            Compression::Keep(k) => EmulatorOptions::layer_drop(bottom, k, top),
            Compression::Prune(r) => EmulatorOptions {
                prune: Some(r),
                ..EmulatorOptions::layer_drop(bottom, middle, top)
            },
            Compression::Bits(b) => EmulatorOptions {
                quant_bits: Some(b),
                ..EmulatorOptions::layer_drop(bottom, middle, top)
            },
        }
    }

    /// Folder and row name: `keep-13`, `prune-0.3`, `bits-4`.
    pub fn name(self) -> String {
        match self {
            Compression::Keep(k) => format!("keep-{k}"),
            Compression::Prune(r) => format!("prune-{r}"),
            Compression::Bits(b) => format!("bits-{b}"),
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Compression::Keep(_) => "layer drop",
            Compression::Prune(_) => "magnitude pruning",
            Compression::Bits(_) => "quantization",
        }
    }
}

/// One point's results.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AblationPoint {
    /// How the middle was compressed.
    pub compression: Compression,
    /// The options the package was built with.
    pub options: EmulatorOptions,
    /// Size of the package file.
    pub package_bytes: u64,
    /// Package bytes over the full model's f32 bytes, in percent.
    pub percent_of_full_bytes: f64,
    /// Non-zero package parameters over the full model's parameters, in percent.
    pub percent_of_full_params: f64,
    /// `emulator_zero_shot`, `emulator_ft`, `plug_in`, as `offsite experiment` reports them.
    pub rows: Vec<RowResult>,
}

/// Runs (or resumes) every point of the grid into `out/<point>/` with `base`'s data, training and
/// adapter split, then writes `ablation.json`, `ablation.md` and one line chart per kind of
/// compression (`ablation-<kind>.svg`).
pub fn ablate(
    base: &ExperimentConfig,
    grid: &[Compression],
    out: &Path,
) -> Result<Vec<AblationPoint>> {
    if grid.is_empty() {
        return Err(Error::Invalid("the ablation grid is empty".into()));
    }
    let ckpt = crate::io::checkpoint::load(&base.model_path()?, &candle_core::Device::Cpu)?;
    let n = ckpt.config.num_layers;
    let (bottom, top) = (base.emulator.bottom, base.emulator.top);
    let middle = n
        .checked_sub(bottom + top)
        .ok_or_else(|| Error::Invalid(format!("the model has only {n} layers")))?;
    let full_params = ckpt.model()?.num_parameters();
    drop(ckpt);
    let mut points = Vec::new();
    for &c in grid {
        let dir = out.join(c.name());
        eprintln!("ablation: {} ({})", c.name(), c.kind());
        let mut skip = base.skip.clone();
        // Rows that do not depend on the emulator are run once by `experiment`, not per point;
        // the proxy and the aligned plug-in are not part of the paper's figure.
        skip.extend([
            Row::ZeroShot,
            Row::Oracle,
            Row::FullFt,
            Row::Proxy,
            Row::PlugInAligned,
        ]);
        let cfg = ExperimentConfig {
            emulator: c.options(bottom, top, middle),
            skip,
            ..base.clone()
        };
        let rows = run(&cfg, &dir)?;
        let package_path = dir.join("emulator.offsite");
        let package = Package::load(&package_path, &candle_core::Device::Cpu)?;
        let nonzero: usize = package
            .tensors
            .iter()
            .map(|(_, t)| -> Result<usize> {
                let v = t.flatten_all()?.to_vec1::<f32>()?;
                Ok(v.iter().filter(|x| **x != 0.0).count())
            })
            .sum::<Result<usize>>()?;
        let bytes = std::fs::metadata(&package_path)
            .map_err(|e| Error::io(&package_path, e))?
            .len();
        points.push(AblationPoint {
            compression: c,
            options: cfg.emulator,
            package_bytes: bytes,
            percent_of_full_bytes: 100.0 * bytes as f64 / (full_params * 4) as f64,
            percent_of_full_params: 100.0 * nonzero as f64 / full_params as f64,
            rows,
        });
    }
    write_report(base, &points, out)?;
    Ok(points)
}

/// The metric the chart plots: accuracy for multiple choice, else token perplexity.
fn primary(points: &[AblationPoint]) -> &'static str {
    let mc = points
        .iter()
        .flat_map(|p| &p.rows)
        .any(|r| r.metrics.contains_key("acc"));
    if mc {
        "acc"
    } else {
        "token_perplexity"
    }
}

fn metric(point: &AblationPoint, row: &str, key: &str) -> f64 {
    point
        .rows
        .iter()
        .find(|r| r.name == row)
        .and_then(|r| r.metrics.get(key))
        .and_then(|v| v.as_f64())
        .unwrap_or(f64::NAN)
}

const ROWS: [(&str, &str); 3] = [
    ("emulator_zero_shot", "emulator zero-shot"),
    ("emulator_ft", "emulator fine-tuned"),
    ("plug_in", "plug-in"),
];

fn write_report(base: &ExperimentConfig, points: &[AblationPoint], out: &Path) -> Result<()> {
    let key = primary(points);
    let run = RunInfo::current(base.training.precision);
    let model = base.model_path().ok().and_then(|p| FileRef::of(&p).ok());
    let test = FileRef::of(&base.test).ok();
    atomic::write_json(
        &out.join("ablation.json"),
        &serde_json::json!({"files": {"model": model, "test": test}, "run": run, "metric": key,
                            "training": base.training, "method": base.method, "points": points}),
    )?;
    let mut md = format!(
        "# Emulator compression ablation\n\n{}model {}, test {}; adapter {} + {} layers; metric \
         `{key}`. Layer-drop points keep K middle layers; pruning and quantization keep every \
         middle layer and compress its weight matrices.\n\n\
         | point | compression | package MB | % of full bytes | % of full params | emulator \
         zero-shot | emulator fine-tuned | plug-in |\n| --- | --- | ---: | ---: | ---: | ---: | \
         ---: | ---: |\n",
        run.markdown(),
        model.as_ref().map_or("?".into(), FileRef::markdown),
        test.as_ref().map_or("?".into(), FileRef::markdown),
        base.emulator.bottom,
        base.emulator.top,
    );
    for p in points {
        let cells: Vec<String> = ROWS
            .iter()
            .map(|(row, _)| format!("{:.4}", metric(p, row, key)))
            .collect();
        md += &format!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {} |\n",
            p.compression.name(),
            p.options.compression(),
            p.package_bytes as f64 / 1e6,
            p.percent_of_full_bytes,
            p.percent_of_full_params,
            cells.join(" | ")
        );
    }
    atomic::write_bytes(&out.join("ablation.md"), md.as_bytes())?;
    for kind in ["keep", "prune", "bits"] {
        let of_kind: Vec<&AblationPoint> = points
            .iter()
            .filter(|p| p.compression.name().starts_with(kind))
            .collect();
        let Some(first) = of_kind.first() else {
            continue;
        };
        let series: Vec<chart::Series> = ROWS
            .iter()
            .map(|(row, label)| chart::Series {
                name: label.to_string(),
                points: of_kind
                    .iter()
                    .map(|p| {
                        let stderr = &format!("{key}_stderr");
                        (
                            p.percent_of_full_bytes,
                            metric(p, row, key),
                            Some(metric(p, row, stderr)),
                        )
                    })
                    .collect(),
            })
            .collect();
        chart::line_chart(
            &out.join(format!("ablation-{kind}")),
            &format!("{key} vs emulator size ({})", first.compression.kind()),
            "package size, % of the full model's f32 bytes",
            key,
            &series,
        )?;
    }
    Ok(())
}

/// Parses a grid given as comma-separated values per kind.
pub fn grid(keep: &[usize], prune: &[f64], bits: &[u8]) -> Vec<Compression> {
    keep.iter()
        .map(|&k| Compression::Keep(k))
        .chain(prune.iter().map(|&r| Compression::Prune(r)))
        .chain(bits.iter().map(|&b| Compression::Bits(b)))
        .collect()
}

//! `offsite bench MODEL [--modes ft,ot,infer] [--bottom 2 --top 2 --keep 13] [--batch 4 --seq 128]
//! [--steps N] [--json]`: training and inference throughput and peak memory, as the paper's
//! Table 6. Each mode runs in its own process so that memory peaks do not mix.

mod flops;

use super::ModelSpec;
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use offsite::data::{Batch, Sequence};
use offsite::emulator::plan;
use offsite::io::provenance::{FileRef, RunInfo};
use offsite::model::{Model, Precision, QuantType};
use offsite::peft::Method;
use offsite::train::{loss::lm_loss, prepare, AdamW};
use std::time::Instant;

/// What a mode measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Full fine-tuning: every weight trained.
    Ft,
    /// Offsite-tuning: the adapter trained through the frozen emulator.
    Ot,
    /// Full-model LoRA (r 8, alpha 32, no dropout, all linear maps of every layer).
    FtLora,
    /// Offsite-tuning with LoRA (r 8, alpha 32, no dropout) on the adapter layers only.
    OtLora,
    /// Offsite-tuning with bottleneck adapters (size 64) in the adapter layers.
    OtAdapter,
    /// Offsite-tuning with BitFit (the adapter layers' 1-D parameters).
    OtBitfit,
    /// Forward only, full model.
    Infer,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Ft => "ft",
            Mode::Ot => "ot",
            Mode::FtLora => "ft-lora",
            Mode::OtLora => "ot-lora",
            Mode::OtAdapter => "ot-adapter",
            Mode::OtBitfit => "ot-bitfit",
            Mode::Infer => "infer",
        }
    }

    /// Whether the mode trains through the emulator (else the full model).
    fn offsite(self) -> bool {
        matches!(
            self,
            Mode::Ot | Mode::OtLora | Mode::OtAdapter | Mode::OtBitfit
        )
    }

    /// What it trains, with default hyper-parameters (`None`: nothing, inference).
    fn method(self) -> Option<Method> {
        match self {
            Mode::Ft | Mode::Ot => Some(Method::Full),
            // No dropout, as the PyTorch peer's LoRA (`lora_dropout=0.0`), so that the two
            // measure the same computation.
            Mode::FtLora | Mode::OtLora => Some(Method::Lora(offsite::peft::LoraConfig {
                dropout: 0.0,
                ..Default::default()
            })),
            Mode::OtAdapter => Some(Method::Adapter(Default::default())),
            Mode::OtBitfit => Some(Method::BitFit),
            Mode::Infer => None,
        }
    }
}

/// Shared measurement settings.
#[derive(clap::Args, Clone)]
pub struct Settings {
    /// Adapter layers at the bottom (ot).
    #[arg(long, default_value_t = 2)]
    bottom: usize,
    /// Adapter layers at the top (ot).
    #[arg(long, default_value_t = 2)]
    top: usize,
    /// Middle layers the emulator keeps (ot).
    #[arg(long, default_value_t = 13)]
    keep: usize,
    /// Sequences per step.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 128)]
    seq: usize,
    /// Timed steps (after the warm-up).
    #[arg(long, default_value_t = 6)]
    steps: usize,
    /// Untimed warm-up steps.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Which products run in bf16: auto (bf16 where the CPU has a bf16 kernel, else f32), f32
    /// (none), frozen-bf16 (frozen weights) or bf16 (also the trained maps, as autocast). No
    /// effect without a bf16 kernel.
    #[arg(long, default_value = "auto")]
    precision: Precision,
    /// Keep the frozen layers' weight matrices in this GGUF block format (`q8_0`, `q4_k`, …):
    /// the emulator layers in the offsite modes, every layer's base maps in ft-lora (QLoRA);
    /// ft and infer stay dense. Each row says what it kept quantized.
    #[arg(long, value_name = "FORMAT")]
    frozen_quantized: Option<QuantType>,
}

/// Arguments of `offsite bench`.
#[derive(clap::Args)]
pub struct Args {
    /// The model: a .gguf file, a Hugging Face directory, or a known model name (`smollm2`, `gemma3-270m`: fetched on first use).
    model: ModelSpec,
    /// Modes to run, each in its own process.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "ft,ft-lora,ot,ot-lora,infer"
    )]
    modes: Vec<Mode>,
    #[command(flatten)]
    settings: Settings,
    /// One JSON object per mode.
    #[arg(long)]
    json: bool,
}

/// Arguments of the hidden per-mode worker.
#[derive(clap::Args)]
pub struct WorkerArgs {
    model: ModelSpec,
    #[arg(long, value_enum)]
    mode: Mode,
    #[command(flatten)]
    settings: Settings,
}

/// Runs each mode in a child process and reports.
pub fn run(args: Args) -> Result<()> {
    let exe = std::env::current_exe().context("locating the offsite binary")?;
    // The model as the user typed it (`smollm2`, a path): the workers' recorded command lines
    // name no file of this machine that the user did not.
    args.model.path()?;
    let s = &args.settings;
    // The machine's limit, measured here, before the workers (which then run alone).
    let (peak_f32, peak_bf16) = flops::gemm_peak();
    let precision = s.precision.effective();
    let kernel = match offsite::ops::gemm_bf16::kernel() {
        Some(k) if !precision.is_f32() => k.name(),
        _ => "f32 gemm",
    };
    let peak = if precision.is_f32() {
        peak_f32
    } else {
        peak_bf16.unwrap_or(peak_f32)
    };
    eprintln!(
        "bench: {}; products in {precision} on {kernel}; gemm peak (512×576×1536, {} threads): \
         f32 {peak_f32:.0} GFLOP/s{}",
        offsite::io::provenance::cpu_description(),
        candle_core::utils::get_num_threads(),
        peak_bf16.map_or(String::new(), |p| format!(", bf16 {p:.0} GFLOP/s"))
    );
    let mut rows = Vec::new();
    for mode in &args.modes {
        eprintln!("bench: {} …", mode.name());
        let out = std::process::Command::new(&exe)
            .arg("bench-worker")
            .arg(&args.model.0)
            .args(["--mode", mode.name()])
            .args([
                "--bottom",
                &s.bottom.to_string(),
                "--top",
                &s.top.to_string(),
            ])
            .args([
                "--keep",
                &s.keep.to_string(),
                "--batch",
                &s.batch.to_string(),
            ])
            .args(["--seq", &s.seq.to_string(), "--steps", &s.steps.to_string()])
            .args(["--warmup", &s.warmup.to_string()])
            .args(["--precision", &s.precision.to_string()])
            .args(
                s.frozen_quantized
                    .iter()
                    .flat_map(|f| ["--frozen-quantized".to_string(), f.to_string()]),
            )
            .output()
            .context("running a bench worker")?;
        if !out.status.success() {
            bail!(
                "bench mode {} failed: {}",
                mode.name(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut row: serde_json::Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("bench mode {} printed no JSON", mode.name()))?;
        let achieved = row["gflops"].as_f64().unwrap_or(f64::NAN);
        row["kernel"] = kernel.into();
        row["peak_gflops"] = peak.into();
        row["peak_gflops_f32"] = peak_f32.into();
        row["peak_gflops_bf16"] = peak_bf16.into();
        row["fraction_of_peak"] = (achieved / peak).into();
        rows.push(row);
    }
    if args.json {
        for r in &rows {
            println!("{r}");
        }
        return Ok(());
    }
    println!(
        "| mode | tokens/s | peak RSS (MB) | trainable parameters | GFLOP/s | of the {kernel} peak |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    let num = |r: &serde_json::Value, k: &str| r[k].as_f64().unwrap_or(f64::NAN);
    for r in &rows {
        let frozen = match r["frozen_quantized"]["format"].as_str() {
            Some(f) => format!(", frozen {f}"),
            None => String::new(),
        };
        println!(
            "| {}{frozen} | {:.1} | {:.0} | {} | {:.0} | {:.0} % |",
            r["mode"].as_str().unwrap_or("?"),
            num(r, "tokens_per_s"),
            num(r, "peak_rss_mb"),
            r["trainable_params"],
            num(r, "gflops"),
            100.0 * num(r, "fraction_of_peak")
        );
    }
    Ok(())
}

/// Peak resident memory of this process since the last reset, from /proc (MB).
fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Measures one mode in this process and prints one JSON line.
pub fn worker(args: WorkerArgs) -> Result<()> {
    let s = &args.settings;
    let mut ckpt = args.model.load()?;
    let config = ckpt.config.clone();
    let split = plan(config.num_layers, s.bottom, s.top, s.keep)?;
    let adapter = split.adapter();
    // The frozen matrices go into blocks before the model is built, so that their f32 copies
    // are gone when the loop's peak is measured.
    let frozen_layers = match args.mode {
        m if m.offsite() => Some(split.emulator.clone()),
        Mode::FtLora => Some((0..config.num_layers).collect()),
        _ => None,
    };
    let quantized = match (s.frozen_quantized, &frozen_layers) {
        (Some(format), Some(layers)) => {
            let in_scope =
                |n: &str| n.ends_with(".weight") && offsite::model::families::in_layers(n, layers);
            Some(ckpt.tensors.quantize(format, in_scope)?)
        }
        _ => None,
    };
    let mut model = if args.mode.offsite() {
        Model::from_tensors(&config, &ckpt.tensors, Some(&split.layer_order()))?
    } else {
        ckpt.model()?
    };
    drop(ckpt);
    // Offsite modes train (part of) the adapter layers; full-model modes the whole model.
    let scope = args.mode.offsite().then_some(adapter.as_slice());
    let (params, bf16_bytes) = match args.mode.method() {
        None => (Vec::new(), model.set_precision(s.precision)?),
        Some(method) => prepare(&mut model, &method, scope, 0, s.precision)?,
    };
    let trainable: usize = params.iter().map(|p| p.var.elem_count()).sum();
    let trained: std::collections::BTreeSet<String> =
        params.iter().map(|p| p.name.clone()).collect();
    let flops_per_token = flops::step_flops_per_token(&model, &trained, s.seq);
    let mut opt = AdamW::new(&params, 0.0)?;
    let seqs: Vec<Sequence> = (0..s.batch)
        .map(|b| Sequence {
            ids: (0..=s.seq)
                .map(|i| ((b * 7919 + i * 104_729) % config.vocab_size) as u32)
                .collect(),
            loss_from: 1,
        })
        .collect();
    let refs: Vec<&Sequence> = seqs.iter().collect();
    let batch = Batch::new(&refs, 0, &Device::Cpu)?;
    // Peak memory of the loop only, not of loading (as the PyTorch peer measures it).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let mut times = Vec::new();
    for step in 0..s.warmup + s.steps {
        let start = Instant::now();
        if args.mode == Mode::Infer {
            let _: Tensor = model.forward(&batch.inputs)?;
        } else {
            let grads = lm_loss(&model, &batch, Some(step as u64))?.backward()?;
            let g: Vec<Tensor> = params
                .iter()
                .map(|p| {
                    grads
                        .get(&p.var)
                        .cloned()
                        .map_or_else(|| p.var.as_tensor().zeros_like(), Ok)
                })
                .collect::<candle_core::Result<_>>()?;
            opt.step(&params, &g, 1e-4)?;
        }
        if step >= s.warmup {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    println!(
        "{}",
        serde_json::json!({
            "mode": args.mode.name(),
            "tokens_per_s": (s.batch * s.seq) as f64 / median,
            "gflop_per_token": flops_per_token / 1e9,
            "gflops": flops_per_token * (s.batch * s.seq) as f64 / median / 1e9,
            "median_step_s": median,
            "peak_rss_mb": peak_rss_mb(),
            "trainable_params": trainable,
            "batch": s.batch, "seq": s.seq, "steps": s.steps,
            "threads": candle_core::utils::get_num_threads(),
            "precision": s.precision.effective().to_string(),
            "packed_bf16_mb": bf16_bytes as f64 / 1e6,
            "frozen_quantized": quantized.as_ref().map(|r| serde_json::json!({
                "format": s.frozen_quantized.map(|f| f.to_string()),
                "matrices": r.matrices,
                "formats": r.formats,
                "dense_mb": r.dense_bytes as f64 / 1e6,
                "quantized_mb": r.quantized_bytes as f64 / 1e6,
            })),
            "model": FileRef::of(&args.model.path()?)?,
            "run": RunInfo::current(s.precision),
        })
    );
    Ok(())
}

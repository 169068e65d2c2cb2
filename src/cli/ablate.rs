//! `offsite ablate MODEL --train T --val V --test X [--keep-grid 6,13,20] [--prune-grid 0.3,0.6]
//! [--bits-grid 8,4,3] -o OUT`: emulator size against emulator and plug-in quality for layer drop,
//! pruning and quantization (the paper's Figure 4).

use anyhow::Result;
use offsite::experiment::ablation::{ablate, grid};

/// Arguments of `offsite ablate`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    study: super::experiment::StudyArgs,
    /// Adapter layers at the bottom.
    #[arg(long, default_value_t = 2)]
    bottom: usize,
    /// Adapter layers at the top.
    #[arg(long, default_value_t = 2)]
    top: usize,
    /// Layer-drop points: middle layers kept (comma-separated).
    #[arg(long, value_delimiter = ',')]
    keep_grid: Vec<usize>,
    /// Pruning points (every middle layer kept): fractions of each weight matrix zeroed.
    #[arg(long, value_delimiter = ',')]
    prune_grid: Vec<f64>,
    /// Quantization points (every middle layer kept): bits per weight.
    #[arg(long, value_delimiter = ',')]
    bits_grid: Vec<u8>,
}

/// Runs or resumes every grid point and prints the ablation table.
pub fn run(args: Args) -> Result<()> {
    let out = args.study.output.clone();
    let emulator = offsite::emulator::EmulatorOptions::layer_drop(args.bottom, 0, args.top);
    let grid_flags = [
        "--keep-grid",
        "--prune-grid",
        "--bits-grid",
        "--bottom",
        "--top",
    ];
    let cfg = match args.study.config_file(&grid_flags)? {
        // The grid's points differ from the run file's emulator only in what the grid varies.
        Some(base) => offsite::experiment::ExperimentConfig {
            emulator: offsite::emulator::EmulatorOptions {
                strategy: base.emulator.strategy,
                calibration: base.emulator.calibration.clone(),
                calibration_tokens: base.emulator.calibration_tokens,
                ..emulator
            },
            emulator_package: None,
            ..base
        },
        None => args.study.config(emulator, None)?,
    };
    ablate(
        &cfg,
        &grid(&args.keep_grid, &args.prune_grid, &args.bits_grid),
        &out,
    )?;
    print!("{}", std::fs::read_to_string(out.join("ablation.md"))?);
    Ok(())
}

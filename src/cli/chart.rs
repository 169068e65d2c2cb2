//! `offsite chart DIR…`: redraws each experiment report's chart (`chart.svg`, `chart.png`: the
//! rows' primary metric with ±1 stderr whiskers) from its `report.json` alone, e.g. for reports
//! made by an earlier version.

use anyhow::Result;
use std::path::PathBuf;

/// Arguments of `offsite chart`.
#[derive(clap::Args)]
pub struct Args {
    /// Experiment output folders (each holding a report.json).
    #[arg(required = true)]
    dirs: Vec<PathBuf>,
}

/// Redraws every chart, naming each folder done.
pub fn run(args: Args) -> Result<()> {
    for dir in &args.dirs {
        offsite::experiment::redraw_chart(dir)?;
        println!("{}: chart.svg, chart.png", dir.display());
    }
    Ok(())
}

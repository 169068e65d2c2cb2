//! `offsite fetch NAME [--dir DIR]`.

use anyhow::{bail, Result};
use std::path::PathBuf;

/// Arguments of `offsite fetch`.
#[derive(clap::Args)]
pub struct Args {
    /// Which model (known: smollm2).
    name: String,
    /// Folder to keep it in (default: offsite's cache folder).
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// Fetches (once) and prints the path.
pub fn run(args: Args) -> Result<()> {
    let Some(model) = offsite::io::fetch::known_model(&args.name) else {
        bail!("unknown model `{}` (known: smollm2)", args.name);
    };
    let path = offsite::io::fetch::fetch(model, args.dir.as_deref())?;
    println!("{}", path.display());
    Ok(())
}

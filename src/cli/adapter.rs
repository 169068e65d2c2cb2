//! `offsite adapter EMU.offsite [--arrays ARRAYS.safetensors] -o ADAPTER`: the adapter a package
//! ships before tuning, or a set of plain arrays (a federated coordinator's average) checked and
//! written as an adapter file that `tune --init-adapter`, `plug` and `eval` accept.

use anyhow::Result;
use offsite::emulator::tune::initial_adapter;
use offsite::emulator::Package;
use offsite::model::TensorMap;
use std::path::PathBuf;

/// Arguments of `offsite adapter`.
#[derive(clap::Args)]
pub struct Args {
    /// The emulator package the adapter belongs to.
    package: PathBuf,
    /// Plain safetensors arrays to write as the adapter's weights instead of the package's
    /// untrained ones: exactly the adapter's tensor names (ours or PEFT's) and shapes, e.g. what
    /// the Flower server app averaged (federated/).
    #[arg(long)]
    arrays: Option<PathBuf>,
    /// Where the arrays came from, recorded in the adapter's metadata (shown by `inspect`).
    #[arg(long, requires = "arrays")]
    origin: Option<String>,
    /// Seed of fresh LoRA / bottleneck modules (as `tune --seed`).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// The adapter to write: a file, or for `--peft lora` a PEFT directory.
    #[arg(short, long)]
    output: PathBuf,
    #[command(flatten)]
    peft: super::PeftArgs,
}

/// Writes the adapter.
pub fn run(args: Args) -> Result<()> {
    let device = candle_core::Device::Cpu;
    let package = Package::load(&args.package, &device)?;
    let mut adapter = initial_adapter(&package, &args.peft.method(), args.seed)?;
    if let Some(path) = &args.arrays {
        let file = offsite::io::tensor_file::read(path, &device)?;
        let mut arrays = TensorMap::new(path);
        for (name, t) in file.tensors {
            arrays.insert(name, t, path);
        }
        adapter = adapter.with_arrays(&arrays, args.origin.clone())?;
    }
    adapter.save(&args.output)?;
    println!(
        "wrote {} ({} adapter, layers {:?}, {} tensors{})",
        args.output.display(),
        adapter.kind(),
        adapter.meta.adapter_layers,
        adapter.tensors.len(),
        match &args.arrays {
            Some(a) => format!(", weights from {}", a.display()),
            None => ", untrained".into(),
        }
    );
    Ok(())
}

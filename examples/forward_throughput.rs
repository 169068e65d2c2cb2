//! Forward-only throughput at batch × seq on the CPU (the PyTorch peer's `infer_full`):
//! `cargo run --release --example forward_throughput -- MODEL [BATCH SEQ STEPS]`.

use candle_core::{Device, Tensor};
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let spec = args.get(1).map(String::as_str).unwrap_or("smollm2");
    let batch: usize = args.get(2).map_or(Ok(4), |s| s.parse())?;
    let seq: usize = args.get(3).map_or(Ok(128), |s| s.parse())?;
    let steps: usize = args.get(4).map_or(Ok(10), |s| s.parse())?;
    let path = offsite::io::fetch::resolve_model(spec)?;
    let model = offsite::io::checkpoint::load(&path, &Device::Cpu)?.model()?;
    let ids: Vec<u32> = (0..batch * seq)
        .map(|i| (i * 7919 % 49000) as u32)
        .collect();
    let ids = Tensor::from_vec(ids, (batch, seq), &Device::Cpu)?;
    for _ in 0..2 {
        model.forward(&ids)?;
    }
    let mut times = Vec::new();
    for _ in 0..steps {
        let t = Instant::now();
        model.forward(&ids)?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    println!(
        "{{\"batch\": {batch}, \"seq\": {seq}, \"median_step_s\": {median:.4}, \"tokens_per_s\": {:.1}}}",
        (batch * seq) as f64 / median
    );
    Ok(())
}

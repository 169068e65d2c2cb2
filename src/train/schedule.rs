//! Learning rate at each step: linear warm-up, then constant, linear or cosine decay to zero.

use super::options::Schedule;

/// The learning rate for optimizer step `step` (0-based) of `total`.
pub fn learning_rate(
    schedule: Schedule,
    peak: f64,
    warmup: usize,
    step: usize,
    total: usize,
) -> f64 {
    if step < warmup {
        // HF's schedules: (step + 1) / warmup would skip 0; the reference uses step / warmup,
        // which wastes the first step at lr 0. We use (step + 1) / (warmup + 1): never 0.
        return peak * (step + 1) as f64 / (warmup + 1) as f64;
    }
    let decay_steps = total.saturating_sub(warmup).max(1) as f64;
    let progress = ((step - warmup) as f64 / decay_steps).min(1.0);
    match schedule {
        Schedule::Constant => peak,
        Schedule::Linear => peak * (1.0 - progress),
        Schedule::Cosine => peak * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_decay() {
        let lr = |s, step| learning_rate(s, 1.0, 4, step, 14);
        assert!((lr(Schedule::Cosine, 0) - 0.2).abs() < 1e-12);
        assert!((lr(Schedule::Cosine, 3) - 0.8).abs() < 1e-12);
        assert!((lr(Schedule::Cosine, 4) - 1.0).abs() < 1e-12);
        assert!((lr(Schedule::Cosine, 9) - 0.5).abs() < 1e-12);
        assert!((lr(Schedule::Linear, 9) - 0.5).abs() < 1e-12);
        assert!((lr(Schedule::Constant, 13) - 1.0).abs() < 1e-12);
        assert!(lr(Schedule::Linear, 13) > 0.0);
    }
}

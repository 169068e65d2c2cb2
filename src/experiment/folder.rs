//! The experiment's output folder as a record of its settings: a folder is resumed only under
//! the settings its finished rows were made with, and `--precision auto` resolves to the
//! precision already there.

use super::ExperimentConfig;
use crate::model::Precision;
use crate::{Error, Result};
use std::path::Path;

/// Refuses to resume into a folder whose finished rows were made with other settings (only the
/// rows to skip may change between runs).
pub(super) fn check_same_experiment(cfg: &ExperimentConfig, out: &Path) -> Result<()> {
    let path = out.join("config.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(());
    };
    let old: ExperimentConfig = serde_json::from_str(&text).map_err(|e| Error::format(&path, e))?;
    let comparable = |c: &ExperimentConfig| {
        let mut v = serde_json::to_value(c.canonical()).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.remove("skip");
            o.remove("alignment");
            // Resuming is what this folder is for; the flag itself changes no result.
            if let Some(t) = o.get_mut("training").and_then(|t| t.as_object_mut()) {
                t.remove("resume");
            }
        }
        v
    };
    if comparable(&old) != comparable(cfg) {
        return Err(Error::format(
            &path,
            "this folder holds an experiment with other settings; use another output folder",
        ));
    }
    Ok(())
}

/// `cfg` with `--precision auto` made concrete: a folder being resumed keeps the precision its
/// rows were made with (so that `auto` never mixes two precisions in one table), a new one gets
/// this CPU's choice. The choice is printed.
pub(super) fn resolve_precision(cfg: &ExperimentConfig, out: &Path) -> Result<ExperimentConfig> {
    let mut cfg = cfg.clone();
    if cfg.training.precision != Precision::Auto {
        return Ok(cfg);
    }
    let path = out.join("config.json");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let old: ExperimentConfig =
                serde_json::from_str(&text).map_err(|e| Error::format(&path, e))?;
            cfg.training.precision = old.training.precision;
            eprintln!(
                "experiment: precision auto: {} (as the rows already in {} were made)",
                cfg.training.precision,
                out.display()
            );
        }
        Err(_) => cfg.training = cfg.training.resolved("experiment"),
    }
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::atomic;

    fn config(precision: Precision) -> ExperimentConfig {
        ExperimentConfig {
            model: "m.gguf".into(),
            train: "t.jsonl".into(),
            val: None,
            test: "x.jsonl".into(),
            task: None,
            emulator: crate::emulator::EmulatorOptions::layer_drop(2, 13, 2),
            emulator_package: None,
            training: crate::train::TrainOptions {
                precision,
                ..Default::default()
            },
            method: crate::peft::Method::Full,
            skip: Vec::new(),
            limit_train: None,
            limit_val: None,
            limit_test: None,
            eval_block_size: 256,
            proxy_alpha: 1.0,
            alignment: None,
        }
    }

    #[test]
    fn auto_keeps_the_precision_of_the_rows_already_made_and_else_asks_the_cpu() {
        let d = tempfile::tempdir().unwrap();
        // A new folder: this CPU's choice.
        let fresh = resolve_precision(&config(Precision::Auto), d.path()).unwrap();
        assert_eq!(fresh.training.precision, Precision::Auto.effective());
        assert_ne!(fresh.training.precision, Precision::Auto);
        // A folder made in f32 stays f32 under `auto`, and resumes; an explicit other
        // precision is refused.
        atomic::write_json(&d.path().join("config.json"), &config(Precision::F32)).unwrap();
        let resumed = resolve_precision(&config(Precision::Auto), d.path()).unwrap();
        assert_eq!(resumed.training.precision, Precision::F32);
        check_same_experiment(&resumed, d.path()).unwrap();
        let other = resolve_precision(&config(Precision::FrozenBf16), d.path()).unwrap();
        assert_eq!(other.training.precision, Precision::FrozenBf16);
        let err = check_same_experiment(&other, d.path()).unwrap_err();
        assert!(err.to_string().contains("other settings"), "{err}");
    }
}

//! A checkpoint as loaded from disk, whatever its format, and the one entry point that tells the
//! formats apart.

use super::tokenizer::Tokenizer;
use super::{gguf, hf_dir};
use crate::model::{Model, ModelConfig, TensorMap};
use crate::{Error, Result};
use candle_core::Device;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where a checkpoint came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckpointFormat {
    /// A llama.cpp GGUF file (dequantized on load).
    Gguf,
    /// A Hugging Face model directory.
    HfDir,
}

impl std::fmt::Display for CheckpointFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CheckpointFormat::Gguf => "GGUF",
            CheckpointFormat::HfDir => "Hugging Face directory",
        })
    }
}

/// Configuration, weights (f32, HF names) and tokenizer of a model on disk.
#[derive(Debug)]
pub struct Checkpoint {
    /// The file or directory it was read from.
    pub path: PathBuf,
    /// Its format.
    pub format: CheckpointFormat,
    /// The model configuration.
    pub config: ModelConfig,
    /// Every weight, under its HF name.
    pub tensors: TensorMap,
    /// The tokenizer, when the checkpoint has one.
    pub tokenizer: Option<Tokenizer>,
    /// How the tensors were stored on disk (dtype or quantization → number of tensors).
    pub stored_dtypes: BTreeMap<String, usize>,
}

impl Checkpoint {
    /// Builds the full model (all weights frozen), with the bottleneck adapters of a plugged
    /// model in offsite's format when it has any.
    pub fn model(&self) -> Result<Model> {
        let mut model = Model::from_tensors(&self.config, &self.tensors, None)?;
        crate::peft::attach_stored_bottlenecks(&mut model, &self.tensors)?;
        Ok(model)
    }

    /// The tokenizer, or an error naming the checkpoint that lacks one.
    pub fn tokenizer(&self) -> Result<&Tokenizer> {
        self.tokenizer
            .as_ref()
            .ok_or_else(|| Error::format(&self.path, "the checkpoint has no tokenizer"))
    }
}

/// Loads a `.gguf` file or a Hugging Face model directory.
pub fn load(path: &Path, device: &Device) -> Result<Checkpoint> {
    let ckpt = load_unchecked(path, device)?;
    ckpt.tensors.check_finite()?;
    Ok(ckpt)
}

fn load_unchecked(path: &Path, device: &Device) -> Result<Checkpoint> {
    if path.is_dir() {
        hf_dir::load(path, device)
    } else if !path.exists() {
        Err(Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
        ))
    } else if gguf::is_gguf(path) {
        gguf::load(path, device)
    } else {
        Err(Error::format(
            path,
            "not a model: expected a GGUF file or a Hugging Face model directory",
        ))
    }
}

//! What an evaluation runs: a full model, an emulator package, either with a tuned adapter.
//! The four rows of the paper's table come from here: zero-shot (model), emulator zero-shot
//! (package), emulator fine-tuned (package + adapter), plug-in (model + adapter).

use crate::emulator::package::{offsite_format, PACKAGE_FORMAT};
use crate::emulator::{plug, Adapter, Package};
use crate::io::checkpoint;
use crate::io::tokenizer::Tokenizer;
use crate::model::Model;
use crate::Result;
use candle_core::Device;
use std::path::Path;

/// A model ready to evaluate, with its tokenizer and a description of what it is.
pub struct Evaluable {
    /// The model.
    pub model: Model,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
    /// "full model", "emulator", "emulator + adapter", "plug-in".
    pub kind: &'static str,
}

/// Loads `path` (a model or an emulator package) and, if given, applies `adapter`: to a package
/// after checking it was tuned through it, to a full model after checking the fingerprint chain
/// (the plug-in, in memory).
pub fn load_evaluable(path: &Path, adapter: Option<&Path>, device: &Device) -> Result<Evaluable> {
    let adapter = adapter.map(|a| Adapter::load(a, device)).transpose()?;
    if offsite_format(path).as_deref() == Some(PACKAGE_FORMAT) {
        let package = Package::load(path, device)?;
        let mut model = package.model()?;
        let kind = match &adapter {
            Some(a) => {
                a.check_package(&package)?;
                a.apply(&mut model)?;
                "emulator + adapter"
            }
            None => "emulator",
        };
        return Ok(Evaluable {
            model,
            tokenizer: package.tokenizer()?,
            kind,
        });
    }
    let ckpt = checkpoint::load(path, device)?;
    let tokenizer = ckpt.tokenizer()?.clone();
    let (model, kind) = match &adapter {
        Some(a) => (plug(&ckpt, a)?, "plug-in"),
        None => (ckpt.model()?, "full model"),
    };
    Ok(Evaluable {
        model,
        tokenizer,
        kind,
    })
}

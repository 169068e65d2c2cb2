//! What an evaluation runs: a full model, an emulator package, either with a tuned adapter, or
//! the proxy. The rows of the paper's table come from here: zero-shot (model), emulator zero-shot
//! (package), emulator fine-tuned (package + adapter), plug-in (model + adapter), and the proxy
//! (model + package + adapter, logit arithmetic).

use super::Scorer;
use crate::emulator::proxy::Proxy;
use crate::emulator::{plug, Adapter, Package};
use crate::io::checkpoint;
use crate::io::offsite_file::{format as offsite_format, PACKAGE_FORMAT};
use crate::io::tokenizer::Tokenizer;
use crate::model::QuantType;
use crate::{Error, Result};
use candle_core::Device;
use std::path::Path;

/// A model (or the proxy) ready to evaluate, with its tokenizer and a description of what it is.
pub struct Evaluable {
    /// What scores.
    pub scorer: Box<dyn Scorer>,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
    /// "full model", "emulator", "emulator + adapter", "plug-in", "proxy".
    pub kind: &'static str,
}

/// The proxy of `adapter` (tuned through the package at `package`, made from the model at
/// `path`) with its `alpha`: see [`Proxy`].
pub fn load_proxy(
    path: &Path,
    package: &Path,
    adapter: &Path,
    alpha: f64,
    device: &Device,
) -> Result<Evaluable> {
    if offsite_format(package).as_deref() != Some(PACKAGE_FORMAT) {
        return Err(Error::format(
            package,
            "is not an emulator package (.offsite)",
        ));
    }
    if offsite_format(path).as_deref() == Some(PACKAGE_FORMAT) {
        return Err(Error::format(
            path,
            "the proxy needs the full model here, not an emulator package",
        ));
    }
    let adapter = Adapter::load(adapter, device)?;
    let package = Package::load(package, device)?;
    let ckpt = checkpoint::load(path, device)?;
    let proxy = Proxy::new(&ckpt, &package, &adapter, alpha)?;
    Ok(Evaluable {
        scorer: Box::new(proxy),
        tokenizer: ckpt.tokenizer()?.clone(),
        kind: "proxy",
    })
}

/// Loads `path` (a model or an emulator package) and, if given, applies `adapter`: to a package
/// after checking it was tuned through it, to a full model after checking the fingerprint chain
/// (the plug-in, in memory). With `quantized`, a package's emulator layers are kept in that
/// block format (as `tune --frozen-quantized` tuned through them); a full model is refused.
pub fn load_evaluable(
    path: &Path,
    adapter: Option<&Path>,
    quantized: Option<QuantType>,
    device: &Device,
) -> Result<Evaluable> {
    let adapter = adapter.map(|a| Adapter::load(a, device)).transpose()?;
    if offsite_format(path).as_deref() == Some(PACKAGE_FORMAT) {
        let mut package = Package::load(path, device)?;
        if let Some(format) = quantized {
            eprintln!("eval: {}", package.quantize_emulator(format)?);
        }
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
            scorer: Box::new(model),
            tokenizer: package.tokenizer()?,
            kind,
        });
    }
    if let Some(format) = quantized {
        return Err(Error::format(
            path,
            format!("--frozen-quantized {format} applies to an emulator package, not a full model"),
        ));
    }
    let ckpt = checkpoint::load(path, device)?;
    let tokenizer = ckpt.tokenizer()?.clone();
    let (model, kind) = match &adapter {
        Some(a) => (plug(&ckpt, a)?, "plug-in"),
        None => (ckpt.model()?, "full model"),
    };
    Ok(Evaluable {
        scorer: Box::new(model),
        tokenizer,
        kind,
    })
}

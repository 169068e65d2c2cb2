//! Weights that are either trainable or frozen, and the linear map built on them. Freezing is a
//! property of the weight: a layer never branches on it, it asks its weights for the right op.

use crate::ops;
use candle_core::quantized::QTensor;
use candle_core::{DType, Result, Tensor, Var, D};
use std::borrow::Cow;
use std::sync::Arc;

/// Which matrix products run in bf16 (sums in f32). Everything else (norms, the
/// softmax, the loss, gradients of non-matrix ops, the optimizer) is f32 in every setting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    /// Every product in f32: results equal the reference within f32 rounding.
    #[default]
    F32,
    /// Frozen weights (the emulator, a frozen head, LoRA's base maps) stored in bf16 and
    /// multiplied on the bf16 kernel; trained maps in f32.
    FrozenBf16,
    /// Also the products of trained weights (linear maps and a trained LM head: forward, input
    /// and weight gradients) and attention's (scores, weighted values, their gradients) in
    /// bf16, as PyTorch's autocast does; weights, their gradients and AdamW's moments stay f32.
    Bf16,
    /// The fastest of these that this CPU runs and whose results agree with f32 within their
    /// standard errors (docs/performance.md): `bf16` where the CPU has a bf16 kernel (AMX tiles
    /// or AVX512-BF16), else `f32`. Resolved before a run starts ([`Precision::resolve`]);
    /// what runs is recorded, never `auto`.
    Auto,
}

impl Precision {
    /// Whether every product is f32 (the default; left out of saved options).
    pub fn is_f32(&self) -> bool {
        *self == Precision::F32
    }

    /// What runs on this CPU when `self` is asked: every product stays f32 without a bf16 kernel.
    pub fn effective(self) -> Self {
        match crate::ops::gemm_bf16::kernel() {
            Some(_) if self == Precision::Auto => Precision::Bf16,
            Some(_) => self,
            None => Precision::F32,
        }
    }

    /// `auto` made concrete for this CPU (other values as asked), and why, for the run's log:
    /// `auto: bf16 (AVX512-BF16 on this CPU)`; `None` when nothing was left to choose.
    pub fn resolve(self) -> (Self, Option<String>) {
        if self != Precision::Auto {
            return (self, None);
        }
        let chosen = self.effective();
        let why = match crate::ops::gemm_bf16::kernel() {
            Some(k) => format!("auto: {chosen} (this CPU has {})", k.name()),
            None => format!("auto: {chosen} (this CPU has no bf16 arithmetic)"),
        };
        (chosen, Some(why))
    }

    /// For the steps that write trained or frozen weights back and so run in f32 only
    /// (alignment, distillation): `auto` is f32 there; an explicit bf16 setting is refused.
    pub fn f32_only(self, what: &str) -> std::result::Result<Self, String> {
        match self {
            Precision::F32 | Precision::Auto => Ok(Precision::F32),
            other => Err(format!(
                "{what} runs in f32 only (its weights are written back): drop --precision \
                 {other}, or give --precision auto"
            )),
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" => Ok(Precision::F32),
            "frozen-bf16" => Ok(Precision::FrozenBf16),
            "bf16" => Ok(Precision::Bf16),
            "auto" => Ok(Precision::Auto),
            other => Err(format!(
                "unknown precision {other:?}: expected auto, f32, frozen-bf16 or bf16"
            )),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::FrozenBf16 => "frozen-bf16",
            Precision::Bf16 => "bf16",
            Precision::Auto => "auto",
        })
    }
}

/// A parameter tensor: a `Var` when it is trained, a plain `Tensor` when it is frozen. Frozen
/// weights never enter the autograd graph (our ops hold them), so they cost no gradient.
#[derive(Clone, Debug)]
pub enum Weight {
    /// Not trained: no gradient is ever computed for it.
    Frozen(Tensor),
    /// Trained: gradients accumulate into this variable.
    Trainable(Var),
    /// Not trained, and kept in a GGUF block format (k-quants, Q8_0, …) as QLoRA keeps frozen
    /// weights: a linear map's `[out, in]` matrix whose products dequantize it for the moment
    /// they run ([`ops::frozen_linear_quantized`]), so between products it costs its blocks'
    /// bytes, not 4 per value.
    Quantized(Arc<QTensor>),
}

impl Weight {
    /// The current value; a quantized weight is dequantized into a fresh f32 tensor (its
    /// callers are the rare whole-model walks: saving, fingerprints, merging).
    pub fn tensor(&self) -> Result<Cow<'_, Tensor>> {
        match self {
            Weight::Frozen(t) => Ok(Cow::Borrowed(t)),
            Weight::Trainable(v) => Ok(Cow::Borrowed(v.as_tensor())),
            Weight::Quantized(q) => q.dequantize(&q.device()).map(Cow::Owned),
        }
    }

    /// The value of a dense (frozen or trained) weight; an error for a quantized one. For the
    /// weights that are never kept quantized (embeddings, norms, biases, heads, PEFT modules).
    pub fn dense(&self) -> Result<&Tensor> {
        match self {
            Weight::Frozen(t) => Ok(t),
            Weight::Trainable(v) => Ok(v.as_tensor()),
            Weight::Quantized(q) => candle_core::bail!(
                "a weight of shape {:?} is kept quantized ({:?}) where a dense one is needed",
                q.shape().dims(),
                q.dtype()
            ),
        }
    }

    /// The shape, without dequantizing anything.
    pub fn dims(&self) -> &[usize] {
        match self {
            Weight::Frozen(t) => t.dims(),
            Weight::Trainable(v) => v.dims(),
            Weight::Quantized(q) => q.shape().dims(),
        }
    }

    /// The element type of [`Weight::tensor`] (f32 for a quantized weight).
    pub fn dtype(&self) -> DType {
        match self {
            Weight::Frozen(t) => t.dtype(),
            Weight::Trainable(v) => v.dtype(),
            Weight::Quantized(_) => DType::F32,
        }
    }

    /// The device it lives on.
    pub fn device(&self) -> candle_core::Device {
        match self {
            Weight::Frozen(t) => t.device().clone(),
            Weight::Trainable(v) => v.device().clone(),
            Weight::Quantized(q) => q.device(),
        }
    }

    /// The block-format tensor, when the weight is kept quantized.
    pub fn quantized(&self) -> Option<&Arc<QTensor>> {
        match self {
            Weight::Quantized(q) => Some(q),
            _ => None,
        }
    }

    /// Bytes it takes in memory (blocks for a quantized weight).
    pub fn storage_bytes(&self) -> usize {
        match self {
            Weight::Quantized(q) => q.storage_size_in_bytes(),
            w => w.elem_count() * w.dtype().size_in_bytes(),
        }
    }

    /// Whether it receives gradients.
    pub fn is_trainable(&self) -> bool {
        matches!(self, Weight::Trainable(_))
    }

    /// The variable, when trainable.
    pub fn var(&self) -> Option<&Var> {
        match self {
            Weight::Trainable(v) => Some(v),
            Weight::Frozen(_) | Weight::Quantized(_) => None,
        }
    }

    /// Makes the weight trainable (a fresh `Var` holding its value) or frozen (a detached copy).
    pub fn set_trainable(&mut self, trainable: bool) -> Result<()> {
        if trainable == self.is_trainable() {
            return Ok(());
        }
        *self = if trainable {
            // A quantized weight trains on its dequantized values, in f32.
            Weight::Trainable(Var::from_tensor(self.tensor()?.as_ref())?)
        } else {
            Weight::Frozen(self.tensor()?.detach())
        };
        Ok(())
    }

    /// Number of scalars.
    pub fn elem_count(&self) -> usize {
        self.dims().iter().product()
    }
}

/// `y = x · Wᵀ (+ b)` with `W` stored `[out, in]` as PyTorch's `nn.Linear` does (or `[in, out]`
/// as GPT-2's `Conv1D` does, see [`Linear::fan_in_fan_out`]), plus an optional LoRA update and
/// bottleneck adapter.
#[derive(Clone, Debug)]
pub struct Linear {
    /// `[out, in]`, or `[in, out]` when `fan_in_fan_out`.
    pub weight: Weight,
    /// `[out]`, when the map has a bias.
    pub bias: Option<Weight>,
    /// The weight is stored `[in, out]` (GPT-2's `Conv1D`): kept in that layout so that names,
    /// shapes and fingerprints stay those of the checkpoint, and PEFT is told so.
    pub fan_in_fan_out: bool,
    /// A low-rank update added to the output, when the map is LoRA-adapted.
    pub lora: Option<super::Lora>,
    /// A bottleneck adapter applied to the output, when the map has one.
    pub adapter: Option<super::Bottleneck>,
    /// The frozen weight packed in bf16 for the bf16 kernel, when [`Linear::pack_bf16`] asked for
    /// it. Used only while it still packs the current weight.
    pub bf16: Option<Arc<ops::Bf16Weight>>,
    /// A trained weight's products run in bf16 (mixed precision).
    pub bf16_trained: bool,
}

impl Linear {
    /// A linear map over `weight` (`[out, in]`), without bias.
    pub fn new(weight: Weight) -> Self {
        Linear {
            weight,
            bias: None,
            fan_in_fan_out: false,
            lora: None,
            adapter: None,
            bf16: None,
            bf16_trained: false,
        }
    }

    /// A linear map over `weight` (`[out, in]`) with an optional `bias` (`[out]`).
    pub fn with_bias(weight: Weight, bias: Option<Weight>) -> Self {
        Linear {
            bias,
            ..Self::new(weight)
        }
    }

    /// `(out, in)` features, whatever the storage layout.
    pub fn dims(&self) -> Result<(usize, usize)> {
        let &[a, b] = self.weight.dims() else {
            candle_core::bail!("a linear map's weight has shape {:?}", self.weight.dims());
        };
        Ok(if self.fan_in_fan_out { (b, a) } else { (a, b) })
    }

    /// Applies the map to the last dimension of `x` (LoRA without dropout).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_seeded(x, None)
    }

    /// Applies the map; `seed` (training) draws the PEFT modules' dropout masks.
    pub fn forward_seeded(&self, x: &Tensor, seed: Option<u64>) -> Result<Tensor> {
        // A LoRA over a bf16-packed frozen weight runs as one fused op (base + branch).
        let fused = self.fused_lora(x, seed)?;
        let lora_done = fused.is_some();
        let mut y = match fused {
            Some(y) => y,
            None => self.base(x)?,
        };
        y = match &self.bias {
            Some(Weight::Frozen(b)) => ops::frozen_affine(&y, None, Some(b))?,
            Some(Weight::Trainable(b)) => y.broadcast_add(b)?,
            Some(b @ Weight::Quantized(_)) => y.broadcast_add(b.tensor()?.as_ref())?,
            None => y,
        };
        if let (Some(lora), false) = (&self.lora, lora_done) {
            y = (y + lora.forward(x, seed)?)?;
        }
        match &self.adapter {
            Some(adapter) => adapter.forward(&y, seed),
            None => Ok(y),
        }
    }

    /// The map's own weights, named relative to the map (`weight`, `bias`).
    pub fn base_weights(&self) -> Vec<(&'static str, &Weight)> {
        let mut out = vec![("weight", &self.weight)];
        out.extend(self.bias.iter().map(|b| ("bias", b)));
        out
    }

    /// The PEFT modules' weights, named relative to the map (`lora_A.weight`,
    /// `adapter.down.weight`, …), in a fixed order.
    pub fn peft_weights(&self) -> Vec<(&'static str, &Weight)> {
        let mut out = Vec::new();
        if let Some(lora) = &self.lora {
            out.extend([("lora_A.weight", &lora.a), ("lora_B.weight", &lora.b)]);
        }
        if let Some(adapter) = &self.adapter {
            out.extend(
                super::BOTTLENECK_WEIGHT_SUFFIXES
                    .into_iter()
                    .zip(adapter.weights()),
            );
        }
        out
    }

    /// The base weights (as [`Linear::base_weights`]) and, separately, the PEFT weights as
    /// [`Linear::peft_weights`] names and orders them — all mutable at once.
    #[allow(clippy::type_complexity)]
    pub fn weights_mut(
        &mut self,
    ) -> (
        Vec<(&'static str, &mut Weight)>,
        Vec<(&'static str, &mut Weight)>,
    ) {
        let Linear {
            weight,
            bias,
            lora,
            adapter,
            ..
        } = self;
        let mut base = vec![("weight", weight)];
        base.extend(bias.iter_mut().map(|b| ("bias", b)));
        let mut peft = Vec::new();
        if let Some(lora) = lora {
            peft.extend([
                ("lora_A.weight", &mut lora.a),
                ("lora_B.weight", &mut lora.b),
            ]);
        }
        if let Some(adapter) = adapter {
            peft.extend(
                super::BOTTLENECK_WEIGHT_SUFFIXES
                    .into_iter()
                    .zip(adapter.weights_mut()),
            );
        }
        (base, peft)
    }

    /// Folds the LoRA update into the weight (`W + scale·B·A`), leaving a plain, frozen map.
    pub fn merge_lora(&mut self) -> Result<()> {
        if let Some(lora) = self.lora.take() {
            let mut delta = lora.delta()?.to_dtype(self.weight.dtype())?;
            if self.fan_in_fan_out {
                delta = delta.t()?;
            }
            // A quantized base merges on its dequantized values into a dense weight.
            let merged = (self.weight.tensor()?.as_ref() + delta)?;
            self.weight = Weight::Frozen(merged);
            self.bf16 = None;
        }
        Ok(())
    }

    /// Stores a frozen f32 weight in bf16 and computes the map's products on the bf16 kernel from
    /// now on (`true`), or goes back to an f32 weight and f32 products (`false`; values stored in
    /// bf16 keep their rounding). Returns the bytes of the packed copies: 0 when the weight is
    /// trainable, not f32, or the CPU has no bf16 arithmetic — the map then stays as it was.
    pub fn pack_bf16(&mut self, on: bool) -> Result<usize> {
        self.bf16 = None;
        let Weight::Frozen(w) = &self.weight else {
            return Ok(0);
        };
        if !on {
            if w.dtype() == DType::BF16 {
                self.weight = Weight::Frozen(w.to_dtype(DType::F32)?);
            }
            return Ok(0);
        }
        if w.dtype() != DType::F32 || !ops::gemm_bf16::available() {
            return Ok(0);
        }
        let stored = w.to_dtype(DType::BF16)?;
        self.bf16 = ops::Bf16Weight::pack(&stored, self.fan_in_fan_out)?.map(Arc::new);
        if self.bf16.is_some() {
            self.weight = Weight::Frozen(stored);
        }
        Ok(self.bf16.as_ref().map_or(0, |p| p.bytes()))
    }

    /// `x · Wᵀ` plus the LoRA branch in one op, when the map has a LoRA, its frozen weight is
    /// packed in bf16 and everything is f32 (`None` otherwise: the caller composes the two).
    fn fused_lora(&self, x: &Tensor, seed: Option<u64>) -> Result<Option<Tensor>> {
        let (Some(lora), Some(packed), Weight::Frozen(w)) = (&self.lora, &self.bf16, &self.weight)
        else {
            return Ok(None);
        };
        let (a, b) = (lora.a.tensor()?, lora.b.tensor()?);
        let (a, b) = (a.as_ref(), b.as_ref());
        let f32s = [x, a, b].iter().all(|t| t.dtype() == DType::F32);
        if !packed.packs(w) || !f32s {
            return Ok(None);
        }
        let dropout = seed.map(|s| (lora.dropout, s));
        ops::lora_linear_bf16(x, packed, a, b, lora.scale, dropout).map(Some)
    }

    fn base(&self, x: &Tensor) -> Result<Tensor> {
        match &self.weight {
            Weight::Frozen(w)
                if x.dtype() == candle_core::DType::F32
                    && self.bf16.as_ref().is_some_and(|p| p.packs(w)) =>
            {
                ops::frozen_linear_bf16(x, self.bf16.as_ref().expect("checked"))
            }
            // A weight stored in another precision than the input (bf16 without a bf16 kernel
            // packing).
            Weight::Frozen(w) if w.dtype() != x.dtype() => {
                let w = w.to_dtype(x.dtype())?;
                ops::frozen_linear(x, &if self.fan_in_fan_out { w.t()? } else { w })
            }
            // The op reads an `[in, out]` weight through a transposed view, without a copy.
            Weight::Frozen(w) if self.fan_in_fan_out => ops::frozen_linear(x, &w.t()?),
            Weight::Frozen(w) => ops::frozen_linear(x, w),
            // Stored `[out, in]` with blocks along `in` (refused otherwise when it was made).
            Weight::Quantized(q) => ops::frozen_linear_quantized(x, q),
            Weight::Trainable(w)
                if self.bf16_trained
                    && x.dtype() == DType::F32
                    && w.dtype() == DType::F32
                    && x.device().is_cpu()
                    && ops::gemm_bf16::available() =>
            {
                // The op takes the `[out, in]` view, whatever the storage layout.
                let w = if self.fan_in_fan_out {
                    w.as_tensor().t()?
                } else {
                    w.as_tensor().clone()
                };
                ops::linear_bf16(x, &w)
            }
            Weight::Trainable(w) => {
                let dims = x.dims();
                let k = dims[dims.len() - 1];
                let m = x.elem_count() / k.max(1);
                let w = if self.fan_in_fan_out {
                    w.as_tensor().clone()
                } else {
                    w.as_tensor().t()?
                };
                let y = x.contiguous()?.reshape((m, k))?.matmul(&w)?;
                let mut out = dims.to_vec();
                *out.last_mut().expect("non-empty") = y.dim(1)?;
                y.reshape(out)
            }
        }
    }
}

/// Which normalisation a [`Norm`] applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormKind {
    /// RMSNorm scaled by `w` (LLaMA, Qwen2).
    Rms,
    /// RMSNorm scaled by `1 + w` (Gemma: the stored weights are centred on 0).
    RmsPlusOne,
    /// LayerNorm with weight and bias (GPT-2, OPT, BLOOM).
    Layer,
}

/// A normalisation over the last dimension.
#[derive(Clone, Debug)]
pub struct Norm {
    /// What it computes.
    pub kind: NormKind,
    /// Per-channel scale.
    pub weight: Weight,
    /// Per-channel shift (LayerNorm only).
    pub bias: Option<Weight>,
    /// Added to the variance (mean square) before the square root.
    pub eps: f64,
}

impl Norm {
    /// An RMSNorm of either kind.
    pub fn rms(kind: NormKind, weight: Weight, eps: f64) -> Self {
        Norm {
            kind,
            weight,
            bias: None,
            eps,
        }
    }

    /// Normalises `x`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let trainable = self.weight.is_trainable();
        let w = self.weight.tensor()?;
        match self.kind {
            NormKind::Rms => ops::rms_norm(x, &w, self.eps, trainable),
            // `w + 1` is an ordinary op, so a trainable `w` still gets its gradient through it.
            NormKind::RmsPlusOne => ops::rms_norm(x, &(w.as_ref() + 1.0)?, self.eps, trainable),
            NormKind::Layer => {
                let mean = x.mean_keepdim(D::Minus1)?;
                let xc = x.broadcast_sub(&mean)?;
                let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
                let y = xc.broadcast_div(&(var + self.eps)?.sqrt()?)?;
                let bias_frozen = self.bias.as_ref().is_none_or(|b| !b.is_trainable());
                let b = self.bias.as_ref().map(Weight::tensor).transpose()?;
                if !trainable && bias_frozen {
                    return ops::frozen_affine(&y, Some(&w), b.as_deref());
                }
                let y = y.broadcast_mul(&w)?;
                match b {
                    Some(b) => y.broadcast_add(&b),
                    None => Ok(y),
                }
            }
        }
    }

    /// The norm's weights, named relative to it (`weight`, `bias`).
    pub fn weights(&self) -> Vec<(&'static str, &Weight)> {
        let mut out = vec![("weight", &self.weight)];
        out.extend(self.bias.iter().map(|b| ("bias", b)));
        out
    }

    /// Mutable [`Norm::weights`].
    pub fn weights_mut(&mut self) -> Vec<(&'static str, &mut Weight)> {
        let mut out = vec![("weight", &mut self.weight)];
        out.extend(self.bias.iter_mut().map(|b| ("bias", b)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::Precision;

    #[test]
    fn auto_resolves_to_a_concrete_precision_and_is_f32_where_weights_are_written_back() {
        let (chosen, why) = Precision::Auto.resolve();
        let bf16 = crate::ops::gemm_bf16::available();
        assert_eq!(
            chosen,
            if bf16 {
                Precision::Bf16
            } else {
                Precision::F32
            }
        );
        assert!(why
            .unwrap()
            .starts_with(&format!("auto: {chosen} (this CPU has")));
        assert_eq!(Precision::F32.resolve(), (Precision::F32, None));
        assert_eq!(Precision::Auto.f32_only("alignment"), Ok(Precision::F32));
        let err = Precision::Bf16.f32_only("alignment").unwrap_err();
        assert!(err.contains("alignment runs in f32 only"), "{err}");
        assert_eq!("auto".parse::<Precision>(), Ok(Precision::Auto));
        assert_eq!(Precision::Auto.to_string(), "auto");
    }
}

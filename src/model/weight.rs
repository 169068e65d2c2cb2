//! Weights that are either trainable or frozen, and the linear map built on them. Freezing is a
//! property of the weight: a layer never branches on it, it asks its weights for the right op.

use crate::ops;
use candle_core::{Result, Tensor, Var};

/// A parameter tensor: a `Var` when it is trained, a plain `Tensor` when it is frozen. Frozen
/// weights never enter the autograd graph (our ops hold them), so they cost no gradient.
#[derive(Clone, Debug)]
pub enum Weight {
    /// Not trained: no gradient is ever computed for it.
    Frozen(Tensor),
    /// Trained: gradients accumulate into this variable.
    Trainable(Var),
}

impl Weight {
    /// The current value.
    pub fn tensor(&self) -> &Tensor {
        match self {
            Weight::Frozen(t) => t,
            Weight::Trainable(v) => v.as_tensor(),
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
            Weight::Frozen(_) => None,
        }
    }

    /// Makes the weight trainable (a fresh `Var` holding its value) or frozen (a detached copy).
    pub fn set_trainable(&mut self, trainable: bool) -> Result<()> {
        if trainable == self.is_trainable() {
            return Ok(());
        }
        *self = if trainable {
            Weight::Trainable(Var::from_tensor(self.tensor())?)
        } else {
            Weight::Frozen(self.tensor().detach())
        };
        Ok(())
    }

    /// Number of scalars.
    pub fn elem_count(&self) -> usize {
        self.tensor().elem_count()
    }
}

/// `y = x · Wᵀ` with `W` stored `[out, in]` as PyTorch's `nn.Linear` does, plus an optional
/// LoRA update.
#[derive(Clone, Debug)]
pub struct Linear {
    /// `[out, in]`.
    pub weight: Weight,
    /// A low-rank update added to the output, when the map is LoRA-adapted.
    pub lora: Option<crate::peft::lora::Lora>,
    /// A bottleneck adapter applied to the output, when the map has one.
    pub adapter: Option<crate::peft::bottleneck::Bottleneck>,
}

impl Linear {
    /// A linear map over `weight` (`[out, in]`).
    pub fn new(weight: Weight) -> Self {
        Linear {
            weight,
            lora: None,
            adapter: None,
        }
    }

    /// Applies the map to the last dimension of `x` (LoRA without dropout).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_seeded(x, None)
    }

    /// Applies the map; `seed` (training) draws the PEFT modules' dropout masks.
    pub fn forward_seeded(&self, x: &Tensor, seed: Option<u64>) -> Result<Tensor> {
        let mut y = self.base(x)?;
        if let Some(lora) = &self.lora {
            y = (y + lora.forward(x, seed)?)?;
        }
        match &self.adapter {
            Some(adapter) => adapter.forward(&y, seed),
            None => Ok(y),
        }
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
                crate::peft::bottleneck::WEIGHT_SUFFIXES
                    .into_iter()
                    .zip(adapter.weights()),
            );
        }
        out
    }

    /// The base weight and, separately, the PEFT weights as [`Linear::peft_weights`] names
    /// and orders them — all mutable at once.
    pub fn weights_mut(&mut self) -> (&mut Weight, Vec<(&'static str, &mut Weight)>) {
        let Linear {
            weight,
            lora,
            adapter,
        } = self;
        let mut peft = Vec::new();
        if let Some(lora) = lora {
            peft.extend([
                ("lora_A.weight", &mut lora.a),
                ("lora_B.weight", &mut lora.b),
            ]);
        }
        if let Some(adapter) = adapter {
            peft.extend(
                crate::peft::bottleneck::WEIGHT_SUFFIXES
                    .into_iter()
                    .zip(adapter.weights_mut()),
            );
        }
        (weight, peft)
    }

    /// Folds the LoRA update into the weight (`W + scale·B·A`), leaving a plain, frozen map.
    pub fn merge_lora(&mut self) -> Result<()> {
        if let Some(lora) = self.lora.take() {
            let merged =
                (self.weight.tensor() + lora.delta()?.to_dtype(self.weight.tensor().dtype())?)?;
            self.weight = Weight::Frozen(merged);
        }
        Ok(())
    }

    fn base(&self, x: &Tensor) -> Result<Tensor> {
        match &self.weight {
            Weight::Frozen(w) => ops::frozen_linear(x, w),
            Weight::Trainable(w) => {
                let dims = x.dims();
                let k = dims[dims.len() - 1];
                let m = x.elem_count() / k.max(1);
                let y = x
                    .contiguous()?
                    .reshape((m, k))?
                    .matmul(&w.as_tensor().t()?)?;
                let mut out = dims.to_vec();
                *out.last_mut().expect("non-empty") = y.dim(1)?;
                y.reshape(out)
            }
        }
    }
}

/// RMSNorm over the last dimension.
#[derive(Clone, Debug)]
pub struct RmsNorm {
    /// Per-channel scale.
    pub weight: Weight,
    /// Added to the mean square before the square root.
    pub eps: f64,
}

impl RmsNorm {
    /// Normalises `x`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::rms_norm(
            x,
            self.weight.tensor(),
            self.eps,
            self.weight.is_trainable(),
        )
    }
}

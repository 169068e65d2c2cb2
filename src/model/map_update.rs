//! The modules a parameter-efficient method attaches to a linear map — a low-rank update
//! (LoRA) and a bottleneck adapter on its output — as the model computes them. Their
//! configuration, initialisation and injection by module name are `peft`'s; the model only
//! runs them, so it does not depend on `peft`.

use super::{Linear, Weight};
use crate::ops::dropout::{dropout, mix_seed};
use candle_core::{Result, Tensor};

/// The low-rank update of one linear map.
#[derive(Clone, Debug)]
pub struct Lora {
    /// `[r, in]`.
    pub a: Weight,
    /// `[out, r]`.
    pub b: Weight,
    /// `alpha / r`.
    pub scale: f64,
    /// Dropout probability (training only).
    pub dropout: f64,
}

impl Lora {
    /// The branch's output `scale · (drop(x)·Aᵀ)·Bᵀ`; dropout only with a seed (training).
    pub fn forward(&self, x: &Tensor, seed: Option<u64>) -> Result<Tensor> {
        let x = match seed {
            Some(s) => dropout(x, self.dropout, s)?,
            None => x.clone(),
        };
        let a = Linear::new(self.a.clone());
        let b = Linear::new(self.b.clone());
        b.forward(&a.forward(&x)?)? * self.scale
    }

    /// The update as a dense `[out, in]` matrix, `scale · B·A`, for merging.
    pub fn delta(&self) -> Result<Tensor> {
        self.b.dense()?.matmul(self.a.dense()?)? * self.scale
    }
}

/// Names of a bottleneck's weights relative to the linear map it follows.
pub const BOTTLENECK_WEIGHT_SUFFIXES: [&str; 4] = [
    "adapter.down.weight",
    "adapter.down.bias",
    "adapter.up.weight",
    "adapter.up.bias",
];

/// One bottleneck adapter on the output of a linear map with `dim` outputs.
#[derive(Clone, Debug)]
pub struct Bottleneck {
    /// `[size, dim]`.
    pub down: Weight,
    /// `[size]`.
    pub down_bias: Weight,
    /// `[dim, size]`.
    pub up: Weight,
    /// `[dim]`.
    pub up_bias: Weight,
    /// Dropout probability (training only).
    pub dropout: f64,
}

impl Bottleneck {
    /// A frozen adapter from stored tensors, in [`BOTTLENECK_WEIGHT_SUFFIXES`] order (for inference).
    pub fn from_tensors(tensors: [Tensor; 4]) -> Self {
        let [down, down_bias, up, up_bias] = tensors.map(Weight::Frozen);
        Bottleneck {
            down,
            down_bias,
            up,
            up_bias,
            dropout: 0.0,
        }
    }

    /// `y + up(drop(relu(down(y))))`; dropout only with a seed (training).
    pub fn forward(&self, y: &Tensor, seed: Option<u64>) -> Result<Tensor> {
        let h = Linear::new(self.down.clone())
            .forward(y)?
            .broadcast_add(self.down_bias.dense()?)?
            .relu()?;
        let h = match seed {
            // Its own stream: a LoRA on the same map draws from `seed` itself.
            Some(s) => dropout(&h, self.dropout, mix_seed(s, 1))?,
            None => h,
        };
        let out = Linear::new(self.up.clone())
            .forward(&h)?
            .broadcast_add(self.up_bias.dense()?)?;
        y + out
    }

    /// The weights in [`BOTTLENECK_WEIGHT_SUFFIXES`] order.
    pub fn weights(&self) -> [&Weight; 4] {
        [&self.down, &self.down_bias, &self.up, &self.up_bias]
    }

    /// Mutable [`Bottleneck::weights`].
    pub fn weights_mut(&mut self) -> [&mut Weight; 4] {
        [
            &mut self.down,
            &mut self.down_bias,
            &mut self.up,
            &mut self.up_bias,
        ]
    }
}

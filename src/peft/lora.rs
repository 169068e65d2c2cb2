//! LoRA (Hu et al., 2021): a frozen linear map `W` plus a trainable low-rank update
//! `(alpha/r)·B·A`, with `A` (`[r, in]`) Kaiming-uniform (a = √5, as PEFT) and `B` (`[out, r]`)
//! zero, so training starts from the base model exactly. Dropout on the LoRA input only.

use crate::model::Weight;
use candle_core::{DType, Device, Result, Tensor, Var};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// LoRA hyper-parameters (also the `--lora-*` flags).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct LoraConfig {
    /// LoRA rank.
    #[arg(long = "lora-r", default_value_t = 8)]
    pub r: usize,
    /// LoRA scale numerator: the update is `(alpha / r)·B·A`.
    #[arg(long = "lora-alpha", default_value_t = 32.0)]
    pub alpha: f64,
    /// Dropout probability on the LoRA branch's input (training only).
    #[arg(long = "lora-dropout", default_value_t = 0.1)]
    pub dropout: f64,
    /// Linear maps to adapt, by module name [default: the family's, e.g. q_proj,k_proj,v_proj,
    /// o_proj,gate_proj,up_proj,down_proj for LLaMA, c_attn,c_proj,c_fc for GPT-2].
    #[arg(long = "lora-targets", value_delimiter = ',')]
    pub targets: Vec<String>,
    /// The adapted weights are stored `[in, out]` (GPT-2's `Conv1D`); set from the model, and
    /// written to PEFT's `adapter_config.json`.
    #[arg(skip)]
    #[serde(default)]
    pub fan_in_fan_out: bool,
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig {
            r: 8,
            alpha: 32.0,
            dropout: 0.1,
            // Empty: the family's default maps.
            targets: Vec::new(),
            fan_in_fan_out: false,
        }
    }
}

pub use crate::model::Lora;
pub use crate::ops::dropout::{dropout, mix_seed};

impl Lora {
    /// A fresh, trainable LoRA for an `[out, in]` map: `A` Kaiming-uniform with a = √5
    /// (bound `1/√in`, PyTorch's `nn.Linear` default that PEFT uses), `B` zero.
    pub fn init(
        out_f: usize,
        in_f: usize,
        config: &LoraConfig,
        seed: u64,
        dtype: DType,
    ) -> Result<Self> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let bound = 1.0 / (in_f as f64).sqrt();
        let a: Vec<f32> = (0..config.r * in_f)
            .map(|_| rng.random_range(-bound..bound) as f32)
            .collect();
        let a = Tensor::from_vec(a, (config.r, in_f), &Device::Cpu)?.to_dtype(dtype)?;
        let b = Tensor::zeros((out_f, config.r), dtype, &Device::Cpu)?;
        Ok(Lora {
            a: Weight::Trainable(Var::from_tensor(&a)?),
            b: Weight::Trainable(Var::from_tensor(&b)?),
            scale: config.alpha / config.r as f64,
            dropout: config.dropout,
        })
    }
}

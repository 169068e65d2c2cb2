//! LoRA (Hu et al., 2021): a frozen linear map `W` plus a trainable low-rank update
//! `(alpha/r)·B·A`, with `A` (`[r, in]`) Kaiming-uniform (a = √5, as PEFT) and `B` (`[out, r]`)
//! zero, so training starts from the base model exactly. Dropout on the LoRA input only.

use crate::model::Weight;
use candle_core::{DType, Device, Result, Tensor, Var};
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
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

/// A reproducible stream for one dropout mask: the step's seed mixed with the module's id.
pub fn mix_seed(seed: u64, module: u64) -> u64 {
    // SplitMix64 finaliser: distinct modules get unrelated streams from one step seed.
    let mut z = seed ^ module.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Inverted dropout of `x` with probability `p`, the mask drawn from `seed`.
pub fn dropout(x: &Tensor, p: f64, seed: u64) -> Result<Tensor> {
    if p <= 0.0 {
        return Ok(x.clone());
    }
    let keep = (1.0 / (1.0 - p)) as f32;
    // Element i's draw is a hash of (seed, i): the mask is the same whatever the thread count,
    // and its blocks are drawn in parallel (a sequential generator was a tenth of a LoRA step).
    const BLOCK: usize = 1 << 14;
    let mut mask = vec![0f32; x.elem_count()];
    mask.par_chunks_mut(BLOCK)
        .enumerate()
        .for_each(|(block, m)| {
            for (j, v) in m.iter_mut().enumerate() {
                let draw = mix_seed(seed, (block * BLOCK + j) as u64) >> 11;
                let u = draw as f64 / (1u64 << 53) as f64;
                *v = if u < p { 0.0 } else { keep };
            }
        });
    let mask = Tensor::from_vec(mask, x.dims(), x.device())?.to_dtype(x.dtype())?;
    x * mask
}

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

    /// The branch's output `scale · (drop(x)·Aᵀ)·Bᵀ`; dropout only with a seed (training).
    pub fn forward(&self, x: &Tensor, seed: Option<u64>) -> Result<Tensor> {
        let x = match seed {
            Some(s) => dropout(x, self.dropout, s)?,
            None => x.clone(),
        };
        let a = crate::model::Linear::new(self.a.clone());
        let b = crate::model::Linear::new(self.b.clone());
        b.forward(&a.forward(&x)?)? * self.scale
    }

    /// The update as a dense `[out, in]` matrix, `scale · B·A`, for merging.
    pub fn delta(&self) -> Result<Tensor> {
        self.b.tensor().matmul(self.a.tensor())? * self.scale
    }
}

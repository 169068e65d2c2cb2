//! Bottleneck adapters (Houlsby et al., 2019): a small residual MLP `y + up(drop(relu(down(y))))`
//! on the output of a linear map — by default the attention output projection and the MLP down
//! projection, i.e. right before each sub-layer's output joins the residual stream. `up` starts
//! at zero, so an untrained adapter is the identity and training starts from the base model.

use crate::model::Weight;
use candle_core::{DType, Device, Result, Tensor, Var};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// Bottleneck-adapter hyper-parameters (also the `--adapter-*` flags).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct BottleneckConfig {
    /// Width of the bottleneck.
    #[arg(id = "adapter_size", long = "adapter-size", default_value_t = 64)]
    pub size: usize,
    /// Dropout probability on the bottleneck activations (training only).
    #[arg(
        id = "adapter_dropout",
        long = "adapter-dropout",
        default_value_t = 0.1
    )]
    pub dropout: f64,
    /// Linear maps whose output gets an adapter, by module name [default: the family's
    /// attention and MLP output maps, e.g. o_proj,down_proj for LLaMA].
    // Ids of their own: LoRA's flags have fields of the same names in the same commands.
    #[arg(
        id = "adapter_targets",
        long = "adapter-targets",
        value_delimiter = ','
    )]
    pub targets: Vec<String>,
}

impl Default for BottleneckConfig {
    fn default() -> Self {
        BottleneckConfig {
            size: 64,
            dropout: 0.1,
            // Empty: the family's default maps.
            targets: Vec::new(),
        }
    }
}

pub use crate::model::{Bottleneck, BOTTLENECK_WEIGHT_SUFFIXES as WEIGHT_SUFFIXES};

impl Bottleneck {
    /// A fresh, trainable adapter for a map with `dim` outputs: `down` as PyTorch's
    /// `nn.Linear` initialises (Kaiming-uniform, a = √5: weight and bias within `±1/√dim`),
    /// `up` zero.
    pub fn init(dim: usize, config: &BottleneckConfig, seed: u64, dtype: DType) -> Result<Self> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let bound = 1.0 / (dim as f64).sqrt();
        let mut uniform = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| rng.random_range(-bound..bound) as f32)
                .collect()
        };
        let cpu = &Device::Cpu;
        let down = Tensor::from_vec(uniform(config.size * dim), (config.size, dim), cpu)?;
        let down_bias = Tensor::from_vec(uniform(config.size), config.size, cpu)?;
        let var = |t: Tensor| -> Result<Weight> {
            Ok(Weight::Trainable(Var::from_tensor(&t.to_dtype(dtype)?)?))
        };
        Ok(Bottleneck {
            down: var(down)?,
            down_bias: var(down_bias)?,
            up: var(Tensor::zeros((dim, config.size), DType::F32, cpu)?)?,
            up_bias: var(Tensor::zeros(dim, DType::F32, cpu)?)?,
            dropout: config.dropout,
        })
    }
}

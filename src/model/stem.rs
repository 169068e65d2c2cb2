//! What sits around the decoder layers: the embeddings that make the residual stream from token
//! ids, and the final norm and LM head that read it. Families differ here only in which parts
//! they have, so one data-driven struct serves them all; each family's loader fills it in.

use super::layer::{ModuleMut, ModuleRef};
use super::weight::{Linear, Norm, Weight};
use candle_core::{Result, Tensor};

/// Learned absolute position embeddings.
#[derive(Clone, Debug)]
pub struct Positions {
    /// `[rows, dim]`.
    pub weight: Weight,
    /// Row of position 0 (OPT reserves the first two rows: 2).
    pub offset: usize,
}

/// Embeddings, final norm and LM head, each optional part under its HF name (a module path for
/// norms and linear maps, a full weight name otherwise).
#[derive(Clone, Debug)]
pub struct Stem {
    /// Token embedding `[vocab, dim]`.
    pub tokens: (String, Weight),
    /// Learned positions added to the token embeddings (GPT-2, OPT).
    pub positions: Option<(String, Positions)>,
    /// Multiplies the token embeddings (Gemma: √hidden).
    pub scale: Option<f64>,
    /// Projects token embeddings up to the hidden size before positions are added (OPT-350m).
    pub project_in: Option<(String, Linear)>,
    /// Normalises the embeddings (BLOOM's `word_embeddings_layernorm`).
    pub embed_norm: Option<(String, Norm)>,
    /// Normalises the last layer's output (absent in post-LN OPT).
    pub final_norm: Option<(String, Norm)>,
    /// Projects the normalised output down to the embedding size (OPT-350m).
    pub project_out: Option<(String, Linear)>,
    /// Untied LM head `[vocab, dim]`; `None` when tied to the token embedding.
    pub lm_head: Option<(String, Weight)>,
}

impl Stem {
    /// The residual stream for `ids` (`[batch, seq]` u32) at positions `offset..`: the input of
    /// the first layer.
    pub fn embed(&self, ids: &Tensor, offset: usize) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let table = self.tokens.1.dense()?;
        let dim = table.dim(1)?;
        let mut h = table
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, t, dim))?;
        if let Some(scale) = self.scale {
            h = h.affine(scale, 0.0)?;
        }
        if let Some((_, p)) = &self.project_in {
            h = p.forward(&h)?;
        }
        if let Some((name, p)) = &self.positions {
            let rows = p.weight.dims()[0];
            let first = offset + p.offset;
            if first + t > rows {
                candle_core::bail!(
                    "position {} is beyond the {} positions of `{name}`",
                    offset + t - 1,
                    rows - p.offset
                );
            }
            let rows = p.weight.dense()?.narrow(0, first, t)?;
            h = match &p.weight {
                Weight::Frozen(_) => {
                    crate::ops::frozen_affine(&h, None, Some(&rows.contiguous()?))?
                }
                _ => h.broadcast_add(&rows.unsqueeze(0)?)?,
            };
        }
        match &self.embed_norm {
            Some((_, n)) => n.forward(&h),
            None => Ok(h),
        }
    }

    /// The final norm (and projection) of the last layer's output: what the LM head reads.
    pub fn final_norm(&self, h: &Tensor) -> Result<Tensor> {
        let h = match &self.final_norm {
            Some((_, n)) => n.forward(h)?,
            None => h.clone(),
        };
        match &self.project_out {
            Some((_, p)) => p.forward(&h),
            None => Ok(h),
        }
    }

    /// The LM head's weight `[vocab, dim]` (the token embedding when tied).
    pub fn head_weight(&self) -> &Weight {
        self.lm_head.as_ref().map_or(&self.tokens.1, |(_, w)| w)
    }

    /// The weights read before the layers (`before`) or after them, with full HF names.
    pub fn weights(&self, before: bool) -> Vec<(String, &Weight)> {
        let mut out = Vec::new();
        fn module<'a>(out: &mut Vec<(String, &'a Weight)>, path: &str, m: ModuleRef<'a>) {
            let ws = match m {
                ModuleRef::Linear(l) => l.base_weights(),
                ModuleRef::Norm(n) => n.weights(),
            };
            for (s, w) in ws {
                out.push((format!("{path}.{s}"), w));
            }
        }
        if before {
            out.push((self.tokens.0.clone(), &self.tokens.1));
            if let Some((n, p)) = &self.positions {
                out.push((n.clone(), &p.weight));
            }
            if let Some((n, l)) = &self.project_in {
                module(&mut out, n, ModuleRef::Linear(l));
            }
            if let Some((n, l)) = &self.embed_norm {
                module(&mut out, n, ModuleRef::Norm(l));
            }
        } else {
            if let Some((n, l)) = &self.final_norm {
                module(&mut out, n, ModuleRef::Norm(l));
            }
            if let Some((n, l)) = &self.project_out {
                module(&mut out, n, ModuleRef::Linear(l));
            }
            if let Some((n, w)) = &self.lm_head {
                out.push((n.clone(), w));
            }
        }
        out
    }

    /// Mutable [`Stem::weights`]: the weights before the layers and those after, at once.
    #[allow(clippy::type_complexity)]
    pub fn weights_mut(&mut self) -> (Vec<(String, &mut Weight)>, Vec<(String, &mut Weight)>) {
        fn module<'a>(out: &mut Vec<(String, &'a mut Weight)>, path: &str, m: ModuleMut<'a>) {
            let ws = match m {
                ModuleMut::Linear(l) => l.weights_mut().0,
                ModuleMut::Norm(n) => n.weights_mut(),
            };
            for (s, w) in ws {
                out.push((format!("{path}.{s}"), w));
            }
        }
        let Stem {
            tokens,
            positions,
            project_in,
            embed_norm,
            final_norm,
            project_out,
            lm_head,
            ..
        } = self;
        let mut before = vec![(tokens.0.clone(), &mut tokens.1)];
        if let Some((n, p)) = positions {
            before.push((n.clone(), &mut p.weight));
        }
        if let Some((n, l)) = project_in {
            module(&mut before, n, ModuleMut::Linear(l));
        }
        if let Some((n, l)) = embed_norm {
            module(&mut before, n, ModuleMut::Norm(l));
        }
        let mut after = Vec::new();
        if let Some((n, l)) = final_norm {
            module(&mut after, n, ModuleMut::Norm(l));
        }
        if let Some((n, l)) = project_out {
            module(&mut after, n, ModuleMut::Linear(l));
        }
        if let Some((n, w)) = lm_head {
            after.push((n.clone(), w));
        }
        (before, after)
    }
}

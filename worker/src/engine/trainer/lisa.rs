//! LISA (Pan et al., 2024, "Layerwise Importance Sampling for Memory-Efficient Large Language
//! Model Fine-Tuning", Algorithm 1): full fine-tuning where, every `interval` steps, `layers`
//! decoder layers are drawn uniformly (from the seed and the interval's number) and only
//! they, the embeddings, the head and the other non-layer weights are updated. A new draw
//! starts a fresh optimizer over the active weights, so optimizer state exists for the active
//! layers only. Gradients of frozen layers are computed by candle's backward and discarded
//! (the autograd has no per-tensor switch); the saving is the optimizer state.

use std::collections::{BTreeMap, BTreeSet};

use candle_core::Var;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::engine::optim::{Grads, OptimError, Optimizer, OptimizerConfig};
use crate::engine::rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LisaConfig {
    /// Decoder layers active at a time (γ).
    pub layers: usize,
    /// Steps between draws (K).
    pub interval: u64,
    /// Decoder layers of the model.
    pub num_layers: usize,
}

/// The decoder layer a parameter belongs to (`model.layers.3.mlp.up_proj.weight` → 3).
pub fn layer_of(name: &str) -> Option<usize> {
    let mut parts = name.split('.');
    while let Some(p) = parts.next() {
        if p == "layers" {
            return parts.next()?.parse().ok();
        }
    }
    None
}

/// The layers active during interval `index`: `γ` distinct layers drawn uniformly.
pub fn draw(config: &LisaConfig, seed: u64, index: u64) -> BTreeSet<usize> {
    let mut g = rng::stream(seed, &format!("lisa/{index}"));
    let mut all: Vec<usize> = (0..config.num_layers).collect();
    // Partial Fisher–Yates: the first γ slots are a uniform sample without replacement.
    let take = config.layers.min(all.len());
    for i in 0..take {
        let j = g.random_range(i..all.len());
        all.swap(i, j);
    }
    all[..take].iter().copied().collect()
}

/// The active weights and the optimizer over them.
pub(super) struct Lisa {
    config: LisaConfig,
    optimizer_config: OptimizerConfig,
    seed: u64,
    /// The interval whose layers are active.
    index: Option<u64>,
    active: BTreeSet<usize>,
    optimizer: Option<Optimizer>,
}

impl Lisa {
    pub(super) fn new(config: LisaConfig, optimizer_config: OptimizerConfig, seed: u64) -> Self {
        Self {
            config,
            optimizer_config,
            seed,
            index: None,
            active: BTreeSet::new(),
            optimizer: None,
        }
    }

    fn is_active(&self, name: &str) -> bool {
        layer_of(name).is_none_or(|l| self.active.contains(&l))
    }

    /// Makes the layers of the interval holding step `step` (0-based) active, with a fresh
    /// optimizer when they change.
    pub(super) fn enter(
        &mut self,
        vars: &BTreeMap<String, Var>,
        step: u64,
    ) -> Result<(), OptimError> {
        let index = step / self.config.interval.max(1);
        if self.index == Some(index) && self.optimizer.is_some() {
            return Ok(());
        }
        self.active = draw(&self.config, self.seed, index);
        let active: BTreeMap<String, Var> = vars
            .iter()
            .filter(|(n, _)| self.is_active(n))
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        tracing::debug!(interval = index, layers = ?self.active, "LISA draws its layers");
        self.optimizer = Some(Optimizer::new(&active, self.optimizer_config)?);
        self.index = Some(index);
        Ok(())
    }

    /// Keeps the gradients of the active weights only (clipping then sees those alone).
    pub(super) fn retain_active(&self, grads: &mut Grads) {
        grads.0.retain(|name, _| self.is_active(name));
    }

    pub(super) fn optimizer(&mut self) -> Result<&mut Optimizer, OptimError> {
        self.optimizer
            .as_mut()
            .ok_or_else(|| OptimError::State("LISA has no active layers yet".into()))
    }

    /// The optimizer of the current draw, once there is one.
    pub(super) fn current(&self) -> Option<&Optimizer> {
        self.optimizer.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_are_drawn_uniformly_and_reproducibly() {
        let c = LisaConfig {
            layers: 2,
            interval: 5,
            num_layers: 6,
        };
        assert_eq!(draw(&c, 3, 7), draw(&c, 3, 7));
        let mut counts = [0usize; 6];
        for i in 0..3000 {
            let d = draw(&c, 1, i);
            assert_eq!(d.len(), 2);
            for l in d {
                counts[l] += 1;
            }
        }
        // 6000 draws over 6 layers: 1000 each, within 10%.
        assert!(
            counts.iter().all(|&n| (900..=1100).contains(&n)),
            "{counts:?}"
        );
        assert_eq!(layer_of("model.layers.12.mlp.up_proj.weight"), Some(12));
        assert_eq!(layer_of("model.embed_tokens.weight"), None);
        assert_eq!(layer_of("lm_head.weight"), None);
    }
}

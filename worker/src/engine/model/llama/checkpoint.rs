//! Gradient checkpointing: the loss and its gradients with only the decoder layers' inputs
//! kept between forward and backward, each layer recomputed during the backward pass.
//!
//! candle's autograd keeps every node of a graph until `backward` returns, so for long
//! sequences the activations of all layers dominate memory. Here the forward pass runs layer
//! by layer on detached inputs (each layer's graph is freed as soon as its output is taken),
//! keeping only the `[b·t, hidden]` input of every layer. The backward pass then walks the
//! segments in reverse: the head and loss from the last hidden state, then each layer
//! recomputed from its saved input and differentiated against the gradient arriving from above
//! (the vector-Jacobian product of `Σ y·g`), then the embeddings. Gradients of parameters used
//! in several segments (prefix tuning's per-layer keys, a tied embedding under full fine-tuning)
//! are summed. Only public, device-generic candle ops are used, so it runs on CUDA as on the
//! CPU; dropout masks are drawn from per-pass, per-module seeded streams, so the recomputation
//! sees the same masks as the forward pass.

use std::collections::BTreeMap;

use candle_core::{DType, Tensor, Var};

use super::Llama;
use crate::engine::adapters::Mode;
use crate::engine::model::ModelError;

/// The value of the scaled loss and the gradient of every var that received one.
pub struct CheckpointedPass {
    pub loss: f64,
    pub grads: BTreeMap<String, Tensor>,
}

impl Llama {
    /// Turns gradient checkpointing on or off for training passes.
    pub fn set_gradient_checkpointing(&mut self, on: bool) {
        self.checkpointing = on;
    }

    pub fn gradient_checkpointing(&self) -> bool {
        self.checkpointing
    }

    /// `scale · masked_nll_sum` of the batch and its gradient for each of `vars`, keeping only
    /// the layers' inputs between forward and backward.
    pub fn checkpointed_loss_and_grads(
        &self,
        input_ids: &Tensor,
        labels: &Tensor,
        mask: &Tensor,
        mode: &Mode,
        scale: f64,
        vars: &BTreeMap<String, Var>,
    ) -> Result<CheckpointedPass, ModelError> {
        let mut grads = BTreeMap::new();
        // Forward: the embedding segment keeps its graph (it is small and holds the prompt
        // and embedding vars); every layer runs on a detached input and keeps only that.
        let (embedded, pass) = self.embed(input_ids, mode)?;
        let mut inputs = Vec::with_capacity(self.layers.len());
        let mut x = embedded.detach();
        for i in 0..self.layers.len() {
            let y = self.layer_forward(i, &x, &pass, mode)?.detach();
            inputs.push(std::mem::replace(&mut x, y));
        }
        // The head segment: final norm, LM head and loss from the last hidden state.
        let top = Var::from_tensor(&x)?;
        let hidden = self.final_norm(top.as_tensor(), &pass)?;
        let loss = (self.head_nll_sum(&hidden, labels, mask, mode)? * scale)?;
        let value = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let mut upstream = backward_into(&loss, vars, &mut grads, &top)?;
        // The layers, last first, each recomputed from its saved input.
        for (i, input) in inputs.iter().enumerate().rev() {
            let Some(g) = upstream else { break };
            let x = Var::from_tensor(input)?;
            let y = self.layer_forward(i, x.as_tensor(), &pass, mode)?;
            let surrogate = (y * g)?.sum_all()?;
            upstream = backward_into(&surrogate, vars, &mut grads, &x)?;
        }
        // The embedding segment (prompt tuning's virtual tokens, a trained embedding).
        if let Some(g) = upstream
            && embedded.track_op()
        {
            let surrogate = (embedded * g)?.sum_all()?;
            let store = surrogate.backward()?;
            accumulate(&store, vars, &mut grads)?;
        }
        Ok(CheckpointedPass { loss: value, grads })
    }
}

/// Backpropagates `root`, adds the vars' gradients to `grads` and returns the gradient that
/// reached `input` (the segment's input), if any.
fn backward_into(
    root: &Tensor,
    vars: &BTreeMap<String, Var>,
    grads: &mut BTreeMap<String, Tensor>,
    input: &Var,
) -> Result<Option<Tensor>, ModelError> {
    let store = root.backward()?;
    accumulate(&store, vars, grads)?;
    Ok(store.get(input).cloned())
}

fn accumulate(
    store: &candle_core::backprop::GradStore,
    vars: &BTreeMap<String, Var>,
    grads: &mut BTreeMap<String, Tensor>,
) -> Result<(), ModelError> {
    for (name, var) in vars {
        if let Some(g) = store.get(var) {
            let sum = match grads.remove(name) {
                Some(previous) => (previous + g)?,
                None => g.clone(),
            };
            grads.insert(name.clone(), sum);
        }
    }
    Ok(())
}

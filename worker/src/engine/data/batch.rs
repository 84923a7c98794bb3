//! Padding-aware batching for causal LM training.

use candle_core::{Device, Tensor};

use super::{DataError, Example};

/// One micro-batch. Inputs are `ids[..n-1]`, labels `ids[1..]`, right-padded to the
/// longest example in the batch (not a global max, so short batches stay cheap).
#[derive(Debug, Clone)]
pub struct Batch {
    /// `[batch, seq]` u32.
    pub input_ids: Tensor,
    /// `[batch·seq]` u32 next-token labels.
    pub labels: Tensor,
    /// `[batch·seq]` f32: the weight of each label in the loss (1 for a target, the prompt
    /// weight for another real token, 0 for padding).
    pub mask: Tensor,
    /// Number of label positions with mask 1.
    pub num_targets: usize,
    /// Sum of the mask: what the loss is a mean over.
    pub target_weight: f64,
    /// Number of real (non-padding) input tokens.
    pub num_tokens: usize,
}

impl Batch {
    /// A batch whose loss counts the targets only (completion tokens, assistant turns).
    pub fn new(examples: &[&Example], pad_id: u32, device: &Device) -> Result<Self, DataError> {
        Self::weighted(examples, pad_id, 0.0, device)
    }

    /// A batch whose loss also counts the other real tokens (prompts, user turns, template
    /// text) with weight `prompt_weight` in [0, 1]: 1 trains on the whole sequence.
    pub fn weighted(
        examples: &[&Example],
        pad_id: u32,
        prompt_weight: f32,
        device: &Device,
    ) -> Result<Self, DataError> {
        let seq = examples
            .iter()
            .map(|e| e.ids.len().saturating_sub(1))
            .max()
            .unwrap_or(0)
            .max(1);
        let b = examples.len();
        let mut inputs = vec![pad_id; b * seq];
        let mut labels = vec![pad_id; b * seq];
        let mut mask = vec![0f32; b * seq];
        let (mut num_targets, mut num_tokens, mut target_weight) = (0, 0, 0.0);
        for (row, e) in examples.iter().enumerate() {
            let n = e.ids.len().saturating_sub(1);
            num_tokens += n;
            for j in 0..n {
                inputs[row * seq + j] = e.ids[j];
                labels[row * seq + j] = e.ids[j + 1];
                if e.targets[j + 1] {
                    mask[row * seq + j] = 1.0;
                    num_targets += 1;
                    target_weight += 1.0;
                } else if prompt_weight > 0.0 {
                    mask[row * seq + j] = prompt_weight;
                    target_weight += f64::from(prompt_weight);
                }
            }
        }
        Ok(Self {
            input_ids: Tensor::from_vec(inputs, (b, seq), device)?,
            labels: Tensor::from_vec(labels, b * seq, device)?,
            mask: Tensor::from_vec(mask, b * seq, device)?,
            num_targets,
            target_weight,
            num_tokens,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::data::{ByteTokenizer, Record};

    #[test]
    fn pads_right_and_masks_prompt_and_padding() {
        let tok = ByteTokenizer;
        let a = Example::from_record(
            &Record::PromptCompletion {
                prompt: "ab".into(),
                completion: "cd".into(),
            },
            &tok,
            64,
        );
        let b = Example::from_record(&Record::Text { text: "xy".into() }, &tok, 64);
        let batch = Batch::new(&[&a, &b], 0, &Device::Cpu).unwrap();
        assert_eq!(batch.input_ids.dims(), &[2, 3]);
        assert_eq!(
            batch.input_ids.to_vec2::<u32>().unwrap(),
            vec![vec![97, 98, 99], vec![120, 0, 0]]
        );
        // Row 0 predicts b (prompt), c, d; row 1 predicts y then padding.
        assert_eq!(
            batch.mask.to_vec1::<f32>().unwrap(),
            vec![0., 1., 1., 1., 0., 0.]
        );
        assert_eq!(
            batch.labels.to_vec1::<u32>().unwrap(),
            vec![98, 99, 100, 121, 0, 0]
        );
        assert_eq!((batch.num_targets, batch.num_tokens), (3, 4));
    }

    #[test]
    fn truncation_keeps_the_start() {
        let e = Example::from_record(
            &Record::Text {
                text: "abcdef".into(),
            },
            &ByteTokenizer,
            4,
        );
        assert_eq!(e.ids, vec![97, 98, 99, 100]);
        assert_eq!(e.targets, vec![false, true, true, true]);
    }
}

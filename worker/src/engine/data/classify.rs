//! Sequence-classification data (`{"text","label"}`): label ids and padded batches with
//! an attention mask for encoder models.

use candle_core::{Device, Tensor};

use super::{DataError, Record, Tokenizer};

/// Label names in id order. Built from the model's `id2label` when it has one, else from
/// the training set's distinct labels sorted, so the mapping never depends on file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Labels {
    names: Vec<String>,
}

impl Labels {
    pub fn new(names: Vec<String>) -> Self {
        Self { names }
    }

    /// Distinct labels of the classification records, sorted (numerically when all are
    /// integers, so "2" < "10").
    pub fn from_records<'a>(records: impl IntoIterator<Item = &'a Record>) -> Self {
        let mut names: Vec<String> = records
            .into_iter()
            .filter_map(|r| match r {
                Record::Classification { label, .. } => Some(label.clone()),
                _ => None,
            })
            .collect();
        if names.iter().all(|n| n.parse::<u64>().is_ok()) {
            names.sort_by_key(|n| n.parse::<u64>().unwrap_or(0));
        } else {
            names.sort();
        }
        names.dedup();
        Self { names }
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn id(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }
}

/// A tokenized classification example (`ids` include the tokenizer's special tokens).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassExample {
    pub ids: Vec<u32>,
    pub label: usize,
}

/// Tokenizes numbered classification records with [`Tokenizer::encode_with_special`],
/// truncating to `max_len`. Unknown labels and other formats are errors naming the line.
pub fn class_examples(
    records: &[(usize, Record)],
    tok: &dyn Tokenizer,
    labels: &Labels,
    max_len: usize,
) -> Result<Vec<ClassExample>, DataError> {
    records
        .iter()
        .map(|(line, r)| {
            let Record::Classification { text, label } = r else {
                return Err(DataError::Line {
                    line: *line,
                    reason: "expected a {\"text\",\"label\"} record".into(),
                });
            };
            let label = labels.id(label).ok_or_else(|| DataError::Line {
                line: *line,
                reason: format!(
                    "label `{label}` is not one of the model's labels ({})",
                    labels.names().join(", ")
                ),
            })?;
            let mut ids = tok.encode_with_special(text);
            ids.truncate(max_len.max(1));
            if ids.is_empty() {
                return Err(DataError::Line {
                    line: *line,
                    reason: "text encodes to no tokens".into(),
                });
            }
            Ok(ClassExample { ids, label })
        })
        .collect()
}

/// A right-padded batch for an encoder.
#[derive(Debug, Clone)]
pub struct ClassBatch {
    /// `[batch, seq]` u32.
    pub input_ids: Tensor,
    /// `[batch, seq]` f32, 1 for real tokens and 0 for padding.
    pub attention_mask: Tensor,
    /// `[batch]` u32 class ids.
    pub labels: Tensor,
    /// Examples in the batch (each one target of the loss).
    pub len: usize,
    /// Real (unpadded) tokens in the batch.
    pub num_tokens: usize,
}

impl ClassBatch {
    pub fn new(
        examples: &[&ClassExample],
        pad_id: u32,
        device: &Device,
    ) -> Result<Self, DataError> {
        let seq = examples
            .iter()
            .map(|e| e.ids.len())
            .max()
            .unwrap_or(0)
            .max(1);
        let b = examples.len();
        let mut ids = vec![pad_id; b * seq];
        let mut mask = vec![0f32; b * seq];
        for (row, e) in examples.iter().enumerate() {
            for (j, id) in e.ids.iter().enumerate() {
                ids[row * seq + j] = *id;
                mask[row * seq + j] = 1.0;
            }
        }
        let labels: Vec<u32> = examples.iter().map(|e| e.label as u32).collect();
        Ok(Self {
            input_ids: Tensor::from_vec(ids, (b, seq), device)?,
            attention_mask: Tensor::from_vec(mask, (b, seq), device)?,
            labels: Tensor::from_vec(labels, b, device)?,
            len: b,
            num_tokens: examples.iter().map(|e| e.ids.len()).sum(),
        })
    }
}

impl super::Batchable for ClassExample {
    type Batch = ClassBatch;

    /// Every token of a labelled sequence feeds the one prediction: no prompt weight.
    fn collate(
        examples: &[&Self],
        pad_id: u32,
        _prompt_weight: f32,
        device: &Device,
    ) -> Result<ClassBatch, DataError> {
        ClassBatch::new(examples, pad_id, device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::data::{ByteTokenizer, Format, jsonl};

    #[test]
    fn labels_sorted_and_batches_masked() {
        let recs = jsonl::parse_numbered(
            "{\"text\":\"ab\",\"label\":\"pos\"}\n\n{\"text\":\"c\",\"label\":\"neg\"}\n",
            Format::Classification,
        )
        .unwrap();
        let labels = Labels::from_records(recs.iter().map(|(_, r)| r));
        assert_eq!(labels.names(), ["neg", "pos"]);
        let ex = class_examples(&recs, &ByteTokenizer, &labels, 8).unwrap();
        assert_eq!(
            ex[0],
            ClassExample {
                ids: vec![97, 98],
                label: 1
            }
        );
        let b = ClassBatch::new(&[&ex[0], &ex[1]], 0, &Device::Cpu).unwrap();
        assert_eq!(
            b.attention_mask.to_vec2::<f32>().unwrap(),
            vec![vec![1., 1.], vec![1., 0.]]
        );
        assert_eq!(b.labels.to_vec1::<u32>().unwrap(), vec![1, 0]);
        let only_pos = Labels::new(vec!["pos".into()]);
        let err = class_examples(&recs, &ByteTokenizer, &only_pos, 8).unwrap_err();
        assert!(err.to_string().starts_with("line 3: label `neg`"), "{err}");
        let numeric = Labels::from_records(&[
            Record::Classification {
                text: "a".into(),
                label: "10".into(),
            },
            Record::Classification {
                text: "a".into(),
                label: "2".into(),
            },
        ]);
        assert_eq!(numeric.names(), ["2", "10"]);
    }
}

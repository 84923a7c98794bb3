//! Preference pairs: one prompt with a chosen and a rejected reply, tokenized as two examples
//! whose targets are the reply's tokens only, and batched chosen-rows-first so a loss can
//! split the batch in two halves.

use candle_core::Device;

use super::{Batch, Batchable, DataError, Example, Record, Tokenizer};

/// A tokenized pair. Both examples share the prompt tokens; only the final reply (and its
/// end-of-turn or EOS token) is a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairExample {
    pub chosen: Example,
    pub rejected: Example,
}

/// `pairs` pairs as one padded batch: rows `0..pairs` are the chosen replies, rows
/// `pairs..2·pairs` the rejected ones, in the same order.
#[derive(Debug, Clone)]
pub struct PairBatch {
    pub pairs: usize,
    pub batch: Batch,
}

impl Batchable for PairExample {
    type Batch = PairBatch;

    /// `prompt_weight` is ignored: preference losses score the replies only (the spec
    /// refuses a prompt weight for preference jobs).
    fn collate(
        examples: &[&Self],
        pad_id: u32,
        _prompt_weight: f32,
        device: &Device,
    ) -> Result<PairBatch, DataError> {
        let rows: Vec<&Example> = examples
            .iter()
            .map(|p| &p.chosen)
            .chain(examples.iter().map(|p| &p.rejected))
            .collect();
        Ok(PairBatch {
            pairs: examples.len(),
            batch: Batch::new(&rows, pad_id, device)?,
        })
    }
}

/// Keeps the targets of the last contiguous run only: the reply a pair compares, not the
/// assistant turns of the conversation before it.
fn last_reply_only(mut e: Example) -> Example {
    if let Some(end) = e.targets.iter().rposition(|t| *t) {
        let start = e.targets[..end]
            .iter()
            .rposition(|t| !*t)
            .map_or(0, |i| i + 1);
        for t in &mut e.targets[..start] {
            *t = false;
        }
    }
    e
}

/// Tokenizes numbered preference records; a line whose reply has no token left after
/// truncation to `max_len` is an error naming the line.
pub fn pairs_from_records(
    records: &[(usize, Record)],
    tok: &dyn Tokenizer,
    max_len: usize,
) -> Result<Vec<PairExample>, DataError> {
    records
        .iter()
        .map(|(line, record)| {
            let err = |reason: String| DataError::Line {
                line: *line,
                reason,
            };
            let (chosen, rejected) = record
                .preference_pair()
                .ok_or_else(|| err("expected a preference line (chosen, rejected)".into()))?;
            let encode = |r: &Record, which: &str| {
                let e = last_reply_only(Example::try_from_record(r, tok, max_len).map_err(&err)?);
                if e.num_targets() == 0 {
                    return Err(err(format!(
                        "the {which} reply has no token left after truncation to {max_len} tokens"
                    )));
                }
                Ok(e)
            };
            Ok(PairExample {
                chosen: encode(&chosen, "chosen")?,
                rejected: encode(&rejected, "rejected")?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::data::template::Message;
    use crate::engine::data::{ByteTokenizer, jsonl::PreferencePrompt};

    #[test]
    fn a_pair_targets_its_replies_and_batches_chosen_first() {
        let records = vec![(
            3,
            Record::Preference {
                prompt: PreferencePrompt::Text("ab".into()),
                chosen: "cd".into(),
                rejected: "x".into(),
            },
        )];
        let pairs = pairs_from_records(&records, &ByteTokenizer, 64).unwrap();
        assert_eq!(pairs[0].chosen.ids, vec![97, 98, 99, 100]);
        assert_eq!(pairs[0].chosen.targets, vec![false, false, true, true]);
        assert_eq!(pairs[0].rejected.targets, vec![false, false, true]);
        let b = PairExample::collate(&[&pairs[0]], 0, 1.0, &Device::Cpu).unwrap();
        assert_eq!(b.pairs, 1);
        // Chosen row predicts b (prompt), c, d; the rejected row predicts b, x, padding.
        assert_eq!(
            b.batch.mask.to_vec1::<f32>().unwrap(),
            vec![0., 1., 1., 0., 1., 0.]
        );
        let err = pairs_from_records(&records, &ByteTokenizer, 2).unwrap_err();
        assert_eq!(
            err.to_string(),
            "line 3: the chosen reply has no token left after truncation to 2 tokens"
        );
    }

    #[test]
    fn in_a_chat_only_the_final_reply_is_a_target() {
        let m = |role: &str, content: &str| Message {
            role: role.into(),
            content: content.into(),
        };
        let e = Example {
            ids: vec![1, 2, 3, 4, 5, 6, 7],
            targets: vec![false, true, true, false, false, true, true],
        };
        assert_eq!(
            last_reply_only(e).targets,
            vec![false, false, false, false, false, true, true]
        );
        let record = Record::Preference {
            prompt: PreferencePrompt::Chat(vec![
                m("user", "q"),
                m("assistant", "a"),
                m("user", "r"),
            ]),
            chosen: "yes".into(),
            rejected: "no".into(),
        };
        let (chosen, _) = record.preference_pair().unwrap();
        assert!(matches!(chosen, Record::Chat { ref messages } if messages.len() == 4));
    }
}

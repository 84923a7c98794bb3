//! Streaming validation of JSONL datasets (formats of docs/design.md §4.1), line by line as chunks
//! arrive, so a bad line fails the upload with its line number before anything is committed.

use serde_json::Value;

use crate::domain::DatasetFormat;

/// Longest accepted line; bounds the validator's memory.
pub const MAX_LINE_BYTES: usize = 8 * 1024 * 1024;

/// A dataset that does not validate; every variant names the line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DatasetError {
    #[error("line {line}: {reason}")]
    BadLine { line: u64, reason: String },
    #[error("the dataset has no records")]
    Empty,
}

const ROLES: &[&str] = &["system", "user", "assistant", "tool"];

/// Incremental JSONL validator.
#[derive(Debug)]
pub struct JsonlValidator {
    format: Option<DatasetFormat>,
    /// Line that fixed the format when it was detected.
    format_line: u64,
    pending: Vec<u8>,
    line: u64,
    records: u64,
}

impl JsonlValidator {
    /// `format = None` detects the format from the first line.
    pub fn new(format: Option<DatasetFormat>) -> Self {
        Self {
            format,
            format_line: 0,
            pending: Vec::new(),
            line: 0,
            records: 0,
        }
    }

    /// Feeds the next chunk of bytes.
    pub fn feed(&mut self, mut chunk: &[u8]) -> Result<(), DatasetError> {
        while let Some(pos) = chunk.iter().position(|&b| b == b'\n') {
            self.pending.extend_from_slice(&chunk[..pos]);
            chunk = &chunk[pos + 1..];
            let line = std::mem::take(&mut self.pending);
            self.check_line(&line)?;
        }
        if self.pending.len() + chunk.len() > MAX_LINE_BYTES {
            return Err(self.bad(self.line + 1, format!("longer than {MAX_LINE_BYTES} bytes")));
        }
        self.pending.extend_from_slice(chunk);
        Ok(())
    }

    /// Ends the input; returns the format and the number of records.
    pub fn finish(mut self) -> Result<(DatasetFormat, u64), DatasetError> {
        if !self.pending.is_empty() {
            let line = std::mem::take(&mut self.pending);
            self.check_line(&line)?;
        }
        match self.format {
            Some(f) if self.records > 0 => Ok((f, self.records)),
            _ => Err(DatasetError::Empty),
        }
    }

    fn bad(&self, line: u64, reason: impl Into<String>) -> DatasetError {
        DatasetError::BadLine {
            line,
            reason: reason.into(),
        }
    }

    fn check_line(&mut self, raw: &[u8]) -> Result<(), DatasetError> {
        self.line += 1;
        let n = self.line;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.len() > MAX_LINE_BYTES {
            return Err(self.bad(n, format!("longer than {MAX_LINE_BYTES} bytes")));
        }
        let text = std::str::from_utf8(raw).map_err(|e| self.bad(n, format!("not UTF-8: {e}")))?;
        if text.trim().is_empty() {
            return Err(self.bad(n, "empty line (every line must be one JSON object)"));
        }
        let value: Value =
            serde_json::from_str(text).map_err(|e| self.bad(n, format!("invalid JSON: {e}")))?;
        let Value::Object(obj) = &value else {
            return Err(self.bad(n, "expected a JSON object"));
        };
        let detected = detect(obj).ok_or_else(|| {
            self.bad(
                n,
                "no known format: expected \"text\", \"prompt\"+\"completion\", \"messages\", \
                 \"text\"+\"label\" or \"prompt\"|\"messages\"+\"chosen\"+\"rejected\"",
            )
        })?;
        match self.format {
            None => {
                self.format = Some(detected);
                self.format_line = n;
            }
            Some(expected) if expected != detected => {
                let origin = if self.format_line > 0 {
                    format!(" (detected from line {})", self.format_line)
                } else {
                    String::new()
                };
                return Err(self.bad(
                    n,
                    format!("expected format {expected}{origin}, found {detected}"),
                ));
            }
            Some(_) => {}
        }
        check_fields(detected, obj).map_err(|reason| self.bad(n, reason))?;
        self.records += 1;
        Ok(())
    }
}

/// The shared rule ([`tuna_spec::dataset::detect`]) in the store's terms.
fn detect(obj: &serde_json::Map<String, Value>) -> Option<DatasetFormat> {
    use tuna_proto::v1::DatasetFormat as Wire;
    match tuna_spec::dataset::detect(obj)? {
        Wire::Text => Some(DatasetFormat::Text),
        Wire::PromptCompletion => Some(DatasetFormat::PromptCompletion),
        Wire::Chat => Some(DatasetFormat::Chat),
        Wire::Classification => Some(DatasetFormat::Classification),
        Wire::Preference => Some(DatasetFormat::Preference),
        Wire::Unspecified => None,
    }
}

fn string_field(obj: &serde_json::Map<String, Value>, key: &str) -> Result<(), String> {
    match obj.get(key) {
        Some(Value::String(_)) => Ok(()),
        Some(other) => Err(format!("\"{key}\" must be a string, got {}", kind(other))),
        None => Err(format!("missing required field \"{key}\"")),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn check_fields(format: DatasetFormat, obj: &serde_json::Map<String, Value>) -> Result<(), String> {
    match format {
        DatasetFormat::Text => string_field(obj, "text"),
        DatasetFormat::PromptCompletion => {
            string_field(obj, "prompt")?;
            string_field(obj, "completion")
        }
        DatasetFormat::Classification => {
            string_field(obj, "text")?;
            match obj.get("label") {
                Some(Value::String(s)) if !s.is_empty() => Ok(()),
                Some(Value::Number(n)) if n.as_u64().is_some() => Ok(()),
                Some(other) => Err(format!(
                    "\"label\" must be a non-empty string or a non-negative integer, got {}",
                    kind(other)
                )),
                None => Err("missing required field \"label\"".into()),
            }
        }
        DatasetFormat::Chat => {
            if !check_messages(obj)? {
                return Err("\"messages\" has no assistant message to learn from".into());
            }
            Ok(())
        }
        DatasetFormat::Preference => {
            match (obj.contains_key("prompt"), obj.contains_key("messages")) {
                (true, true) => {
                    return Err("give either \"prompt\" or \"messages\", not both".into());
                }
                (true, false) => string_field(obj, "prompt")?,
                (false, true) => {
                    check_messages(obj)?;
                }
                (false, false) => {
                    return Err("missing required field \"prompt\" (or \"messages\")".into());
                }
            }
            reply_field(obj, "chosen")?;
            reply_field(obj, "rejected")
        }
    }
}

/// Checks a line's `messages` list; returns whether it has an assistant message.
fn check_messages(obj: &serde_json::Map<String, Value>) -> Result<bool, String> {
    let Some(Value::Array(messages)) = obj.get("messages") else {
        return Err("\"messages\" must be an array".into());
    };
    if messages.is_empty() {
        return Err("\"messages\" is empty".into());
    }
    let mut assistant = false;
    for (i, m) in messages.iter().enumerate() {
        let Value::Object(m) = m else {
            return Err(format!("messages[{i}] must be an object"));
        };
        match m.get("role") {
            Some(Value::String(r)) if ROLES.contains(&r.as_str()) => {
                assistant |= r == "assistant";
            }
            Some(Value::String(r)) => {
                return Err(format!(
                    "messages[{i}].role {r:?} is not one of {}",
                    ROLES.join(", ")
                ));
            }
            _ => return Err(format!("messages[{i}].role must be a string")),
        }
        string_field(m, "content").map_err(|e| format!("messages[{i}]: {e}"))?;
    }
    Ok(assistant)
}

/// A preference reply: a string or one `{"role":"assistant","content"}` message (TRL's
/// conversational form).
fn reply_field(obj: &serde_json::Map<String, Value>, key: &str) -> Result<(), String> {
    match obj.get(key) {
        Some(Value::Array(list)) => match list.as_slice() {
            [Value::Object(m)] if m.get("role").and_then(Value::as_str) == Some("assistant") => {
                string_field(m, "content").map_err(|e| format!("{key}[0]: {e}"))
            }
            _ => Err(format!(
                "\"{key}\" must be a string or one {{\"role\":\"assistant\",\"content\"}} message"
            )),
        },
        _ => string_field(obj, key),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate(data: &str, chunk: usize) -> Result<(DatasetFormat, u64), DatasetError> {
        let mut v = JsonlValidator::new(None);
        for c in data.as_bytes().chunks(chunk) {
            v.feed(c)?;
        }
        v.finish()
    }

    #[test]
    fn bad_line_is_reported_by_number_whatever_the_chunking() {
        let data = "{\"text\":\"a\"}\n{\"text\":\"b\"}\n{\"txt\":\"c\"}\n{\"text\":\"d\"}\n";
        for chunk in [1, 3, 7, 1000] {
            match validate(data, chunk) {
                Err(DatasetError::BadLine { line, .. }) => assert_eq!(line, 3),
                other => panic!("chunk {chunk}: {other:?}"),
            }
        }
    }

    #[test]
    fn formats_are_detected_and_counted() {
        assert_eq!(
            validate("{\"prompt\":\"p\",\"completion\":\"c\"}\n", 5),
            Ok((DatasetFormat::PromptCompletion, 1))
        );
        let chat =
            r#"{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"yo"}]}"#;
        assert_eq!(validate(chat, 4), Ok((DatasetFormat::Chat, 1)));
        assert_eq!(
            validate(
                "{\"text\":\"x\",\"label\":2}\n{\"text\":\"y\",\"label\":\"a\"}",
                9
            ),
            Ok((DatasetFormat::Classification, 2))
        );
    }

    #[test]
    fn preference_pairs_validate_with_line_numbers() {
        let good = "{\"prompt\":\"p\",\"chosen\":\"a\",\"rejected\":\"b\"}\n\
                    {\"prompt\":\"q\",\"chosen\":[{\"role\":\"assistant\",\"content\":\"a\"}],\
                    \"rejected\":\"b\"}\n";
        assert_eq!(validate(good, 7), Ok((DatasetFormat::Preference, 2)));
        let chat = r#"{"messages":[{"role":"user","content":"hi"}],"chosen":"yo","rejected":"no"}"#;
        assert_eq!(validate(chat, 5), Ok((DatasetFormat::Preference, 1)));
        for (data, line, want) in [
            (
                "{\"prompt\":\"p\",\"chosen\":\"a\",\"rejected\":\"b\"}\n{\"prompt\":\"p\",\"chosen\":\"a\"}",
                2,
                "missing required field \"rejected\"",
            ),
            (
                "{\"chosen\":\"a\",\"rejected\":\"b\"}",
                1,
                "\"prompt\" (or \"messages\")",
            ),
            (
                "{\"prompt\":\"p\",\"chosen\":[{\"role\":\"user\",\"content\":\"a\"}],\"rejected\":\"b\"}",
                1,
                "\"chosen\" must be a string or one",
            ),
            (
                "{\"prompt\":\"p\",\"chosen\":\"a\",\"rejected\":7}",
                1,
                "\"rejected\" must be a string",
            ),
            (
                "{\"text\":\"t\"}\n{\"prompt\":\"p\",\"chosen\":\"a\",\"rejected\":\"b\"}",
                2,
                "expected format text",
            ),
        ] {
            match validate(data, 3) {
                Err(DatasetError::BadLine { line: l, reason }) => {
                    assert_eq!(l, line, "{data}: {reason}");
                    assert!(reason.contains(want), "{data}: {reason}");
                }
                other => panic!("{data}: {other:?}"),
            }
        }
    }

    #[test]
    fn mixed_formats_and_empty_files_are_rejected() {
        let err = validate(
            "{\"text\":\"a\"}\n{\"prompt\":\"p\",\"completion\":\"c\"}\n",
            64,
        );
        assert!(
            matches!(err, Err(DatasetError::BadLine { line: 2, .. })),
            "{err:?}"
        );
        assert_eq!(validate("", 4), Err(DatasetError::Empty));
        let err = validate("{\"text\":\"a\"}\n\n{\"text\":\"b\"}\n", 64);
        assert!(
            matches!(err, Err(DatasetError::BadLine { line: 2, .. })),
            "{err:?}"
        );
    }
}

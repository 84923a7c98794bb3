//! JSONL parsing for the `{"text"}` and `{"prompt","completion"}` formats.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::DataError;

/// Which record shape every line must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    Text,
    PromptCompletion,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Text { text: String },
    PromptCompletion { prompt: String, completion: String },
}

/// Parses JSONL text; blank lines are skipped, anything else must be a JSON object with
/// the format's string fields (extra fields are ignored, as HF datasets do).
pub fn parse(text: &str, format: Format) -> Result<Vec<Record>, DataError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        out.push(parse_line(line, format).map_err(|reason| DataError::Line {
            line: i + 1,
            reason,
        })?);
    }
    if out.is_empty() {
        return Err(DataError::Empty);
    }
    Ok(out)
}

/// Reads and parses a JSONL file.
pub fn read(path: &Path, format: Format) -> Result<Vec<Record>, DataError> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    parse(&text, format)
}

fn parse_line(line: &str, format: Format) -> Result<Record, String> {
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("invalid JSON: {e}"))?;
    let obj = value.as_object().ok_or("expected a JSON object")?;
    let field = |name: &str| -> Result<String, String> {
        match obj.get(name) {
            Some(serde_json::Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(format!("field `{name}` must be a string")),
            None => Err(format!("missing field `{name}`")),
        }
    };
    match format {
        Format::Text => Ok(Record::Text {
            text: field("text")?,
        }),
        Format::PromptCompletion => Ok(Record::PromptCompletion {
            prompt: field("prompt")?,
            completion: field("completion")?,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_formats_and_skips_blank_lines() {
        let t = parse(
            "{\"text\":\"hi\"}\n\n{\"text\":\"yo\",\"extra\":1}\n",
            Format::Text,
        )
        .unwrap();
        assert_eq!(t.len(), 2);
        let pc = parse(
            r#"{"prompt":"a","completion":"b"}"#,
            Format::PromptCompletion,
        )
        .unwrap();
        assert_eq!(
            pc[0],
            Record::PromptCompletion {
                prompt: "a".into(),
                completion: "b".into()
            }
        );
    }

    #[test]
    fn errors_carry_line_numbers_and_field_names() {
        let err = parse("{\"text\":\"ok\"}\n{\"txt\":\"no\"}\n", Format::Text).unwrap_err();
        assert_eq!(err.to_string(), "line 2: missing field `text`");
        let err = parse(
            "{\"prompt\":\"a\",\"completion\":3}",
            Format::PromptCompletion,
        )
        .unwrap_err();
        assert!(
            err.to_string().starts_with("line 1: field `completion`"),
            "{err}"
        );
        let err = parse("\n\nnot json", Format::Text).unwrap_err();
        assert!(err.to_string().starts_with("line 3: invalid JSON"), "{err}");
        assert!(matches!(parse("\n", Format::Text), Err(DataError::Empty)));
    }
}

//! JSONL parsing for the `{"text"}`, `{"prompt","completion"}`, `{"messages":[...]}`,
//! `{"text","label"}` and `{"prompt"|"messages","chosen","rejected"}` formats.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::DataError;

/// Which record shape every line must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    Text,
    PromptCompletion,
    /// `{"messages":[{"role","content"}, ...]}`.
    Chat,
    /// `{"text","label"}` for sequence classification; the label may be a string or an
    /// integer and is kept as text (class ids are assigned by [`super::classify`]).
    Classification,
    /// `{"prompt","chosen","rejected"}` or `{"messages","chosen","rejected"}`: two replies to
    /// one prompt, the first preferred.
    Preference,
}

/// What a preference pair's replies answer: plain text or a conversation so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PreferencePrompt {
    Text(String),
    Chat(Vec<super::template::Message>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Text {
        text: String,
    },
    PromptCompletion {
        prompt: String,
        completion: String,
    },
    Chat {
        messages: Vec<super::template::Message>,
    },
    Classification {
        text: String,
        label: String,
    },
    Preference {
        prompt: PreferencePrompt,
        chosen: String,
        rejected: String,
    },
}

impl Record {
    /// A preference pair as the two records it compares (prompt + chosen, prompt +
    /// rejected); `None` for other records.
    pub fn preference_pair(&self) -> Option<(Record, Record)> {
        let Record::Preference {
            prompt,
            chosen,
            rejected,
        } = self
        else {
            return None;
        };
        let with = |reply: &str| match prompt {
            PreferencePrompt::Text(p) => Record::PromptCompletion {
                prompt: p.clone(),
                completion: reply.to_string(),
            },
            PreferencePrompt::Chat(messages) => {
                let mut messages = messages.clone();
                messages.push(super::template::Message {
                    role: "assistant".into(),
                    content: reply.to_string(),
                });
                Record::Chat { messages }
            }
        };
        Some((with(chosen), with(rejected)))
    }
}

/// Parses JSONL text; blank lines are skipped, anything else must be a JSON object with
/// the format's string fields (extra fields are ignored, as HF datasets do).
pub fn parse(text: &str, format: Format) -> Result<Vec<Record>, DataError> {
    Ok(parse_numbered(text, format)?
        .into_iter()
        .map(|(_, r)| r)
        .collect())
}

/// Like [`parse`], keeping each record's 1-based line number for later error messages.
pub fn parse_numbered(text: &str, format: Format) -> Result<Vec<(usize, Record)>, DataError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let record = parse_line(line, format).map_err(|reason| DataError::Line {
            line: i + 1,
            reason,
        })?;
        out.push((i + 1, record));
    }
    if out.is_empty() {
        return Err(DataError::Empty);
    }
    Ok(out)
}

/// Reads a JSONL file keeping line numbers (see [`parse_numbered`]).
pub fn read_numbered(path: &Path, format: Format) -> Result<Vec<(usize, Record)>, DataError> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    parse_numbered(&text, format)
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
        Format::Chat => Ok(Record::Chat {
            messages: messages(obj)?,
        }),
        Format::Classification => {
            let label = match obj.get("label") {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(serde_json::Value::Number(n)) if n.is_u64() => n.to_string(),
                Some(_) => {
                    return Err("field `label` must be a string or a non-negative integer".into());
                }
                None => return Err("missing field `label`".into()),
            };
            Ok(Record::Classification {
                text: field("text")?,
                label,
            })
        }
        Format::Preference => {
            let prompt = match (obj.get("prompt"), obj.contains_key("messages")) {
                (Some(_), true) => {
                    return Err("give either `prompt` or `messages`, not both".into());
                }
                (Some(_), false) => PreferencePrompt::Text(field("prompt")?),
                (None, true) => PreferencePrompt::Chat(messages(obj)?),
                (None, false) => return Err("missing field `prompt` (or `messages`)".into()),
            };
            Ok(Record::Preference {
                prompt,
                chosen: reply(obj, "chosen")?,
                rejected: reply(obj, "rejected")?,
            })
        }
    }
}

/// The `messages` list of a chat line.
fn messages(
    obj: &serde_json::Map<String, serde_json::Value>,
) -> Result<Vec<super::template::Message>, String> {
    let list = match obj.get("messages") {
        Some(serde_json::Value::Array(list)) => list,
        Some(_) => return Err("field `messages` must be an array".into()),
        None => return Err("missing field `messages`".into()),
    };
    let mut messages = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let get = |name: &str| match m.get(name) {
            Some(serde_json::Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(format!("messages[{i}].{name} must be a string")),
            None => Err(format!("messages[{i}] has no `{name}`")),
        };
        messages.push(super::template::Message {
            role: get("role")?,
            content: get("content")?,
        });
    }
    if messages.is_empty() {
        return Err("field `messages` is empty".into());
    }
    Ok(messages)
}

/// A preference reply: a string, or TRL's conversational form, one assistant message.
fn reply(obj: &serde_json::Map<String, serde_json::Value>, key: &str) -> Result<String, String> {
    match obj.get(key) {
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        Some(serde_json::Value::Array(list)) => match list.as_slice() {
            [m] if m.get("role").and_then(|r| r.as_str()) == Some("assistant") => m
                .get("content")
                .and_then(|c| c.as_str())
                .map(str::to_string)
                .ok_or_else(|| format!("{key}[0].content must be a string")),
            _ => Err(format!(
                "field `{key}` must be a string or one {{\"role\":\"assistant\",\"content\"}} \
                 message"
            )),
        },
        Some(_) => Err(format!("field `{key}` must be a string")),
        None => Err(format!("missing field `{key}`")),
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
    fn parses_chat_and_classification() {
        let c = parse(
            r#"{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"yo"}]}"#,
            Format::Chat,
        )
        .unwrap();
        assert!(matches!(&c[0], Record::Chat { messages } if messages.len() == 2));
        let k = parse(
            "{\"text\":\"a\",\"label\":\"pos\"}\n{\"text\":\"b\",\"label\":2}",
            Format::Classification,
        )
        .unwrap();
        assert_eq!(
            k[1],
            Record::Classification {
                text: "b".into(),
                label: "2".into()
            }
        );
        let err = parse("{\"messages\":[]}\n", Format::Chat).unwrap_err();
        assert_eq!(err.to_string(), "line 1: field `messages` is empty");
        let err = parse("\n{\"messages\":[{\"role\":\"user\"}]}", Format::Chat).unwrap_err();
        assert_eq!(err.to_string(), "line 2: messages[0] has no `content`");
        let err = parse("{\"text\":\"a\"}", Format::Classification).unwrap_err();
        assert_eq!(err.to_string(), "line 1: missing field `label`");
        let err = parse("{\"text\":\"a\",\"label\":1.5}", Format::Classification).unwrap_err();
        assert!(err.to_string().contains("`label`"), "{err}");
    }

    #[test]
    fn parses_preference_pairs_in_both_forms() {
        let p = parse(
            "{\"prompt\":\"q\",\"chosen\":\"a\",\"rejected\":\"b\"}\n\
             {\"messages\":[{\"role\":\"user\",\"content\":\"q\"}],\
             \"chosen\":[{\"role\":\"assistant\",\"content\":\"a\"}],\"rejected\":\"b\"}",
            Format::Preference,
        )
        .unwrap();
        let (c, r) = p[0].preference_pair().unwrap();
        assert_eq!(
            c,
            Record::PromptCompletion {
                prompt: "q".into(),
                completion: "a".into()
            }
        );
        assert!(matches!(r, Record::PromptCompletion { completion, .. } if completion == "b"));
        let (c, _) = p[1].preference_pair().unwrap();
        let Record::Chat { messages } = c else {
            panic!("{c:?}")
        };
        assert_eq!(
            (messages.len(), messages[1].role.as_str()),
            (2, "assistant")
        );
        for (line, want) in [
            (
                "{\"prompt\":\"q\",\"chosen\":\"a\"}",
                "missing field `rejected`",
            ),
            (
                "{\"chosen\":\"a\",\"rejected\":\"b\"}",
                "missing field `prompt`",
            ),
            (
                "{\"prompt\":\"q\",\"chosen\":1,\"rejected\":\"b\"}",
                "`chosen` must be a string",
            ),
            (
                "{\"prompt\":\"q\",\"chosen\":[],\"rejected\":\"b\"}",
                "`chosen` must be a string or one",
            ),
        ] {
            let err = parse(line, Format::Preference).unwrap_err().to_string();
            assert!(
                err.starts_with("line 1: ") && err.contains(want),
                "{line}: {err}"
            );
        }
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

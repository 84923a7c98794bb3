//! Chat records: rendering `{"messages":[...]}` with the model's Jinja chat template (or
//! ChatML) and marking which tokens are the assistant's, so the loss covers only them.

use std::collections::BTreeMap;

use minijinja::{Environment, Value};
use serde::{Deserialize, Serialize};

use super::tokenizer::Tokenizer;

/// One chat turn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// ChatML as a Jinja template (what [`tiny_tokenizer_config`](super::tokenizer::tiny_tokenizer_config)
/// ships, and what SmolLM2/Qwen use).
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

const NAME: &str = "chat";

/// A compiled HF chat template, rendered the way `transformers` does (`trim_blocks`,
/// `lstrip_blocks`, `bos_token`/`eos_token` in the context, `raise_exception`).
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
}

impl ChatTemplate {
    /// Compiles `source` and renders a probe conversation so a template that cannot work
    /// fails at load time, not on the first record.
    pub fn new(source: &str, bos: &str, eos: &str) -> Result<Self, String> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| e.to_string())?;
        env.set_syntax(syntax);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_template_owned(NAME, source.to_string())
            .map_err(|e| e.to_string())?;
        let t = Self {
            env,
            bos: bos.to_string(),
            eos: eos.to_string(),
        };
        let probe = [
            Message {
                role: "user".into(),
                content: "hi".into(),
            },
            Message {
                role: "assistant".into(),
                content: "hello".into(),
            },
        ];
        t.render(&probe, false)?;
        Ok(t)
    }

    /// The template's text for `messages`.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, String> {
        let msgs: Value = messages
            .iter()
            .map(|m| {
                Value::from(BTreeMap::from([
                    ("role".to_string(), Value::from(m.role.clone())),
                    ("content".to_string(), Value::from(m.content.clone())),
                ]))
            })
            .collect();
        let tmpl = self.env.get_template(NAME).map_err(|e| e.to_string())?;
        tmpl.render(minijinja::context! {
            messages => msgs,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos.clone(),
            eos_token => self.eos.clone(),
        })
        .map_err(|e| e.to_string())
    }

    /// Text segments of the whole conversation, each flagged `true` when it belongs to an
    /// assistant turn. An assistant turn's span is what rendering it adds after the
    /// generation prompt: its content and end-of-turn marker, which is what the model
    /// must learn to produce.
    pub fn segments(&self, messages: &[Message]) -> Result<Vec<(String, bool)>, String> {
        let full = self.render(messages, false)?;
        let mut out = Vec::new();
        let mut pos = 0;
        for (i, m) in messages.iter().enumerate() {
            if m.role != "assistant" {
                continue;
            }
            let start = self.render(&messages[..i], true)?;
            let end = self.render(&messages[..=i], false)?;
            if !full.starts_with(&start) || !full.starts_with(&end) || start.len() < pos {
                return Err(format!(
                    "chat template does not render message {} as a prefix of the conversation, so its tokens cannot be masked",
                    i + 1
                ));
            }
            out.push((full[pos..start.len()].to_string(), false));
            out.push((full[start.len()..end.len()].to_string(), true));
            pos = end.len();
        }
        out.push((full[pos..].to_string(), false));
        out.retain(|(s, _)| !s.is_empty());
        Ok(out)
    }
}

/// ChatML segments without a template engine (`<|im_start|>role\ncontent<|im_end|>\n`);
/// assistant content plus its `<|im_end|>` are targets.
pub fn chatml_segments(messages: &[Message]) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    for m in messages {
        out.push((format!("<|im_start|>{}\n", m.role), false));
        let assistant = m.role == "assistant";
        out.push((format!("{}<|im_end|>", m.content), assistant));
        out.push(("\n".to_string(), false));
    }
    out
}

/// Token ids and target flags for a conversation: the tokenizer's template when it has
/// one, else ChatML. BOS is prepended when the tokenizer adds one and the template did not.
pub fn encode_chat(
    messages: &[Message],
    tok: &dyn Tokenizer,
) -> Result<(Vec<u32>, Vec<bool>), String> {
    if messages.is_empty() {
        return Err("`messages` is empty".into());
    }
    if !messages.iter().any(|m| m.role == "assistant") {
        return Err("no assistant message: nothing to train on".into());
    }
    let segments = match tok.chat_template() {
        Some(t) => t.segments(messages)?,
        None => chatml_segments(messages),
    };
    let (mut ids, mut targets) = (Vec::new(), Vec::new());
    for (text, target) in segments {
        let seg = tok.encode(&text);
        targets.extend(std::iter::repeat_n(target, seg.len()));
        ids.extend(seg);
    }
    if let Some(bos) = tok.bos_id()
        && ids.first() != Some(&bos)
    {
        ids.insert(0, bos);
        targets.insert(0, false);
    }
    Ok((ids, targets))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::data::ByteTokenizer;

    fn conv() -> Vec<Message> {
        [
            ("system", "be brief"),
            ("user", "2+2?"),
            ("assistant", "4"),
            ("user", "3+3?"),
            ("assistant", "6"),
        ]
        .iter()
        .map(|(r, c)| Message {
            role: r.to_string(),
            content: c.to_string(),
        })
        .collect()
    }

    #[test]
    fn template_and_builtin_chatml_agree_and_mask_assistant_turns() {
        let t = ChatTemplate::new(CHATML_TEMPLATE, "", "").unwrap();
        let from_template = t.segments(&conv()).unwrap();
        let builtin = chatml_segments(&conv());
        let join = |s: &[(String, bool)]| s.iter().map(|(t, _)| t.as_str()).collect::<String>();
        assert_eq!(join(&from_template), join(&builtin));
        let targets: Vec<&str> = from_template
            .iter()
            .filter(|(_, t)| *t)
            .map(|(s, _)| s.as_str())
            .collect();
        // The template span also includes the newline after <|im_end|>.
        assert_eq!(targets, vec!["4<|im_end|>\n", "6<|im_end|>\n"]);
    }

    #[test]
    fn byte_chatml_targets_are_exactly_the_assistant_bytes() {
        let (ids, targets) = encode_chat(&conv(), &ByteTokenizer).unwrap();
        let picked: Vec<u8> = ids
            .iter()
            .zip(&targets)
            .filter(|(_, t)| **t)
            .map(|(i, _)| *i as u8)
            .collect();
        assert_eq!(String::from_utf8(picked).unwrap(), "4<|im_end|>6<|im_end|>");
    }

    #[test]
    fn bad_templates_fail_at_load_and_raise_exception_works() {
        assert!(ChatTemplate::new("{% for %}", "", "").is_err());
        let err = ChatTemplate::new("{{ raise_exception('no system role') }}", "", "").unwrap_err();
        assert!(err.contains("no system role"), "{err}");
        assert!(encode_chat(&conv()[..2], &ByteTokenizer).is_err());
    }
}

//! Chat templates: rendering `{"messages":[...]}` with the model's Jinja chat template (or
//! ChatML) into segments that mark which text is the assistant's, so the loss covers only it.

use std::collections::BTreeMap;

use minijinja::{Environment, Value};
use serde::{Deserialize, Serialize};

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

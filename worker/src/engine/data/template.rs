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

/// Instructions one render may run. A chat template comes with the model, so it is untrusted
/// code: HF templates spend a few dozen instructions per message, so this allows conversations
/// of thousands of turns while a runaway loop fails in well under a second.
pub const TEMPLATE_FUEL: u64 = 1_000_000;
/// Most bytes one render may produce (far beyond any training record; a template's own
/// output is bounded too, not just its instruction count, since one `'x' * n` is one step).
pub const MAX_RENDER_BYTES: usize = 32 << 20;

/// A writer that refuses to grow past [`MAX_RENDER_BYTES`].
struct Bounded(Vec<u8>);

impl std::io::Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.len().saturating_add(buf.len()) > MAX_RENDER_BYTES {
            return Err(std::io::Error::other("output limit"));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A render failure, saying it was the model's chat template and which limit it hit.
fn describe(e: &minijinja::Error) -> String {
    match e.kind() {
        minijinja::ErrorKind::OutOfFuel => format!(
            "the model's chat template ran more than {TEMPLATE_FUEL} instructions for one \
             conversation (a runaway loop?)"
        ),
        minijinja::ErrorKind::WriteFailure => format!(
            "the model's chat template rendered more than {MAX_RENDER_BYTES} bytes for one \
             conversation"
        ),
        _ => format!("the model's chat template failed: {e}"),
    }
}

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
        env.set_fuel(Some(TEMPLATE_FUEL));
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
            .map_err(|e| format!("the model's chat template does not compile: {e}"))?;
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
        let tmpl = self.env.get_template(NAME).map_err(|e| describe(&e))?;
        let mut out = Bounded(Vec::new());
        tmpl.render_captured_to(
            minijinja::context! {
                messages => msgs,
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos.clone(),
                eos_token => self.eos.clone(),
            },
            &mut out,
        )
        .map_err(|e| describe(&e))?;
        String::from_utf8(out.0)
            .map_err(|_| "the model's chat template rendered invalid UTF-8".into())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn chat() -> Vec<Message> {
        vec![
            Message {
                role: "user".into(),
                content: "hi".into(),
            },
            Message {
                role: "assistant".into(),
                content: "hello".into(),
            },
        ]
    }

    #[test]
    fn a_chat_template_cannot_run_forever_or_render_without_bound() {
        for (what, source, says) in [
            (
                "nested loops",
                "{% for i in range(100000) %}{% for j in range(100000) %}{{ j }}{% endfor %}{% endfor %}",
                "instructions",
            ),
            (
                "huge output",
                "{{ 'x' * 20000000 }}{{ 'y' * 20000000 }}",
                "bytes",
            ),
        ] {
            let started = std::time::Instant::now();
            let err = ChatTemplate::new(source, "", "").expect_err(what);
            assert!(
                started.elapsed() < std::time::Duration::from_secs(10),
                "{what}: {:?}",
                started.elapsed()
            );
            assert!(
                err.contains("chat template") && err.contains(says),
                "{what}: {err}"
            );
        }
        // A real template with a long conversation is well within the fuel.
        let t = ChatTemplate::new(CHATML_TEMPLATE, "", "").unwrap();
        let long: Vec<Message> = (0..2_000).flat_map(|_| chat()).collect();
        assert!(t.render(&long, false).unwrap().len() > 50_000);
    }
}

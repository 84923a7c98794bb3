//! Conversations as training examples: the template's segments, tokenized, with the
//! assistant turns as targets.

use super::template::{Message, chatml_segments};
use super::tokenizer::Tokenizer;

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
    use crate::engine::data::template::*;

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

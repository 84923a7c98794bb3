//! Text and JSON renderings of API messages.

use serde_json::{Value, json};
use tuna_client::pb;

use super::Output;

/// Text from the server (failure messages, event messages, errors) made safe for a terminal:
/// control characters other than newline and tab (ESC starts ANSI sequences that recolour,
/// retitle or clear the screen) and bidi/zero-width characters are shown escaped (`\u{1b}`).
/// JSON output needs none of this: serde escapes control characters itself.
pub fn clean(text: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| {
        (c.is_control() && c != '\n' && c != '\t')
            || matches!(
                c,
                '\u{061c}'
                    | '\u{200b}'..='\u{200f}'
                    | '\u{202a}'..='\u{202e}'
                    | '\u{2060}'..='\u{2069}'
                    | '\u{feff}'
            )
    };
    if !text.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if unsafe_char(c) {
            out.push_str(&c.escape_unicode().to_string());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

pub fn print_json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

fn ts(t: &Option<tuna_proto::Timestamp>) -> Value {
    t.as_ref()
        .map_or(Value::Null, |t| json!(tuna_proto::ts_to_ms(t)))
}

/// Lowercase state name without the proto prefix (`queued`, `running`, ...).
pub fn state_name(state: pb::JobState) -> String {
    state
        .as_str_name()
        .trim_start_matches("JOB_STATE_")
        .to_ascii_lowercase()
}

pub fn job_json(j: &pb::Job) -> Value {
    let spec = j.spec.clone().unwrap_or_default();
    let method = spec.method.clone().unwrap_or_default();
    let h = spec.hyperparameters.clone().unwrap_or_default();
    json!({
        "id": j.id,
        "state": state_name(j.state()),
        "attempt": j.attempt,
        "max_attempts": j.max_attempts,
        "priority": spec.priority,
        "base_model": spec.base_model,
        "training_file": spec.training_file,
        "validation_file": spec.validation_file,
        "method": method.r#type,
        "lora_r": method.lora.as_ref().and_then(|l| l.r),
        "learning_rate": h.learning_rate,
        "labels": spec.labels,
        "created_at_ms": ts(&j.created_at),
        "started_at_ms": ts(&j.started_at),
        "finished_at_ms": ts(&j.finished_at),
        "run_after_ms": ts(&j.run_after),
        "failure": j.failure.as_ref().map(|f| json!({
            "kind": f.kind().as_str_name().trim_start_matches("FAILURE_KIND_").to_ascii_lowercase(),
            "message": f.message,
        })),
        "sweep_id": j.sweep_id,
        "replicas": spec.replicas.max(1),
        "parent_job_id": j.parent_job_id,
        "shard_index": (!j.parent_job_id.is_empty()).then_some(j.shard_index),
        "task": if spec.task.is_empty() { "causal_lm" } else { spec.task.as_str() },
        "last_seq": j.last_seq,
        "request_id": j.request_id,
        // The whole spec with every default explicit, as a spec file would write it.
        "spec": j
            .spec
            .as_ref()
            .and_then(|s| tuna_client::spec_file::to_json(s, "tuna.v1.JobSpec").ok()),
    })
}

pub fn job(out: Output, j: &pb::Job) {
    match out {
        Output::Json => print_json(&job_json(j)),
        Output::Text => {
            let spec = j.spec.clone().unwrap_or_default();
            let method = match (spec.task.as_str(), spec.method, spec.replicas) {
                ("merge", _, _) => "merge".to_string(),
                (_, m, n) if n > 1 => format!("{} × {n} shards", m.unwrap_or_default().r#type),
                (_, m, _) => m.map(|m| m.r#type).unwrap_or_default(),
            };
            let method = if j.parent_job_id.is_empty() {
                method
            } else {
                format!("{method} (shard {} of {})", j.shard_index, j.parent_job_id)
            };
            let failure = j
                .failure
                .as_ref()
                .map(|f| format!("  failure: {}", clean(&f.message)))
                .unwrap_or_default();
            println!(
                "{}  {:<10}  attempt {}/{}  {} on {}  priority {}{}",
                j.id,
                state_name(j.state()),
                j.attempt,
                j.max_attempts,
                method,
                spec.base_model,
                spec.priority,
                failure
            );
        }
    }
}

pub fn file_json(f: &pb::File) -> Value {
    json!({
        "id": f.id,
        "name": f.name,
        "purpose": f.purpose().as_str_name().trim_start_matches("FILE_PURPOSE_").to_ascii_lowercase(),
        "format": f.format().as_str_name().trim_start_matches("DATASET_FORMAT_").to_ascii_lowercase(),
        "size_bytes": f.size_bytes,
        "sha256": f.sha256,
        "line_count": f.line_count,
        "created_at_ms": ts(&f.created_at),
    })
}

pub fn file(out: Output, f: &pb::File) {
    match out {
        Output::Json => print_json(&file_json(f)),
        Output::Text => println!(
            "{}  {}  {} bytes  {} records  sha256 {}",
            f.id, f.name, f.size_bytes, f.line_count, f.sha256
        ),
    }
}

pub fn update_json(u: &pb::JobUpdate) -> Value {
    match &u.kind {
        Some(pb::job_update::Kind::Event(e)) => json!({
            "seq": u.seq,
            "type": "event",
            "kind": e.kind,
            "state": state_name(e.state()),
            "attempt": e.attempt,
            "message": e.message,
            "time_ms": ts(&e.time),
        }),
        Some(pb::job_update::Kind::Metrics(m)) => json!({
            "seq": u.seq,
            "type": "metrics",
            "step": m.step,
            "attempt": m.attempt,
            "values": m.values,
            "time_ms": ts(&m.time),
        }),
        None => json!({ "seq": u.seq }),
    }
}

pub fn update(out: Output, u: &pb::JobUpdate) {
    match out {
        // One JSON object per line, so pipelines can stream it.
        Output::Json => println!("{}", update_json(u)),
        Output::Text => match &u.kind {
            Some(pb::job_update::Kind::Event(e)) => println!(
                "[{:>5}] {:<16} {:<10} {}",
                u.seq,
                e.kind,
                state_name(e.state()),
                clean(&e.message)
            ),
            Some(pb::job_update::Kind::Metrics(m)) => {
                let mut values: Vec<_> = m.values.iter().collect();
                values.sort_by(|a, b| a.0.cmp(b.0));
                let text: Vec<String> = values.iter().map(|(k, v)| format!("{k}={v:.5}")).collect();
                println!("[{:>5}] step {:<8} {}", u.seq, m.step, text.join(" "));
            }
            None => {}
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ansi_escapes_and_bidi_from_the_server_never_reach_the_terminal() {
        let hostile = "\u{1b}[2J\u{1b}]0;pwned\u{7}line 2\r: bad\u{202e}txt\nnext\tcol";
        let shown = clean(hostile);
        assert!(
            !shown
                .chars()
                .any(|c| (c.is_control() && c != '\n' && c != '\t') || c == '\u{202e}'),
            "{shown:?}"
        );
        assert_eq!(
            shown,
            "\\u{1b}[2J\\u{1b}]0;pwned\\u{7}line 2\\u{d}: bad\\u{202e}txt\nnext\tcol"
        );
        assert!(matches!(
            clean("plain é 日本"),
            std::borrow::Cow::Borrowed(_)
        ));
    }
}

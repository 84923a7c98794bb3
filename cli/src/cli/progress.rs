//! The live view of `tuna jobs watch` on a terminal: a progress bar with step/total, loss,
//! eval loss, tokens/s and ETA; events print above it. Off a terminal, plain lines instead.

use std::collections::BTreeMap;
use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};
use tuna_client::pb;
use tuna_spec::metrics;

use super::{Output, output};

/// Renders a job's updates.
pub struct View {
    out: Output,
    bar: Option<ProgressBar>,
    last: BTreeMap<String, f64>,
}

impl View {
    /// A bar when printing text to a terminal; `total` steps when the spec bounds them.
    pub fn new(out: Output, total: Option<u64>) -> Self {
        let bar = (out == Output::Text && std::io::stdout().is_terminal()).then(|| {
            let bar = ProgressBar::new(total.unwrap_or(0));
            let style = ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} steps  {msg}  ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar
        });
        Self {
            out,
            bar,
            last: BTreeMap::new(),
        }
    }

    pub fn update(&mut self, u: &pb::JobUpdate) {
        let Some(bar) = &self.bar else {
            output::update(self.out, u);
            return;
        };
        match &u.kind {
            Some(pb::job_update::Kind::Metrics(m)) => {
                for (k, v) in &m.values {
                    self.last.insert(k.clone(), *v);
                }
                if let Some(total) = self.last.get(metrics::TOTAL_STEPS) {
                    bar.set_length(*total as u64);
                }
                bar.set_position(m.step.max(0) as u64);
                let show = |k: &str, label: &str, prec: usize| {
                    self.last
                        .get(k)
                        .map(|v| format!("{label} {v:.prec$}"))
                        .unwrap_or_default()
                };
                let msg = [
                    show("loss", "loss", 4),
                    show(metrics::EVAL_LOSS, "eval", 4),
                    show(metrics::TOKENS_PER_S, "tok/s", 0),
                ]
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join("  ");
                bar.set_message(msg);
            }
            Some(pb::job_update::Kind::Event(e)) => {
                bar.println(format!(
                    "[{:>5}] {:<16} {:<10} {}",
                    u.seq,
                    e.kind,
                    output::state_name(e.state()),
                    output::clean(&e.message)
                ));
            }
            None => {}
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

//! The sweep event log's encoding: one row per call made on the search algorithm, so a new
//! controller replays exactly what the last one did.

use serde::{Deserialize, Serialize};

use crate::search::{Event, Observation};

#[derive(Serialize, Deserialize)]
struct Suggest {
    n: usize,
}

/// Non-finite numbers are `null` (JSON has no NaN); they decode to NaN, which every algorithm
/// treats as a diverged run.
#[derive(Serialize, Deserialize)]
struct Observe {
    trial: u64,
    objective: Option<f64>,
    cost: f64,
    failed: bool,
    resource: Option<f64>,
}

#[derive(Serialize, Deserialize)]
struct Report {
    trial: u64,
    step: f64,
    value: Option<f64>,
}

fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

/// `(kind, payload)` of an event.
pub fn encode(event: &Event) -> (String, String) {
    let (kind, json) = match event {
        Event::Suggest(n) => ("suggest", serde_json::to_string(&Suggest { n: *n })),
        Event::Observe(trial, o) => (
            "observe",
            serde_json::to_string(&Observe {
                trial: *trial,
                objective: finite(o.objective),
                cost: if o.cost.is_finite() { o.cost } else { 0.0 },
                failed: o.failed,
                resource: o.resource.and_then(finite),
            }),
        ),
        Event::Report { trial, step, value } => (
            "report",
            serde_json::to_string(&Report {
                trial: *trial,
                step: *step,
                value: finite(*value),
            }),
        ),
    };
    // These plain structs always serialize; keep the kind even if one ever did not.
    (
        kind.to_string(),
        json.unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}")),
    )
}

/// Decodes a stored event.
pub fn decode(kind: &str, payload: &str) -> Result<Event, String> {
    let bad = |e: serde_json::Error| format!("{kind} event {payload:?}: {e}");
    Ok(match kind {
        "suggest" => Event::Suggest(serde_json::from_str::<Suggest>(payload).map_err(bad)?.n),
        "observe" => {
            let o: Observe = serde_json::from_str(payload).map_err(bad)?;
            Event::Observe(
                o.trial,
                Observation {
                    objective: o.objective.unwrap_or(f64::NAN),
                    cost: o.cost,
                    failed: o.failed,
                    resource: o.resource,
                    reports: Vec::new(),
                },
            )
        }
        "report" => {
            let r: Report = serde_json::from_str(payload).map_err(bad)?;
            Event::Report {
                trial: r.trial,
                step: r.step,
                value: r.value.unwrap_or(f64::NAN),
            }
        }
        other => return Err(format!("unknown sweep event kind {other:?}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_bit_exactly() {
        let events = [
            Event::Suggest(3),
            Event::Observe(
                2,
                Observation {
                    objective: 0.1 + 0.2,
                    cost: 12.345678901234567,
                    failed: false,
                    resource: Some(40.0),
                    reports: Vec::new(),
                },
            ),
            Event::Report {
                trial: 1,
                step: 8.0,
                value: 1.234_567_890_123_456_7,
            },
        ];
        for e in &events {
            let (kind, payload) = encode(e);
            assert_eq!(&decode(&kind, &payload).unwrap(), e);
        }
    }

    #[test]
    fn non_finite_values_survive_as_nan() {
        let (kind, payload) = encode(&Event::Report {
            trial: 0,
            step: 1.0,
            value: f64::INFINITY,
        });
        match decode(&kind, &payload).unwrap() {
            Event::Report { value, .. } => assert!(value.is_nan()),
            other => panic!("{other:?}"),
        }
        assert!(decode("bogus", "{}").is_err());
        assert!(decode("suggest", "{\"n\":").is_err());
    }
}

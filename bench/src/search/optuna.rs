//! Optuna as an anchor: `bench/anchors/optuna_anchor.py` serves ask/tell over a pipe (one JSON
//! object a line), so Optuna's TPE (and TPE + SuccessiveHalving) run inside *our* simulator on
//! exactly the same problems, noise, budgets and regret computation as our methods.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use serde_json::{Value as Json, json};
use tuna_server::search::{
    Decision, Domain, Observation, Params, SearchError, Searcher, Space, Suggestion, Transform,
    TrialId, Value,
};

/// Path of the anchor script.
pub fn script() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/anchors/optuna_anchor.py").to_string()
}

/// True when `python3 -c "import optuna"` works.
pub fn available() -> bool {
    Command::new("python3")
        .args(["-c", "import optuna"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// One long-lived Python process serving many studies.
pub struct Client {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Client {
    pub fn start() -> Option<Self> {
        let mut child = Command::new("python3")
            .arg(script())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .ok()?;
        let stdin = child.stdin.take()?;
        let stdout = BufReader::new(child.stdout.take()?);
        Some(Self {
            child,
            stdin,
            stdout,
        })
    }

    fn call(&mut self, msg: Json) -> Option<Json> {
        writeln!(self.stdin, "{msg}").ok()?;
        self.stdin.flush().ok()?;
        let mut line = String::new();
        self.stdout.read_line(&mut line).ok()?;
        serde_json::from_str(&line).ok()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "{}", json!({"op": "quit"}));
        let _ = self.child.wait();
    }
}

fn space_json(space: &Space) -> Json {
    Json::Array(
        space
            .params()
            .iter()
            .map(|p| match &p.domain {
                Domain::Real(s) => json!({
                    "name": p.name,
                    "type": if s.integer { "int" } else { "float" },
                    "low": s.min,
                    "high": s.max,
                    // Optuna has no logit distribution: such parameters are searched linearly.
                    "log": matches!(s.transform, Transform::Log { .. }),
                }),
                Domain::Categorical(c) => {
                    json!({"name": p.name, "type": "categorical", "choices": c})
                }
            })
            .collect(),
    )
}

/// One Optuna study behind the [`Searcher`] trait.
pub struct Study<'a> {
    client: &'a mut Client,
    id: u64,
    /// Full resource, to map report resources onto Optuna's integer steps (1..=81).
    max_resource: f64,
    next: TrialId,
    remote: std::collections::BTreeMap<TrialId, i64>,
    last: std::collections::BTreeMap<TrialId, f64>,
}

impl<'a> Study<'a> {
    pub fn new(
        client: &'a mut Client,
        id: u64,
        space: &Space,
        seed: u64,
        pruner: bool,
        max_resource: f64,
    ) -> Option<Self> {
        let msg = json!({"op": "new", "study": id, "seed": seed, "space": space_json(space),
            "pruner": pruner, "min_resource": 3, "eta": 3});
        client.call(msg)?;
        Some(Self {
            client,
            id,
            max_resource,
            next: 0,
            remote: Default::default(),
            last: Default::default(),
        })
    }
}

impl Searcher for Study<'_> {
    fn suggest(&mut self, n: usize) -> Result<Vec<Suggestion>, SearchError> {
        let mut out = Vec::new();
        for _ in 0..n {
            let Some(r) = self.client.call(json!({"op": "ask", "study": self.id})) else {
                break;
            };
            let mut params = Params::new();
            if let Some(map) = r["params"].as_object() {
                for (k, v) in map {
                    let v = match v {
                        Json::String(s) => Value::Choice(s.clone()),
                        other => Value::Real(other.as_f64().unwrap_or(f64::NAN)),
                    };
                    params.insert(k.clone(), v);
                }
            }
            let trial = self.next;
            self.next += 1;
            self.remote.insert(trial, r["trial"].as_i64().unwrap_or(-1));
            out.push(Suggestion {
                trial,
                params,
                budget: None,
                resume: false,
            });
        }
        Ok(out)
    }

    fn observe(&mut self, trial: TrialId, obs: &Observation) -> Result<(), SearchError> {
        let remote = *self
            .remote
            .get(&trial)
            .ok_or(SearchError::UnknownTrial(trial))?;
        let pruned = obs
            .resource
            .is_some_and(|r| r < self.max_resource * (1.0 - 1e-9));
        let state = if obs.failed {
            "fail"
        } else if pruned {
            "pruned"
        } else {
            "complete"
        };
        let value = if obs.failed {
            Json::Null
        } else {
            json!(obs.objective)
        };
        self.client
            .call(json!({"op": "tell", "study": self.id, "trial": remote,
            "value": value, "state": state}));
        Ok(())
    }

    fn should_stop(&mut self, trial: TrialId, step: f64, value: f64) -> Decision {
        let Some(&remote) = self.remote.get(&trial) else {
            return Decision::Continue;
        };
        self.last.insert(trial, value);
        let step = ((step / self.max_resource) * 81.0).round().max(1.0) as i64;
        let r = self
            .client
            .call(json!({"op": "report", "study": self.id, "trial": remote,
            "step": step, "value": value}));
        if r.is_some_and(|r| r["prune"].as_bool() == Some(true)) {
            Decision::Stop
        } else {
            Decision::Continue
        }
    }
}

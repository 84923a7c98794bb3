//! The Python anchors: `bench/src/search/anchor.py` serves ask/tell over a pipe (one JSON object
//! a line), so Optuna's TPE (and TPE + SuccessiveHalving), Optuna's GP sampler and the original
//! CARBS (imbue-ai's Python package, when the anchor Python can import it) run inside *our*
//! simulator on exactly the same problems, noise, budgets and regret computation as our methods.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

use serde_json::{Value as Json, json};
use tuna_server::search::{
    Decision, Domain, Observation, Params, SearchError, Searcher, Space, Suggestion, Transform,
    TrialId, Value,
};

/// Path of the anchor script.
pub fn script() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/src/search/anchor.py").to_string()
}

/// The Optuna release the anchor numbers were taken with; a provisioned venv gets exactly it.
const OPTUNA_PIN: &str = "optuna==5.0.0";

/// Where the bench provisions its own Optuna (inside the workspace's `target/`).
fn venv() -> PathBuf {
    let bench = Path::new(env!("CARGO_MANIFEST_DIR"));
    bench.parent().unwrap_or(bench).join("target/anchor-venv")
}

fn imports_optuna(python: &Path) -> bool {
    Command::new(python)
        .args(["-c", "import optuna"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A Python that can import Optuna: `$TUNA_BENCH_PYTHON`, the bench's own venv, or `python3`
/// on PATH. With `install`, and none of them has it, Optuna (pinned) is installed once into
/// `target/anchor-venv` from PyPI, so the anchor comparison needs no manual setup.
pub fn python(install: bool) -> Result<PathBuf, String> {
    let own = venv().join("bin/python3");
    let mut candidates: Vec<PathBuf> = std::env::var_os("TUNA_BENCH_PYTHON")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    candidates.extend([own.clone(), PathBuf::from("python3")]);
    if let Some(p) = candidates.iter().find(|p| imports_optuna(p)) {
        return Ok(p.clone());
    }
    if !install {
        return Err(
            "Optuna is not importable (allow --install-optuna true, or set TUNA_BENCH_PYTHON)"
                .into(),
        );
    }
    let started = Instant::now();
    let run = |cmd: &mut Command| -> Result<(), String> {
        let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            let err = String::from_utf8_lossy(&out.stderr);
            let last = err
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            Err(format!("{cmd:?} failed: {last}"))
        }
    };
    println!(
        "optuna: not importable; installing {OPTUNA_PIN} into {} (once)",
        venv().display()
    );
    run(Command::new("python3").arg("-m").arg("venv").arg(venv()))?;
    run(Command::new(&own).args(["-m", "pip", "install", "--quiet", OPTUNA_PIN]))?;
    if !imports_optuna(&own) {
        return Err(format!("{} still cannot import optuna", own.display()));
    }
    println!(
        "optuna: installed in {:.1}s (not counted in the bench's time)",
        started.elapsed().as_secs_f64()
    );
    Ok(own)
}

/// One long-lived Python process serving many studies.
pub struct Client {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Client {
    pub fn start(python: &Path) -> Option<Self> {
        let mut child = Command::new(python)
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

    /// Which anchors this Python can run: (GP sampler, original CARBS), with the reason for
    /// each one it cannot.
    pub fn probe(&mut self) -> Anchors {
        let r = self.call(json!({"op": "probe"})).unwrap_or(Json::Null);
        let why = |k: &str| {
            r["why"][k]
                .as_str()
                .unwrap_or("the anchor did not answer")
                .to_string()
        };
        Anchors {
            gp: if r["gp"].as_bool() == Some(true) {
                Ok(())
            } else {
                Err(why("gp"))
            },
            carbs: if r["carbs"].as_bool() == Some(true) {
                Ok(())
            } else {
                Err(why("carbs"))
            },
        }
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

/// Which optional anchors the Python can run (`Err` holds the reason it cannot).
pub struct Anchors {
    pub gp: Result<(), String>,
    pub carbs: Result<(), String>,
}

/// The anchor samplers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sampler {
    Tpe,
    Gp,
    /// The original CARBS; it gets the space's transforms, scales and centres as CARBS-rs does.
    Carbs,
}

impl Sampler {
    fn name(self) -> &'static str {
        match self {
            Sampler::Tpe => "tpe",
            Sampler::Gp => "gp",
            Sampler::Carbs => "carbs",
        }
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
                    "transform": match s.transform {
                        Transform::Linear => "linear",
                        Transform::Log { .. } => "log",
                        Transform::Logit => "logit",
                    },
                    "scale": s.scale,
                    "rounding": s.rounding,
                    "center": p.center_value().as_f64(),
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
        sampler: Sampler,
        seed: u64,
        pruner: bool,
        max_resource: f64,
    ) -> Option<Self> {
        let msg = json!({"op": "new", "study": id, "sampler": sampler.name(), "seed": seed,
            "space": space_json(space), "pruner": pruner, "min_resource": 3, "eta": 3});
        let r = client.call(msg)?;
        if r.get("error").is_some() {
            return None;
        }
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
            if r.get("error").is_some() {
                break;
            }
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
            "value": value, "cost": obs.cost, "state": state}));
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

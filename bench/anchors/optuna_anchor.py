#!/usr/bin/env python3
"""Optuna anchor for `tuna-bench search`: serves Optuna ask/tell over stdin/stdout.

One JSON object per line in, one per line out. The Rust simulator owns the problems, the
noise, the budgets and the regret computation; this process only runs Optuna's samplers and
pruners, so Optuna is compared on exactly the same runs as our methods.

  {"op":"new","study":ID,"seed":S,"space":[...],"pruner":bool,"min_resource":3,"eta":3}
  {"op":"ask","study":ID}                       -> {"trial":N,"params":{...}}
  {"op":"report","study":ID,"trial":N,"step":K,"value":V} -> {"prune":bool}
  {"op":"tell","study":ID,"trial":N,"value":V|null,"state":"complete"|"fail"|"pruned"}
  {"op":"quit"}

Samplers: TPE (default settings, seeded); with "pruner": SuccessiveHalvingPruner
(min_resource, reduction_factor = eta).
"""
import json
import sys

import optuna

optuna.logging.set_verbosity(optuna.logging.WARNING)

studies = {}
trials = {}


def suggest(trial, p):
    if p["type"] == "categorical":
        return trial.suggest_categorical(p["name"], p["choices"])
    if p["type"] == "int":
        return trial.suggest_int(p["name"], int(round(p["low"])), int(round(p["high"])), log=p["log"])
    return trial.suggest_float(p["name"], p["low"], p["high"], log=p["log"])


def handle(msg):
    op = msg["op"]
    if op == "new":
        pruner = (
            optuna.pruners.SuccessiveHalvingPruner(
                min_resource=msg.get("min_resource", 1), reduction_factor=msg.get("eta", 3)
            )
            if msg.get("pruner")
            else optuna.pruners.NopPruner()
        )
        study = optuna.create_study(
            direction="minimize", sampler=optuna.samplers.TPESampler(seed=msg["seed"]), pruner=pruner
        )
        studies[msg["study"]] = (study, msg["space"])
        return {"ok": True}
    study, space = studies[msg["study"]]
    if op == "ask":
        t = study.ask()
        params = {p["name"]: suggest(t, p) for p in space}
        trials[(msg["study"], t.number)] = t
        return {"trial": t.number, "params": params}
    t = trials[(msg["study"], msg["trial"])]
    if op == "report":
        t.report(msg["value"], msg["step"])
        return {"prune": bool(t.should_prune())}
    if op == "tell":
        state = {
            "complete": optuna.trial.TrialState.COMPLETE,
            "fail": optuna.trial.TrialState.FAIL,
            "pruned": optuna.trial.TrialState.PRUNED,
        }[msg["state"]]
        value = msg.get("value") if state == optuna.trial.TrialState.COMPLETE else None
        study.tell(t, value, state=state)
        del trials[(msg["study"], msg["trial"])]
        return {"ok": True}
    return {"error": "unknown op"}


def main():
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        msg = json.loads(line)
        if msg.get("op") == "quit":
            break
        try:
            out = handle(msg)
        except Exception as e:  # keep serving; the Rust side treats errors as "no suggestion"
            out = {"error": str(e)}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()

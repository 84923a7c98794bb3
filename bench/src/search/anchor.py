#!/usr/bin/env python3
"""Anchors for `tuna-bench search`: Optuna (TPE, GP) and the original CARBS behind ask/tell.

One JSON object per line in, one per line out. The Rust simulator owns the problems, the
noise, the budgets and the regret computation; this process only runs the anchor's sampler,
so every anchor is compared on exactly the same runs as our methods.

  {"op":"probe"}                                -> {"optuna":bool,"gp":bool,"carbs":bool,"why":{..}}
  {"op":"new","study":ID,"sampler":"tpe"|"gp"|"carbs","seed":S,"space":[...],
   "pruner":bool,"min_resource":3,"eta":3}
  {"op":"ask","study":ID}                       -> {"trial":N,"params":{...}}
  {"op":"report","study":ID,"trial":N,"step":K,"value":V} -> {"prune":bool}
  {"op":"tell","study":ID,"trial":N,"value":V|null,"cost":C,"state":"complete"|"fail"|"pruned"}
  {"op":"quit"}

Optuna samplers run with default settings, seeded; with "pruner": SuccessiveHalvingPruner
(min_resource, reduction_factor = eta). "carbs" is imbue-ai's CARBS (its defaults, minimising,
no wandb, no checkpoints) on the space's own transforms, scales and centres.
"""
import json
import sys

studies = {}
trials = {}


def probe():
    why = {}
    ok = {"optuna": False, "gp": False, "carbs": False}
    try:
        import optuna  # noqa: F401

        ok["optuna"] = True
        try:
            import scipy  # noqa: F401
            import torch  # noqa: F401

            ok["gp"] = True
        except Exception as e:  # GPSampler needs torch and scipy
            why["gp"] = f"GPSampler needs torch and scipy: {e}"
    except Exception as e:
        why["optuna"] = str(e)
    try:
        import carbs  # noqa: F401

        ok["carbs"] = True
    except Exception as e:
        why["carbs"] = f"cannot import carbs: {e}"
    return {**ok, "why": why}


def suggest(trial, p):
    if p["type"] == "categorical":
        return trial.suggest_categorical(p["name"], p["choices"])
    if p["type"] == "int":
        return trial.suggest_int(p["name"], int(round(p["low"])), int(round(p["high"])), log=p["log"])
    return trial.suggest_float(p["name"], p["low"], p["high"], log=p["log"])


class CarbsStudy:
    """The original CARBS; trials are numbered here, suggestions tracked by CARBS's uuid."""

    def __init__(self, seed, space):
        import logging

        from carbs import CARBS, CARBSParams, LinearSpace, LogitSpace, LogSpace, Param
        from loguru import logger

        logger.remove()
        logging.getLogger("wandb").setLevel(logging.ERROR)
        params = []
        for p in space:
            kind = {"linear": LinearSpace, "log": LogSpace, "logit": LogitSpace}[p["transform"]]
            extra = {"base": 10} if p["transform"] == "log" else {}
            params.append(
                Param(
                    name=p["name"],
                    space=kind(
                        min=p["low"],
                        max=p["high"],
                        scale=p["scale"],
                        is_integer=p["type"] == "int",
                        rounding_factor=int(p.get("rounding", 1)),
                        **extra,
                    ),
                    search_center=p["center"],
                )
            )
        cfg = CARBSParams(
            better_direction_sign=-1,
            seed=seed,
            is_wandb_logging_enabled=False,
            is_saved_on_every_observation=False,
        )
        self.carbs = CARBS(cfg, params)
        self.pending = {}
        self.next = 0

    def ask(self):
        out = self.carbs.suggest()
        s = dict(out.suggestion)
        n = self.next
        self.next += 1
        self.pending[n] = s
        params = {k: float(v) for k, v in s.items() if k != "suggestion_uuid"}
        return {"trial": n, "params": params}

    def tell(self, n, value, cost, state):
        from carbs import ObservationInParam

        s = self.pending.pop(n)
        failed = state == "fail" or value is None
        self.carbs.observe(
            ObservationInParam(
                input=s, output=0.0 if failed else float(value), cost=float(cost), is_failure=failed
            )
        )


def handle(msg):
    op = msg["op"]
    if op == "probe":
        return probe()
    if op == "new":
        sampler = msg.get("sampler", "tpe")
        if sampler == "carbs":
            studies[msg["study"]] = (CarbsStudy(msg["seed"], msg["space"]), msg["space"])
            return {"ok": True}
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        pruner = (
            optuna.pruners.SuccessiveHalvingPruner(
                min_resource=msg.get("min_resource", 1), reduction_factor=msg.get("eta", 3)
            )
            if msg.get("pruner")
            else optuna.pruners.NopPruner()
        )
        s = (
            optuna.samplers.GPSampler(seed=msg["seed"])
            if sampler == "gp"
            else optuna.samplers.TPESampler(seed=msg["seed"])
        )
        study = optuna.create_study(direction="minimize", sampler=s, pruner=pruner)
        studies[msg["study"]] = (study, msg["space"])
        return {"ok": True}
    study, space = studies[msg["study"]]
    if isinstance(study, CarbsStudy):
        if op == "ask":
            return study.ask()
        if op == "report":
            return {"prune": False}
        if op == "tell":
            study.tell(msg["trial"], msg.get("value"), msg.get("cost", 1.0), msg["state"])
            return {"ok": True}
        return {"error": "unknown op"}
    import optuna

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
            out = {"error": f"{type(e).__name__}: {e}"}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()

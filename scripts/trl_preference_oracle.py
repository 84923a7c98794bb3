"""Reference numbers for Tuna's preference losses, from TRL's own code (run once, by hand).

Not run in CI: it needs torch and trl (a scratch venv: `pip install torch==2.15.0 trl==1.16.0`).
It feeds fixed per-sequence log-probabilities through TRL 1.16's `DPOTrainer._compute_loss`
(loss_type "sigmoid" and "ipo"; the model and the reference are stand-ins that return the given
per-token log-probabilities) and `ORPOTrainer.odds_ratio_loss`, and prints the JSON that
`worker/src/engine/tests/trl_preference.json` holds; `engine::tests::preference` checks Tuna's
losses against it.

    python scripts/trl_preference_oracle.py > worker/src/engine/tests/trl_preference.json

With a file argument, the pairs come from that file instead (the tiny model's log-probabilities,
written by `TUNA_TRL_INPUTS=pairs.json cargo test -p tuna-worker --lib
tiny_model_losses_equal_trls`), and the output also holds ORPO's full loss: the chosen
replies' token-mean NLL (ORPOTrainer's cross-entropy over the chosen completion tokens) minus
the mean of `odds_ratio_loss`:

    python scripts/trl_preference_oracle.py pairs.json > worker/src/engine/tests/trl_preference_tiny.json
"""

import collections
import json
import os
import sys
import types

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import torch  # noqa: E402
import trl  # noqa: E402
from trl import DPOTrainer  # noqa: E402
from trl.experimental.orpo import ORPOTrainer  # noqa: E402

# Pairs: summed reply log-probabilities (policy and reference) and reply lengths in tokens.
PAIRS = {
    "chosen": [-10.0, -3.5, -7.25],
    "rejected": [-12.0, -2.0, -9.5],
    "ref_chosen": [-11.0, -3.0, -8.0],
    "ref_rejected": [-11.0, -2.5, -8.75],
    "chosen_len": [4, 2, 5],
    "rejected_len": [3, 2, 6],
}
BETA = 0.3


class _Out:
    def __init__(self, lp):
        self.log_probs = lp
        self.loss = None
        self.logits = None
        self.entropy = torch.zeros_like(lp)
        self.mean_logits = torch.zeros_like(lp)
        self.is_top1 = torch.zeros_like(lp, dtype=torch.bool)


class _Model(torch.nn.Module):
    """Returns fixed per-token log-probabilities, whatever the input."""

    is_gradient_checkpointing = False

    def __init__(self, lp):
        super().__init__()
        self.lp = lp

    def forward(self, **_):
        return _Out(self.lp)


def _per_token(sums, lens, width):
    out = torch.zeros(len(sums), width, dtype=torch.float64)
    for i, (s, n) in enumerate(zip(sums, lens)):
        out[i, :n] = s / n
    return out


def dpo_loss(loss_type):
    p = PAIRS
    lens = p["chosen_len"] + p["rejected_len"]
    width = max(lens)
    policy = _per_token(p["chosen"] + p["rejected"], lens, width)
    ref = _per_token(p["ref_chosen"] + p["ref_rejected"], lens, width)
    mask = torch.zeros(len(lens), width + 1, dtype=torch.long)
    for i, n in enumerate(lens):
        mask[i, 1 : n + 1] = 1
    model = _Model(policy)
    metrics = {"train": collections.defaultdict(list), "eval": collections.defaultdict(list)}
    self = types.SimpleNamespace(
        model=model,
        ref_model=_Model(ref),
        accelerator=types.SimpleNamespace(
            device="cpu", unwrap_model=lambda m: m, gather_for_metrics=lambda x: x, gather=lambda x: x
        ),
        aux_loss_enabled=False,
        ld_alpha=None,
        precompute_ref_logps=False,
        args=types.SimpleNamespace(gradient_checkpointing_kwargs=None),
        f_divergence_type="reverse_kl",
        loss_types=[loss_type],
        loss_weights=[1.0],
        beta=BETA,
        label_smoothing=0.0,
        use_weighting=False,
        _metrics=metrics,
        rpo_alpha=None,
        use_liger_kernel=False,
        _total_train_tokens=0,
        _tp_size=1,
    )
    inputs = {
        "input_ids": torch.zeros(len(lens), width + 1, dtype=torch.long),
        "attention_mask": torch.ones(len(lens), width + 1, dtype=torch.long),
        "completion_mask": mask,
    }
    loss = DPOTrainer._compute_loss(self, model, inputs, False)
    return float(loss)


def orpo_odds_ratio():
    p = PAIRS
    c = torch.tensor([s / n for s, n in zip(p["chosen"], p["chosen_len"])], dtype=torch.float64)
    r = torch.tensor([s / n for s, n in zip(p["rejected"], p["rejected_len"])], dtype=torch.float64)
    self = types.SimpleNamespace(beta=BETA, accelerator=types.SimpleNamespace(device="cpu"))
    losses, chosen_rewards, rejected_rewards, _, _ = ORPOTrainer.odds_ratio_loss(self, c, r)
    # ORPOTrainer: loss = nll_loss - losses.mean(); the odds-ratio part is -losses.mean().
    return float(-losses.mean()), [float(x) for x in chosen_rewards], [float(x) for x in rejected_rewards]


def main():
    global BETA
    if len(sys.argv) > 1:
        given = json.loads(open(sys.argv[1]).read())
        PAIRS.clear()
        PAIRS.update(given["pairs"])
        BETA = given["beta"]
    orpo, orpo_chosen, orpo_rejected = orpo_odds_ratio()
    out = {
        "trl": trl.__version__,
        "torch": torch.__version__,
        "beta": BETA,
        "pairs": PAIRS,
        "dpo_sigmoid_mean_loss": dpo_loss("sigmoid"),
        "ipo_mean_loss": dpo_loss("ipo"),
        "orpo_odds_ratio_mean_loss": orpo,
        "orpo_chosen_rewards": orpo_chosen,
        "orpo_rejected_rewards": orpo_rejected,
    }
    if len(sys.argv) > 1:
        nll = -sum(PAIRS["chosen"]) / sum(PAIRS["chosen_len"])
        out["orpo_mean_loss"] = nll + orpo
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

"""Loads Tuna's exports in HF PEFT / transformers and compares logits with Tuna's (by hand).

Not run in CI: it needs torch, transformers and peft (a scratch venv:
`pip install torch==2.15.0 transformers==5.23.0 peft==0.21.2`). First let the worker test
write the exports, then check them:

    TUNA_PEFT_CHECK_DIR=/tmp/peft-check cargo test -p tuna-worker --lib \\
        every_method_exports_what_loads_back
    python scripts/peft_check.py /tmp/peft-check

For each method it loads the tiny base model with transformers' `LlamaForCausalLM`, attaches
the export (PEFT `LORA`, `IA3`, `PROMPT_TUNING`, `PREFIX_TUNING` through
`PeftModel.from_pretrained`; Tuna's
`FULL`/`BITFIT` layouts by loading the tensors into the model under their HF names, which must
all be known to transformers), runs the same token ids and prints the largest logit
difference; it exits non-zero when any exceeds 1e-4. Where the job also exported a merged model
(`export_merged`), transformers loads that folder on its own (`from_pretrained`, no PEFT) and
its logits are compared with Tuna's and with PEFT's base + adapter (the larger difference is
printed; f32 merges to 1e-4; a bf16 merge is printed with its rounding error and held to 0.1).
"""

import json
import sys
from pathlib import Path

import peft
import safetensors.torch as st
import torch
import transformers
from peft import PeftModel
from transformers import LlamaForCausalLM

TOLERANCE = 1e-4


def load(base_dir: str, adapter_dir: Path) -> torch.nn.Module:
    base = LlamaForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    kind = config["peft_type"]
    if kind in ("LORA", "IA3", "PROMPT_TUNING", "PREFIX_TUNING"):
        return PeftModel.from_pretrained(base, adapter_dir)
    tensors = st.load_file(adapter_dir / "adapter_model.safetensors")
    result = base.load_state_dict(tensors, strict=False)
    if result.unexpected_keys:
        raise SystemExit(f"{adapter_dir}: transformers does not know {result.unexpected_keys}")
    return base


def main() -> int:
    root = Path(sys.argv[1])
    manifest = json.loads((root / "manifest.json").read_text())
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}")
    worst = 0.0
    merged_worst = 0.0
    for case in manifest["cases"]:
        model = load(manifest["base"], Path(case["adapter"]))
        model.eval()
        saved = st.load_file(case["logits"])
        ids = saved["ids"].long()
        with torch.no_grad():
            logits = model(input_ids=ids).logits
        # Prompt tuning: PEFT returns the virtual positions too; Tuna the real ones.
        logits = logits[:, -ids.shape[1] :]
        diff = (logits.float() - saved["logits"].float()).abs().max().item()
        worst = max(worst, diff)
        status = "ok" if diff <= TOLERANCE else "FAIL"
        print(f"{case['name']:>16}: max |logit diff| = {diff:.2e}  {status}")
        if case.get("merged"):
            merged = LlamaForCausalLM.from_pretrained(case["merged"]).eval()
            with torch.no_grad():
                m = merged(input_ids=ids).logits.float()
            diff = (m - saved["logits"].float()).abs().max().item()
            # And against base + adapter in PEFT itself, not only against Tuna's logits.
            diff = max(diff, (m - logits.float()).abs().max().item())
            dtype = str(next(merged.parameters()).dtype).removeprefix("torch.")
            limit = 0.1 if dtype == "bfloat16" else TOLERANCE
            if limit == TOLERANCE:
                merged_worst = max(merged_worst, diff)
            elif diff > limit:
                merged_worst = max(merged_worst, 1.0)
            status = "ok" if diff <= limit else "FAIL"
            print(f"{'merged ' + dtype:>16}: max |logit diff| = {diff:.2e}  {status}")
    print(f"worst {worst:.2e} (adapters), {merged_worst:.2e} (f32 merged) (tolerance {TOLERANCE:.0e})")
    return 0 if worst <= TOLERANCE and merged_worst <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())

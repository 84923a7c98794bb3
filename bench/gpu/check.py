"""The GPU device check; run through bench/gpu/check.sh (which finds the binary and its CUDA
libraries). Needs torch, transformers and peft; writes under TUNA_GPU_CHECK_DIR.

(a) correctness: the same tiny LoRA job (random Llama-shaped weights, byte-level data, seed 7)
    on CPU f32, CUDA f32 and CUDA bf16; per-step losses compared, and the CUDA f32 adapter
    loaded in HF PEFT on the GPU with Tuna's eval loss reproduced.
(b) speed: LoRA r=16 on the 7 linears of SmolLM2-135M- and Llama-3.2-1B-shaped models, batch
    8 x 512, bf16, Tuna against PyTorch + PEFT in one run: tokens/s and peak device memory.

`--cpu-only` runs (a) without a GPU (CPU f32 against the CPU bf16 path, PEFT on the CPU), to
check the check itself where no GPU is lent.
"""

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

STEPS = 20
F32_TOLERANCE = 1e-3
BF16_TOLERANCE = 2e-2
EVAL_TOLERANCE = 1e-3
SPEED_STEPS = 12
SPEED_WARMUP = 3
SPEED_BATCH = 8
SPEED_SEQ = 512
SPEED_RANK = 16
LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# Architecture shapes only: the weights are random (generated on the machine).
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, vocab_size=256,
            tie_word_embeddings=False, rope_theta=10000.0, max_position_embeddings=256)
SHAPES = {
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                         tie_word_embeddings=True, rope_theta=100000.0,
                         max_position_embeddings=2048),
    "llama-3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                         tie_word_embeddings=True, rope_theta=500000.0,
                         max_position_embeddings=4096),
}

WORDS = ("the model learns a small adapter while the base weights stay frozen and every "
         "step moves the loss a little lower on text it has seen before").split()


def log(msg: str) -> None:
    print(msg, flush=True)


def config_json(shape: dict) -> dict:
    """A classic Llama config.json (rope_theta at the top level, which Tuna and transformers
    both read)."""
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "rms_norm_eps": 1e-5, "attention_bias": False, "mlp_bias": False,
        "bos_token_id": None, "eos_token_id": None, **shape,
    }


def make_model(path: Path, shape: dict, dtype: str, device: str) -> None:
    """Random weights for `shape`, saved as an HF folder (safetensors) in `dtype`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if (path / "model.safetensors").exists():
        return
    path.mkdir(parents=True, exist_ok=True)
    config = LlamaConfig(**config_json(shape))
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(getattr(torch, dtype))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if shape["tie_word_embeddings"]:
        state.pop("lm_head.weight", None)
    from safetensors.torch import save_file

    save_file({k: v.cpu() for k, v in state.items()}, str(path / "model.safetensors"),
              metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(config_json(shape), indent=1))


def sentences(n: int, length: int, seed: int) -> list:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = []
        while sum(len(w) + 1 for w in words) < length:
            words.append(rng.choice(WORDS))
        out.append(" ".join(words)[:length])
    return out


def write_jsonl(path: Path, texts: list) -> None:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))


class PeakMemory:
    """Largest GPU memory (GiB) of one process, polled every 0.2 s with nvidia-smi: the
    process's own figure where nvidia-smi can see it, else (inside a container, where it
    reports host PIDs) the device's used memory above what was in use before the start."""

    def __init__(self, pid: int):
        self.pid, self.own, self.device, self.stop = pid, 0, 0, False
        self.baseline = self.device_used()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    @staticmethod
    def query(args: list) -> str:
        try:
            return subprocess.run(["nvidia-smi", *args, "--format=csv,noheader,nounits"],
                                  capture_output=True, text=True, timeout=5).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    def device_used(self) -> int:
        values = [int(v) for v in self.query(["--query-gpu=memory.used"]).split()
                  if v.strip().isdigit()]
        return values[0] if values else 0

    def run(self) -> None:
        while not self.stop:
            for line in self.query(["--query-compute-apps=pid,used_memory"]).splitlines():
                parts = [x.strip() for x in line.split(",")]
                if len(parts) >= 2 and parts[0] == str(self.pid) and parts[1].isdigit():
                    self.own = max(self.own, int(parts[1]))
            self.device = max(self.device, self.device_used())
            time.sleep(0.2)

    def finish(self) -> float:
        self.stop = True
        self.thread.join(timeout=2)
        mib = self.own if self.own > 0 else max(0, self.device - self.baseline)
        return mib / 1024.0


def run_tuna(tuna: str, args: list, gpu: bool):
    """Runs `tuna train`; returns (per-step metrics, eval loss, peak GiB, wall seconds)."""
    started = time.time()
    proc = subprocess.Popen([tuna, "train", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "NO_COLOR": "1"})
    memory = PeakMemory(proc.pid) if gpu else None
    steps, eval_loss, lines = {}, None, []
    for line in proc.stdout:
        lines.append(line.rstrip())
        m = re.match(r"step (\d+)\s+(.*)", line)
        if not m:
            continue
        values = dict(kv.split("=", 1) for kv in m.group(2).split() if "=" in kv)
        values = {k: float(v) for k, v in values.items()}
        if "eval_loss" in values:
            eval_loss = values["eval_loss"]
        if "loss" in values:
            steps[int(m.group(1))] = values
    code = proc.wait()
    peak = memory.finish() if memory else 0.0
    if code != 0:
        tail = "\n".join(lines[-15:])
        raise SystemExit(f"tuna train {' '.join(args)} failed ({code}):\n{tail}")
    return steps, eval_loss, peak, time.time() - started


def peft_eval_loss(model_dir: Path, adapter: Path, texts: list, max_len: int, device: str,
                   dtype: str) -> float:
    """Tuna's eval loss recomputed in HF PEFT: byte ids truncated to max_len, every next token
    a target, the mean over all targets of the file."""
    import torch
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    base = LlamaForCausalLM.from_pretrained(str(model_dir), dtype=getattr(torch, dtype))
    model = PeftModel.from_pretrained(base.to(device), str(adapter)).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([list(text.encode())[:max_len]], device=device)
            logits = model(input_ids=ids).logits.float()
            logp = torch.log_softmax(logits[0, :-1], dim=-1)
            nll = -logp.gather(1, ids[0, 1:, None]).squeeze(1)
            total += nll.sum().item()
            count += nll.numel()
    return total / count


def compare(name: str, curve: dict, reference: dict, tolerance: float) -> bool:
    worst = max(abs(curve[s]["loss"] - reference[s]["loss"]) / abs(reference[s]["loss"])
                for s in reference)
    ok = len(curve) == len(reference) and worst <= tolerance
    log(f"correctness {name}: {len(curve)} steps, largest relative loss difference "
        f"{worst:.2e} (tolerance {tolerance:g}) {'ok' if ok else 'FAILED'}")
    return ok


def correctness(tuna: str, root: Path, cpu_only: bool) -> bool:
    model = root / "tiny"
    make_model(model, TINY, "float32", "cpu")
    write_jsonl(root / "train.jsonl", sentences(48, 120, 1))
    val_texts = sentences(8, 120, 2)
    write_jsonl(root / "val.jsonl", val_texts)
    max_len = 64

    def job(device: str, dtype: str):
        out = root / f"adapter-{device.replace(':', '')}-{dtype}"
        args = ["--model", str(model), "--data", str(root / "train.jsonl"),
                "--validation", str(root / "val.jsonl"), "--method", "lora", "--r", "8",
                "--alpha", "16", "--target-modules", ",".join(LINEARS),
                "--learning-rate", "1e-3", "--max-steps", str(STEPS), "--batch-size", "4",
                "--max-seq-len", str(max_len), "--eval-every", str(STEPS), "--seed", "7",
                "--out", str(out), "--device", device, "--dtype", dtype]
        steps, eval_loss, _, wall = run_tuna(tuna, args, gpu=device != "cpu")
        log(f"  {device} {dtype}: {len(steps)} steps in {wall:.1f} s, final loss "
            f"{steps[max(steps)]['loss']:.5f}, eval loss {eval_loss:.5f}")
        return steps, eval_loss, out

    cpu, cpu_eval, cpu_out = job("cpu", "f32")
    ok = len(cpu) == STEPS
    if cpu_only:
        # The bf16 base path (what CUDA runs by default) on the CPU, and PEFT on the CPU.
        bf16, _, _ = job("cpu", "bf16")
        ok &= compare("cpu bf16 vs cpu f32", bf16, cpu, BF16_TOLERANCE)
        checked, checked_eval, device = cpu_out, cpu_eval, "cpu"
    else:
        f32, f32_eval, f32_out = job("cuda", "f32")
        bf16, _, _ = job("cuda", "bf16")
        ok &= compare("cuda f32 vs cpu f32", f32, cpu, F32_TOLERANCE)
        ok &= compare("cuda bf16 vs cpu f32", bf16, cpu, BF16_TOLERANCE)
        checked, checked_eval, device = f32_out, f32_eval, "cuda"
    peft = peft_eval_loss(model, checked, val_texts, max_len, device, "float32")
    diff = abs(peft - checked_eval) / abs(checked_eval)
    good = diff <= EVAL_TOLERANCE
    log(f"correctness peft on {device}: eval loss {peft:.6f} vs tuna {checked_eval:.6f}, "
        f"relative {diff:.2e} (tolerance {EVAL_TOLERANCE:g}) {'ok' if good else 'FAILED'}")
    return ok and good


def speed_data(root: Path) -> Path:
    path = root / "speed.jsonl"
    if not path.exists():
        write_jsonl(path, sentences(SPEED_BATCH * (SPEED_STEPS + 2), SPEED_SEQ + 64, 3))
    return path


def pytorch_speed(model_dir: str, data: str) -> None:
    """Child process: LoRA r=16 on the 7 linears with PEFT, AdamW, bf16 base; prints JSON."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    base = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).to("cuda")
    model = get_peft_model(base, LoraConfig(r=SPEED_RANK, lora_alpha=2 * SPEED_RANK,
                                            lora_dropout=0.0, target_modules=LINEARS))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    texts = [json.loads(line)["text"] for line in open(data)]
    times = []
    for step in range(SPEED_STEPS):
        rows = texts[step * SPEED_BATCH:(step + 1) * SPEED_BATCH]
        ids = torch.tensor([list(t.encode())[:SPEED_SEQ] for t in rows], device="cuda")
        torch.cuda.synchronize()
        t0 = time.time()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        times.append(time.time() - t0)
    tokens = SPEED_BATCH * SPEED_SEQ
    rate = statistics.median(tokens / t for t in times[SPEED_WARMUP:])
    print(json.dumps({"tokens_per_s": rate,
                      "max_allocated_gib": torch.cuda.max_memory_allocated() / 2**30}))


def speed(tuna: str, root: Path) -> list:
    data = speed_data(root)
    lines = []
    for shape, dims in SHAPES.items():
        model = root / shape
        make_model(model, dims, "bfloat16", "cuda")
        args = ["--model", str(model), "--data", str(data), "--method", "lora",
                "--r", str(SPEED_RANK), "--alpha", str(2 * SPEED_RANK),
                "--target-modules", ",".join(LINEARS), "--learning-rate", "1e-4",
                "--max-steps", str(SPEED_STEPS), "--batch-size", str(SPEED_BATCH),
                "--max-seq-len", str(SPEED_SEQ), "--seed", "7", "--out",
                str(root / f"adapter-{shape}"), "--device", "cuda", "--dtype", "bf16"]
        steps, _, tuna_mem, wall = run_tuna(tuna, args, gpu=True)
        rates = [steps[s]["tokens_per_s"] for s in sorted(steps) if s > SPEED_WARMUP]
        tuna_rate = statistics.median(rates) if rates else 0.0
        log(f"  tuna {shape}: {len(steps)} steps in {wall:.1f} s")
        proc = subprocess.Popen([sys.executable, __file__, "--pytorch-speed", str(model),
                                 str(data)], stdout=subprocess.PIPE, text=True)
        memory = PeakMemory(proc.pid)
        out, _ = proc.communicate()
        torch_mem = memory.finish()
        if proc.returncode != 0:
            raise SystemExit(f"pytorch speed run for {shape} failed ({proc.returncode})")
        result = json.loads(out.strip().splitlines()[-1])
        torch_rate = result["tokens_per_s"]
        if torch_mem == 0.0:
            torch_mem = result["max_allocated_gib"]
        ratio = tuna_rate / torch_rate if torch_rate else 0.0
        lines.append(f"gpu {shape}: tuna {tuna_rate:.0f} tok/s, pytorch {torch_rate:.0f} tok/s, "
                     f"ratio {ratio:.2f}, memory tuna {tuna_mem:.2f} GiB pytorch "
                     f"{torch_mem:.2f} GiB")
    return lines


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--tuna")
    p.add_argument("--quick", action="store_true", help="correctness only")
    p.add_argument("--cpu-only", action="store_true")
    p.add_argument("--pytorch-speed", nargs=2, metavar=("MODEL", "DATA"))
    a = p.parse_args()
    if a.pytorch_speed:
        pytorch_speed(*a.pytorch_speed)
        return 0
    import peft
    import torch
    import transformers

    root = Path(os.environ.get("TUNA_GPU_CHECK_DIR", "/tmp/tuna-gpu-check"))
    root.mkdir(parents=True, exist_ok=True)
    gpu = "none" if a.cpu_only else torch.cuda.get_device_name(0)
    log(f"gpu check: {gpu}; torch {torch.__version__}, transformers "
        f"{transformers.__version__}, peft {peft.__version__}; tuna {a.tuna}")
    ok = correctness(a.tuna, root, a.cpu_only)
    lines = [] if a.quick or a.cpu_only else speed(a.tuna, root)
    for line in lines:
        log(line)
    log(f"gpu check: correctness {'passed' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

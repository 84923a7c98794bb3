#!/usr/bin/env python3
"""Writes the tiny seed inputs under fuzz/seeds/<target>/ (committed; regenerate with
`python3 fuzz/seeds/make_seeds.py`). Each starts the fuzzer at a valid input so it explores
the decoders' deep paths, not only their first byte checks."""
import io, os, struct, tarfile

HERE = os.path.dirname(os.path.abspath(__file__))


def put(target, name, data):
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# --- protobuf, by hand (field numbers from proto/tuna/v1) -------------------------------
def varint(v):
    v &= (1 << 64) - 1
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def f_var(n, v):
    return varint(n << 3) + varint(v)


def f_dbl(n, x):
    return varint(n << 3 | 1) + struct.pack("<d", x)


def f_len(n, b):
    if isinstance(b, str):
        b = b.encode()
    return varint(n << 3 | 2) + varint(len(b)) + b


FILE_ID = "file_" + "0" * 32
lora = f_var(1, 8) + f_dbl(2, 16.0) + f_len(4, "q_proj") + f_len(4, "v_proj") + f_len(6, "default")
method = f_len(1, "lora") + f_len(2, lora)
hyper = f_dbl(1, 5e-4) + f_var(3, 200) + f_var(4, 8) + f_len(7, "cosine") + f_var(10, 42)
job = (f_len(1, "tiny") + f_len(2, FILE_ID) + f_len(4, method) + f_len(5, hyper)
       + f_len(6, f_len(1, "cpu")) + f_var(7, 10) + f_len(9, f_len(1, "team") + f_len(2, "nlp")))
put("job_spec", "proto_jobspec", b"\x00" + job)
put("job_spec", "proto_ia3_classification",
    b"\x00" + f_len(1, "bert") + f_len(2, FILE_ID) + f_len(4, f_len(1, "ia3")) + f_len(10, "classification"))
with open(os.path.join(HERE, "..", "..", "examples", "job.json"), "rb") as f:
    put("job_spec", "json_example", b"\x01" + f.read())
put("job_spec", "toml_prompt_tuning",
    b"\x02" + b'base_model = "tiny"\ntraining_file = "' + FILE_ID.encode()
    + b'"\n[method]\ntype = "prompt_tuning"\nprompt_tuning = { num_virtual_tokens = 8 }\n')

param_lr = f_len(1, "hyperparameters.learning_rate") + f_len(2, "log") + f_dbl(3, 1e-3) + f_dbl(4, 0.5)
param_r = f_len(1, "method.lora.r") + f_len(2, "linear") + f_dbl(3, 2) + f_dbl(4, 16) + f_var(5, 1)
param_sched = f_len(1, "hyperparameters.schedule") + f_len(2, "categorical") + f_len(7, "constant") + f_len(7, "cosine")
template = f_len(1, "tiny") + f_len(2, FILE_ID) + f_len(4, f_len(1, "lora")) + f_len(5, f_var(3, 24) + f_var(4, 8))
for algo, extra in [("random", f_len(2, f_dbl(1, 2) + f_dbl(2, 4))), ("grid", f_var(4, 3)),
                    ("carbs", b""), ("asha", f_len(2, f_dbl(1, 2) + f_dbl(2, 4))),
                    ("hyperband", f_len(2, f_dbl(1, 3) + f_dbl(2, 2))), ("bandit", b"")]:
    params = [param_lr] if algo == "carbs" else [param_lr, param_r, param_sched]
    spec = (b"".join(f_len(1, p) for p in params) + f_len(2, f_len(1, "eval_loss"))
            + f_len(4, f_len(1, algo) + extra) + f_var(5, 8) + f_var(7, 2) + f_len(8, template) + f_var(9, 11))
    put("sweep_spec", f"proto_create_{algo}", b"\x00" + f_len(1, spec) + f_len(2, "req-1"))
    put("sweep_spec", f"proto_stored_{algo}", b"\x01" + spec)
with open(os.path.join(HERE, "..", "..", "examples", "sweep.toml"), "rb") as f:
    put("sweep_spec", "toml_example", b"\x03" + f.read())

# --- JSONL: two seed bytes for the chunking, then the body -------------------------------
put("jsonl_validator", "text", b"\x07\x01" + b'{"text":"hello"}\n{"text":"world"}\n')
put("jsonl_validator", "prompt_completion",
    b"\x31\x00" + b'{"prompt":"1+1=","completion":"2"}\r\n{"prompt":"2+2=","completion":"4"}')
put("jsonl_validator", "chat",
    b"\x05\x09" + b'{"messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hi"},'
    b'{"role":"assistant","content":"hello"}]}\n')
put("jsonl_validator", "classification", b"\x02\x02" + b'{"text":"good","label":"pos"}\n{"text":"bad","label":1}\n')
put("jsonl_validator", "mixed", b"\x00\x00" + b'{"text":"a"}\n{"prompt":"b","completion":"c"}\n')


# --- tar ---------------------------------------------------------------------------------
def tar(entries, fmt=tarfile.GNU_FORMAT):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        for name, kind, body, link in entries:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.size = len(body) if kind == tarfile.REGTYPE else 0
            info.linkname = link
            info.mode = 0o644
            t.addfile(info, io.BytesIO(body) if kind == tarfile.REGTYPE else None)
    data = buf.getvalue()
    # Drop the record padding: keep the entries and the two zero end-of-archive blocks.
    end = len(data.rstrip(b"\0"))
    return data[: (end + 511) // 512 * 512 + 1024]


REG, SYM, LNK, DIR = tarfile.REGTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.DIRTYPE
put("tar_unpack", "adapter", tar([("adapter_config.json", REG, b'{"r": 8}', ""),
                                  ("adapter_model.safetensors", REG, b"\x07" * 40, "")]))
put("tar_unpack", "pax_long_name", tar([("a" * 120 + ".bin", REG, b"x", "")], tarfile.PAX_FORMAT))
put("tar_unpack", "escape", tar([("ok.txt", REG, b"x", ""), ("../up.txt", REG, b"y", "")]))
put("tar_unpack", "symlink", tar([("link", SYM, b"", "/etc/passwd"), ("link", REG, b"z", "")]))
put("tar_unpack", "hardlink_dir", tar([("a", REG, b"1", ""), ("b", LNK, b"", "a"), ("d", DIR, b"", "")]))


# --- GGUF v3 (llama arch, f32 tensors, byte-level BPE tokenizer) --------------------------
def g_str(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def kv(key, vtype, payload):
    return g_str(key) + struct.pack("<I", vtype) + payload


U32, F32, STR, ARR, I32 = 4, 6, 8, 9, 5


def kv_u32(k, v):
    return kv(k, U32, struct.pack("<I", v))


def kv_str(k, v):
    return kv(k, STR, g_str(v))


def kv_arr_str(k, items):
    return kv(k, ARR, struct.pack("<IQ", STR, len(items)) + b"".join(g_str(i) for i in items))


def kv_arr_i32(k, items):
    return kv(k, ARR, struct.pack("<IQ", I32, len(items)) + b"".join(struct.pack("<i", i) for i in items))


def gguf(hidden=4, heads=2, ffn=8, vocab=6, tokenizer=True, align=None):
    metas = [kv_str("general.architecture", "llama"), kv_u32("llama.embedding_length", hidden),
             kv_u32("llama.attention.head_count", heads), kv_u32("llama.attention.head_count_kv", heads),
             kv_u32("llama.block_count", 1), kv_u32("llama.feed_forward_length", ffn),
             kv_u32("llama.context_length", 64), kv("llama.attention.layer_norm_rms_epsilon", F32, struct.pack("<f", 1e-5))]
    if align is not None:
        metas.append(kv_u32("general.alignment", align))
    if tokenizer:
        toks = ["<s>", "</s>", "a", "b", "ab", "\u0120"][:vocab]
        metas += [kv_str("tokenizer.ggml.model", "gpt2"), kv_str("tokenizer.ggml.pre", "smollm"),
                  kv_arr_str("tokenizer.ggml.tokens", toks), kv_arr_i32("tokenizer.ggml.token_type", [3, 3] + [1] * (len(toks) - 2)),
                  kv_arr_str("tokenizer.ggml.merges", ["a b"]), kv_u32("tokenizer.ggml.bos_token_id", 0),
                  kv_u32("tokenizer.ggml.eos_token_id", 1),
                  kv_str("tokenizer.chat_template", "{% for m in messages %}{{ m.content }}{% endfor %}")]
    shapes = {"token_embd.weight": [hidden, vocab], "output_norm.weight": [hidden],
              "blk.0.attn_norm.weight": [hidden], "blk.0.ffn_norm.weight": [hidden],
              "blk.0.attn_q.weight": [hidden, hidden], "blk.0.attn_k.weight": [hidden, hidden],
              "blk.0.attn_v.weight": [hidden, hidden], "blk.0.attn_output.weight": [hidden, hidden],
              "blk.0.ffn_gate.weight": [hidden, ffn], "blk.0.ffn_up.weight": [hidden, ffn],
              "blk.0.ffn_down.weight": [ffn, hidden]}
    infos, data = b"", b""
    for name, dims in shapes.items():
        n = 1
        for d in dims:
            n *= d
        infos += g_str(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        infos += struct.pack("<IQ", 0, len(data))  # f32
        data += struct.pack(f"<{n}f", *[(i % 7) / 7.0 for i in range(n)])
    head = b"GGUF" + struct.pack("<IQQ", 3, len(shapes), len(metas)) + b"".join(metas) + infos
    a = align or 32
    head += b"\x00" * ((-len(head)) % a)
    return head + data


put("gguf_header", "tiny_llama", gguf())
put("gguf_header", "tiny_llama_no_tokenizer", gguf(tokenizer=False, align=8))
put("gguf_header", "header_only", b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + kv_str("general.architecture", "llama"))

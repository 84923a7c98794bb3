#!/usr/bin/env python3
"""Example external problem for `tuna-bench search --problem-cmd`: reads the parameters as JSON
on stdin, prints {"objective", "cost", "failed"}. A shifted sphere in log(lr) and x.

  cargo run --release -p tuna-bench -- search --problem-cmd 'python3 bench/anchors/sphere_problem.py' \
      --problem-space bench/anchors/sphere_space.json --seeds 3
"""
import json
import math
import sys

p = json.load(sys.stdin)
lr, x = p["lr"], p["x"]
objective = (math.log10(lr) + 3.0) ** 2 + (x - 0.3) ** 2
print(json.dumps({"objective": objective, "cost": 1.0, "failed": lr > 0.05}))

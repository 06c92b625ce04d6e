#!/usr/bin/env bash
# GPU check (< 8 minutes on one GPU): the training tests on the GPU, GPU-only checks (placement, XLA,
# mixed-precision loss scaling, determinism), then NSF on POWER: steps/s and the test log-likelihood reached.
#
#   bash benchmarks/gpu_check.sh                 # uses .venv/ if present, else the python on PATH
#   NSF_STEPS=20000 bash benchmarks/gpu_check.sh # a longer NSF run (default 6000 steps, batch 512)
#
# Needs TensorFlow with CUDA (pip install "tensorflow[and-cuda]==2.21.0") and data/processed/power/
# (`dvc repro prepare@power`).  Exits 2 with a message when no GPU is visible.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f .venv/bin/activate ] && . .venv/bin/activate
export TF_CPP_MIN_LOG_LEVEL=2 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
start=$(date +%s)

python - <<'PY' || exit 2
import sys, tensorflow as tf
gpus = tf.config.list_physical_devices("GPU")
if not gpus:
    sys.exit("error: benchmarks/gpu_check.sh needs a GPU, and TensorFlow sees none "
             f"(tensorflow {tf.__version__}, built with CUDA: {tf.test.is_built_with_cuda()}); "
             "install tensorflow[and-cuda] and check nvidia-smi")
print("GPUs:", ", ".join(g.name for g in gpus), "| tensorflow", tf.__version__)
PY

echo "== 1/3 training tests on the GPU"
timeout 240 python -m pytest -q -p no:cacheprovider tests/test_training.py tests/test_resume.py

echo "== 2/3 GPU-only checks"
timeout 120 python - <<'PY'
import numpy as np, tensorflow as tf
import flows
from flows.training import TrainConfig, fit, set_seed, pick_strategy

x = np.random.default_rng(0).normal(size=(4000, 6)).astype(np.float32)
strategy = pick_strategy()
print("strategy:", type(strategy).__name__, "replicas:", strategy.num_replicas_in_sync)
res = {}
for name, opts in {"plain": {}, "xla": {"jit_compile": True}, "loss_scaled": {"mixed_precision": True},
                   "deterministic": {"deterministic": True}, "deterministic_again": {"deterministic": True}}.items():
    set_seed(0)
    with strategy.scope():
        flow = flows.build_flow("nsf", [6], num_layers=2, hidden_units=[32, 32])
    h = fit(flow, x[:3500], x[3500:], TrainConfig(steps=200, eval_every=100, batch_size=256, **opts),
            strategy=strategy, log=lambda s: None)
    res[name] = h.val_loss[-1]
    dev = flow.trainable_variables[0].device
    print(f"{name:20s} val_nll {h.val_loss[-1]:.5f}  variables on {dev}")
    assert "GPU" in dev.upper(), f"variables are on {dev}, not a GPU"
assert abs(res["xla"] - res["plain"]) < 1e-2 and abs(res["loss_scaled"] - res["plain"]) < 1e-2, res
assert res["deterministic"] == res["deterministic_again"], "op determinism did not give the same result twice"
for name in ("maf", "realnvp", "glow"):  # stages/train.py turns op determinism on when it sees a GPU
    vals = []
    for _ in range(2):
        set_seed(0)
        with strategy.scope():
            flow = flows.build_flow(name, [6], num_layers=2, hidden_units=[32, 32])
        vals.append(fit(flow, x[:3500], x[3500:], TrainConfig(steps=100, eval_every=100, deterministic=True),
                        strategy=strategy, log=lambda s: None).val_loss[-1])
    print(f"{name:20s} deterministic val_nll {vals}")
    assert vals[0] == vals[1], (name, vals)
print("GPU checks passed")
PY

echo "== 3/3 NSF on POWER"
left=$(( 450 - ($(date +%s) - start) ))
timeout $(( left > 60 ? left : 60 )) python - <<'PY'
import os, time, numpy as np, tensorflow as tf
import flows
from flows.training import TrainConfig, evaluate, fit, set_seed, pick_strategy

path = "data/processed/power"
if not os.path.exists(f"{path}/test.npy"):
    raise SystemExit(f"error: {path} is missing: run `dvc repro prepare@power` (or copy it) first")
train, val, test = (np.load(f"{path}/{s}.npy", mmap_mode="r") for s in ("train", "val", "test"))
steps = int(os.environ.get("NSF_STEPS", 6000))
strategy = pick_strategy()
set_seed(0)
with strategy.scope():
    flow = flows.build_flow("nsf", [6], num_layers=5, form="autoregressive", num_bins=8, hidden_units=[256, 256])
cfg = TrainConfig(steps=steps, batch_size=512, learning_rate=5e-4, eval_every=max(steps // 6, 1), jit_compile=True)
h = fit(flow, train, val, cfg, strategy=strategy)
r = evaluate(flow, test, batch_size=20000)
rate = (h.step[-1] - h.step[0]) / (h.seconds[-1] - h.seconds[0])
print(f"NSF (AR, 5 x 2x256, 8 bins) on POWER, {steps} steps of 512 on {tf.config.list_logical_devices('GPU')[0].name}:"
      f" {rate:.1f} steps/s after the first evaluation; test log-likelihood {r['test_ll']:.4f} +/- "
      f"{2 * r['test_ll_se']:.4f} nats (best validation step {h.best_step}); NSF paper: 0.66 +/- 0.01")
PY
echo "gpu_check.sh finished in $(( $(date +%s) - start )) s"

#!/usr/bin/env bash
# Run on the lent device machine with the zuko wheel carried in .devprobe/
# (pip download --no-deps --only-binary=:all: -d .devprobe zuko==1.6.0); results: benchmarks/results/device_probe.md
# One device call: what the image offers for TensorFlow, then a PyTorch/zuko reference for the NSF paper architecture.
set -u
echo "== machine"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; python3 --version; which python3
echo "== tensorflow?"; python3 -c "import tensorflow as tf; print('tensorflow', tf.__version__, tf.config.list_physical_devices('GPU'))" 2>&1 | tail -1
python3 -m pip list 2>/dev/null | grep -i -E "^(tensorflow|tf-keras|keras|tensorflow-probability|nvidia-cudnn|nvidia-cublas|nvidia-cuda-runtime|torch|jax) " 
ls /usr/local/cuda*/lib64/libcudart.so* /usr/local/cuda*/lib64/libcublas.so* 2>/dev/null | head; nvcc --version 2>/dev/null | tail -1
echo "== zuko on the GPU (reference only: PyTorch, not this project's TensorFlow code)"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .devprobe/zuko-*.whl && export PYTHONPATH=/tmp/site
PYTHONUNBUFFERED=1 timeout 200 python3 - <<'PY'
import time, math, torch, zuko
dev = "cuda"
torch.manual_seed(0)
x_all = torch.randn(200000, 6, device=dev)
def bench(name, make, batch=512, warm=30, steps=300):
    flow = make().to(dev)
    opt = torch.optim.Adam(flow.parameters(), lr=5e-4)
    def step():
        idx = torch.randint(0, len(x_all), (batch,), device=dev)
        loss = -flow().log_prob(x_all[idx]).mean()
        opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(flow.parameters(), 5.0); opt.step()
        return loss
    for _ in range(warm): step()
    torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(steps): step()
    torch.cuda.synchronize(); dt = time.perf_counter() - t
    print(f"{name:48s} batch {batch}: {steps/dt:7.1f} steps/s", flush=True)
    return steps / dt
r = {}
r["nsf_ar"] = bench("NSF (AR) 10 x 2x256, 8 bins (paper POWER arch)", lambda: zuko.flows.NSF(6, bins=8, transforms=10, hidden_features=(256, 256)))
r["nsf_c"] = bench("NSF (C) 10 x 2x256, 8 bins", lambda: zuko.flows.NSF(6, bins=8, transforms=10, hidden_features=(256, 256), passes=2))
r["maf5"] = bench("MAF(5) 5 x 2x100", lambda: zuko.flows.MAF(6, transforms=5, hidden_features=(100, 100)))
r["realnvp"] = bench("RealNVP 10 x 2x100", lambda: zuko.flows.RealNVP(6, transforms=10, hidden_features=(100, 100)))
for k, v in r.items():
    print(f"{k}: 400k steps (NSF POWER budget) would take {400000 / v / 3600:.2f} h at this rate")
PY
echo "probe done"

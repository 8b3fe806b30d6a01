#!/usr/bin/env bash
# GPU checks for issue 4, in one short run (about 5 minutes on an H200; installs nothing).
#
#   bash benchmarks/gpu_check.sh            # results under $OUT, else benchmarks/out/gpu_check
#
# Needs torch (CUDA), torchvision, numpy, opencv-python-headless; faiss and safetensors are not
# used. The package is imported from the checkout (PYTHONPATH), no pip install.
#  1. correctness (cuda vs cpu on the same small inputs; prints PASS/FAIL per line):
#     - coreset indices: cuda dense == cpu default (the batched loop; identical picks);
#     - image scores, same memory bank: cuda bf16 autocast vs cpu fp32 within 3% (relative),
#       cuda fp32 vs cpu fp32 within 1% (cuDNN may use TF32 for convolutions);
#     - whole pipeline (bank built on each device): reported, not asserted;
#     - mobilenet_v2 at its defaults (320 px, 288-d natural embedding), bf16 vs cpu fp32 on the
#       same bank: reported (smoke-tested on the CPU with device="cpu": max rel 0.012).
#  2. bench.py on cuda: wide_resnet50_2 (random weights) at 224 px, 220 training images, bank
#     17,248 x 1024 (10%), batch 1 and 64, with the coreset comparison.
#  3. optional: the same with torch.compile (skipped if it runs out of its time slot, or with
#     GPU_CHECK_COMPILE=0).
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/out/gpu_check}"
mkdir -p "$OUT"
export OUT
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONWARNINGS=ignore
PY="${PYTHON:-python3}"
START=$(date +%s)
log() { echo "[$(( $(date +%s) - START ))s] $*" | tee -a "$OUT/log.txt"; }

log "gpu_check start $(date -Is) on $(hostname)"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
$PY -c "import torch, torchvision, platform; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'python', platform.python_version(), 'cuda', torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else 'NO CUDA', 'cpu threads', torch.get_num_threads())" 2>&1 | tee -a "$OUT/log.txt"

log "1. correctness: cuda vs cpu"
timeout 240 $PY - > "$OUT/correctness.txt" 2>&1 <<'EOF'
import json, os, time, warnings
import numpy as np
import torch
warnings.simplefilter("ignore")
from helpers import Config, PatchCore
from helpers.core.coreset import greedy_coreset
from helpers.core.images import IMAGENET_MEAN, IMAGENET_STD
from helpers.data.synthetic import DEFECTS, make_sample

assert torch.cuda.is_available(), "no CUDA device"
out = {}
fails = []

def check(name, ok, detail):
    print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)
    out[name] = {"ok": bool(ok), "detail": detail}
    if not ok:
        fails.append(name)

def imgs(kinds, salt, size=224):
    a = [(make_sample(k, size, np.random.default_rng((salt, i)))[0].astype(np.float32) / 255
          - IMAGENET_MEAN) / IMAGENET_STD for i, k in enumerate(kinds)]
    return torch.from_numpy(np.stack(a)).permute(0, 3, 1, 2).contiguous()

GPU = "cuda"

def on_gpu(ref, cfg, precision):
    """A model on the GPU with ``ref``'s (random) weights and ``ref``'s memory bank."""
    g = PatchCore(Config(device=GPU, precision=precision, **cfg))
    g.extractor.load_state_dict(ref.extractor.state_dict())  # the same random weights
    g.memory_bank, g.grid = ref.memory_bank.to(g.device), ref.grid
    return g

def rel_diff(pred, ref):
    return np.abs(pred.scores - ref.scores) / np.abs(ref.scores)

def report(key, label, pred, ref):
    """Print and record how far ``pred``'s image scores are from ``ref``'s (not asserted)."""
    from scipy.stats import spearmanr  # scipy comes with scikit-learn
    rel = rel_diff(pred, ref)
    rho = spearmanr(pred.scores, ref.scores).correlation
    print(f"INFO {label}: max rel {rel.max():.4f}, median {np.median(rel):.4f}, spearman {rho:.4f}")
    out[key] = {"max_rel": float(rel.max()), "spearman": float(rho)}

train = imgs(["good"] * 50, 0)
test = imgs([(("good",) + DEFECTS)[i % 5] for i in range(16)], 1)
cfg = dict(backbone="wide_resnet50_2", weights=None, input_size=224, resize=224, batch_size=32)

# --- coreset: same float32 features on both devices
cpu = PatchCore(Config(device="cpu", precision="fp32", **cfg))
with torch.inference_mode():
    feats = torch.cat([cpu.embed(train[i:i + 10]).reshape(-1, 1024) for i in range(0, 50, 10)])
k = feats.shape[0] // 10
t = time.perf_counter(); idx_cpu = greedy_coreset(feats, k); t_cpu = time.perf_counter() - t
fc = feats.cuda()
greedy_coreset(fc[:5000], 50)  # warm-up
torch.cuda.synchronize(); t = time.perf_counter()
idx_dense = greedy_coreset(fc, k, method="dense"); torch.cuda.synchronize()
t_cuda = time.perf_counter() - t
same = torch.equal(idx_cpu, idx_dense.cpu())  # the CPU runs the batched loop (>= 8,192 rows)
first = int((idx_cpu != idx_dense.cpu()).nonzero()[0]) if not same else None
check("coreset identical cuda dense / cpu batched", same,
      f"{feats.shape[0]} x 1024 -> {k} picks; cpu {t_cpu:.2f}s, cuda dense {t_cuda:.3f}s; "
      f"first differing pick (dense vs cpu): {first}")

# --- scores with the same bank
cpu.fit(train[:16])
s_cpu = cpu.predict(test, maps=True)
for prec, tol in (("bf16", 0.03), ("fp32", 0.01)):
    s = on_gpu(cpu, cfg, prec).predict(test, maps=True)
    rel = rel_diff(s, s_cpu)
    mdiff = max(float(np.abs(a - b).max() / np.abs(b).max()) for a, b in zip(s.maps, s_cpu.maps))
    check(f"scores cuda {prec} vs cpu fp32, same bank (rtol {tol})", rel.max() <= tol,
          f"max rel {rel.max():.4f}, median {np.median(rel):.4f}; maps max |diff|/max {mdiff:.4f}")

# --- whole pipeline on each device (bf16 on cuda), reported
g = PatchCore(Config(device=GPU, **cfg))
g.extractor.load_state_dict(cpu.extractor.state_dict())
g.fit(train[:16])
report("pipeline_bf16_vs_cpu", "whole pipeline cuda bf16 (fit+predict) vs cpu fp32",
       g.predict(test, maps=False), s_cpu)
# --- mobilenet_v2 defaults (288-d natural embedding, 320 px): bf16 vs fp32 on the same bank
try:
    mcfg = dict(backbone="mobilenet_v2", weights=None, batch_size=32, train_rotations=1)
    mtrain = imgs(["good"] * 16, 2, 320)
    mtest = imgs([(("good",) + DEFECTS)[i % 5] for i in range(16)], 3, 320)
    mc = PatchCore(Config(device="cpu", precision="fp32", **mcfg)).fit(mtrain)
    ms_cpu = mc.predict(mtest, maps=False)
    report("mobilenet_defaults_bf16_vs_cpu",
           f"mobilenet_v2 defaults, bf16 on {GPU} vs cpu fp32, same bank",
           on_gpu(mc, mcfg, "bf16").predict(mtest, maps=False), ms_cpu)
except Exception as exc:  # report, never stop the rest of the check
    print(f"INFO mobilenet_v2 bf16 check did not run: {type(exc).__name__}: {exc}")
json.dump(out, open(os.path.join(os.environ.get("OUT", "."), "correctness.json"), "w"), indent=2)
print("ALL PASS" if not fails else f"FAILED: {fails}")
EOF
echo "exit $?" >> "$OUT/correctness.txt"
cat "$OUT/correctness.txt" | tee -a "$OUT/log.txt"

log "2. bench.py on cuda, WRN50 224 px, 220 images, bank 17248, batch 1 and 64"
timeout 300 $PY benchmarks/bench.py --device cuda --backbone wide_resnet50_2 --input-size 224 \
  --train-images 220 --bank-size 17248 --batches 1,64 --fit-batch 64 --repeats 5 \
  --batch1-images 20 --compare-coreset --reference-steps 300 --json "$OUT/bench_cuda.json" \
  > "$OUT/bench_cuda.txt" 2>&1
echo "exit $?" >> "$OUT/bench_cuda.txt"
tail -n 25 "$OUT/bench_cuda.txt" | tee -a "$OUT/log.txt"

ELAPSED=$(( $(date +%s) - START ))
if [ "${GPU_CHECK_COMPILE:-1}" = 1 ] && [ "$ELAPSED" -lt 330 ]; then
  log "3. bench.py on cuda with torch.compile (time-boxed)"
  timeout $(( 540 - ELAPSED )) $PY benchmarks/bench.py --device cuda --train-images 64 \
    --bank-size 5017 --batches 1,64 --fit-batch 64 --repeats 5 --batch1-images 20 --compile \
    --json "$OUT/bench_cuda_compile.json" > "$OUT/bench_cuda_compile.txt" 2>&1
  echo "exit $?" >> "$OUT/bench_cuda_compile.txt"
  tail -n 14 "$OUT/bench_cuda_compile.txt" | tee -a "$OUT/log.txt"
else
  log "3. torch.compile run skipped (not enough time left)"
fi
log "done"

#!/usr/bin/env bash
# The GPU suite: every CUDA code path tested, then the throughput figures, in one table.
#
#   bash benchmarks/gpu_suite.sh [OUT_DIR]          # on a machine with one CUDA GPU
#   GPU_SUITE_DEVICE=cpu GPU_SUITE_SMOKE=1 bash benchmarks/gpu_suite.sh   # plumbing check
#
# Steps, each under its own time limit (180 + 60 + 2 x 75 + 2 x 45 s = 8 minutes at most,
# about half of it expected on one GPU):
#   1. the `gpu`-marked tests (pytest -m gpu): descriptor features and derivatives
#      against the CPU in float64 and float32, neighbour lists, the build stage with
#      database.device: cuda, ANN force and energy-only training, SchNet training and
#      the ASE calculator against CPU runs, the example workflow with
#      database.device and training.device: cuda;
#   2. featurisation throughput (benchmarks/featurize.py: 108-atom Cu/Au cells,
#      float32 and float64, batches of 32 and 256 structures);
#   3. ANN training throughput (benchmarks/train_ann.py: 108-atom cells, force and
#      energy-only training, batch 32 and 256);
#   4. SchNet training throughput (benchmarks/train_schnet.py: 9-atom molecules,
#      batch 8, 64, 512, eager and with --cuda-graphs).
# Logs of every step go to OUT_DIR (default gpu-suite-<date>); the table at the end
# compares with the targets of issue 18: SchNet >= 15,000 structures/s at batch 64,
# ANN force training >= 100,000 structures/s, featurisation >= 5 M atoms/s.
#
# GPU_SUITE_DEVICE (default cuda) and GPU_SUITE_SMOKE=1 (tiny sizes, CPU-friendly)
# exist to check the script itself without a GPU; its figures then mean nothing.

set -u
cd "$(dirname "$0")/.."
DEVICE="${GPU_SUITE_DEVICE:-cuda}"
SMOKE="${GPU_SUITE_SMOKE:-0}"
OUT="${1:-gpu-suite-$(date -u +%Y%m%dT%H%M%S)}"
mkdir -p "$OUT"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
PY="${PYTHON:-python}"
START=$(date +%s)

if [ "$SMOKE" = 1 ]; then
    FEAT_ARGS=(--structures 8 --batch-sizes 4,8 --repeats 1)
    ANN_N=16; ANN_ARGS=(--force-epochs 2 --energy-epochs 2)
    ANN_BATCHES="4 8"
    SCHNET_ARGS=(--batch-sizes 8,16 --repeats 1 --steps 2)
    TEST_LIMIT=300
else
    FEAT_ARGS=(--structures 512 --batch-sizes 32,256 --repeats 5)
    ANN_N=1024; ANN_ARGS=(--force-epochs 4 --energy-epochs 8)
    ANN_BATCHES="32 256"
    SCHNET_ARGS=(--batch-sizes 8,64,512 --repeats 5)
    TEST_LIMIT=180
fi

step() {  # step NAME LIMIT_S COMMAND...: run, log to $OUT/NAME.log, record status
    local name="$1" limit="$2"; shift 2
    local t0=$(date +%s)
    echo "== $name ($(date -u +%H:%M:%S), limit ${limit} s): $*"
    timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "$name $rc $(( $(date +%s) - t0 ))" >>"$OUT/status.txt"
    tail -n 3 "$OUT/$name.log"
}

: >"$OUT/status.txt"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA device')" \
    | tee "$OUT/device.txt"

# 1. tests: the CUDA variants (their CPU references run inside them); without CUDA
#    (the plumbing check) the CPU variants of tests/test_gpu.py
if [ "$DEVICE" = cuda ]; then
    step tests "$TEST_LIMIT" "$PY" -m pytest -m gpu -p no:cacheprovider -q -rs \
        --junitxml="$OUT/tests.xml" tests/test_gpu.py tests/test_descriptor.py \
        tests/test_neighbors.py
else
    step tests "$TEST_LIMIT" "$PY" -m pytest -p no:cacheprovider -q -rs \
        --junitxml="$OUT/tests.xml" tests/test_gpu.py
fi

# 2. featurisation
step featurize 60 "$PY" benchmarks/featurize.py --device "$DEVICE" --dtypes float32,float64 \
    "${FEAT_ARGS[@]}"

# 3. ANN training: one database, both batch sizes
DB="$OUT/ann_cuau.h5"
for b in $ANN_BATCHES; do
    step "train_ann_b$b" 75 "$PY" benchmarks/train_ann.py --device "$DEVICE" --n "$ANN_N" \
        --db "$DB" --batch "$b" "${ANN_ARGS[@]}"
done

# 4. SchNet training, eager and with CUDA graphs
step train_schnet 45 "$PY" benchmarks/train_schnet.py --device "$DEVICE" "${SCHNET_ARGS[@]}"
if [ "$DEVICE" = cuda ]; then
    step train_schnet_graphs 45 "$PY" benchmarks/train_schnet.py --device "$DEVICE" \
        --cuda-graphs "${SCHNET_ARGS[@]}"
fi

"$PY" - "$OUT" "$(( $(date +%s) - START ))" <<'EOF'
import re, sys, xml.etree.ElementTree as ET
from pathlib import Path

out, seconds = Path(sys.argv[1]), int(sys.argv[2])
status = {}
for line in (out / "status.txt").read_text().splitlines():
    name, rc, secs = line.split()
    status[name] = (int(rc), int(secs))
rows = []  # (what, figure, target, ok)


def text(name):
    p = out / f"{name}.log"
    return p.read_text(errors="replace") if p.exists() else ""


def state(name):
    rc, secs = status.get(name, (None, 0))
    return "missing" if rc is None else ("ok" if rc == 0 else
                                         ("timed out" if rc in (124, 137) else f"exit {rc}"))


# tests
xml = out / "tests.xml"
if xml.exists():
    suite = ET.parse(xml).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    n, f, e, s = (int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped"))
    rows.append(("tests (pytest -m gpu)", f"{n - f - e - s} passed, {f + e} failed, "
                 f"{s} skipped", "all pass", f + e == 0 and n - s > 0))
    for case in suite.iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            rows.append((f"  FAILED {case.get('name')}", "", "", False))
else:
    rows.append(("tests (pytest -m gpu)", state("tests"), "all pass", False))

# featurisation: "Cu/Au ... dtype X, device Y" then "  batch  features  features+derivs"
current = None
for line in text("featurize").splitlines():
    if re.match(r"\S.*: \d+ structures, .* dtype \w+", line):   # a set's header
        m = re.match(r"Cu/Au fcc 108-atom cells: .* dtype (\w+)", line)
        current = m.group(1) if m else None                      # (TiO2: not tabled)
        continue
    m = re.match(r"\s+(\d+)\s+([\d,]+)\s+([\d,]+)\s*$", line)
    if m and current:
        bs, f, d = int(m.group(1)), float(m.group(2).replace(",", "")), \
            float(m.group(3).replace(",", ""))
        rows.append((f"featurisation {current}, batch {bs}: features (atoms/s)", f"{f:,.0f}",
                     ">= 5,000,000", f >= 5e6))
        rows.append((f"featurisation {current}, batch {bs}: + derivatives (atoms/s)",
                     f"{d:,.0f}", "", None))
if not any(r[0].startswith("featurisation") for r in rows):
    rows.append(("featurisation", state("featurize"), ">= 5,000,000 atoms/s", False))

# ANN training
for name in sorted(k for k in status if k.startswith("train_ann_b")):
    b = name.split("_b")[1]
    found = False
    for kind, target in (("force training", 1e5), ("energy-only", None)):
        m = re.search(rf"{kind}: median ([\d,]+) structures/s, best ([\d,]+)", text(name))
        if m:
            found = True
            v = float(m.group(1).replace(",", ""))
            rows.append((f"ANN {kind}, batch {b} (structures/s, median)", f"{v:,.0f}",
                         ">= 100,000" if target else "", (v >= target) if target else None))
    if not found:
        rows.append((f"ANN training, batch {b}", state(name), ">= 100,000", False))

# SchNet
for name, label in (("train_schnet", "eager"), ("train_schnet_graphs", "CUDA graphs")):
    if name not in status:
        continue
    found = False
    for m in re.finditer(r"batch\s+(\d+):\s+([\d.,]+) structures/s", text(name)):
        found = True
        bs, v = int(m.group(1)), float(m.group(2).replace(",", ""))
        target = 15000 if bs == 64 else None
        rows.append((f"SchNet training {label}, batch {bs} (structures/s)", f"{v:,.0f}",
                     ">= 15,000" if target else "", (v >= target) if target else None))
    if not found:
        rows.append((f"SchNet training {label}", state(name), ">= 15,000 at batch 64", False))

device = (out / "device.txt").read_text().strip() if (out / "device.txt").exists() else "?"
width = max(len(r[0]) for r in rows)
print(f"\nGPU suite: {device}; {seconds} s; logs in {out}")
print(f"{'measurement':<{width}}  {'result':>24}  {'target':>14}  met")
for what, figure, target, ok in rows:
    mark = "" if ok is None else ("yes" if ok else "NO")
    print(f"{what:<{width}}  {figure:>24}  {target:>14}  {mark}")
for name, (rc, secs) in status.items():
    if rc != 0:
        print(f"step {name}: {state(name)} after {secs} s (see {out / (name + '.log')})")
EOF

#!/usr/bin/env bash
# The prepared GPU check: CUDA tests, component timings and published-size Pong epochs, all JSON under one folder.
#
#   bash benchmarks/gpu_check.sh                      # on a GPU machine (--device cuda, the default)
#   bash benchmarks/gpu_check.sh --device cpu         # dry run on a CPU: the same steps at tiny sizes
#
# Options: --out DIR (default gpu_check), --wheels DIR (default .whl: wheels from benchmarks/gpu_wheels.sh,
# installed with --target when SB3, gymnasium, ale-py or sb3-iris cannot be imported), --epoch-updates N (gradient
# steps per phase in each timed epoch, scaled to the published 200 by epoch.py; default 20), --epochs N (default 2).
#
# Steps (each with its own time limit, so that a GPU run stays under 8 minutes):
#   1. tests/test_device.py on the device (tiny IRIS training in fp32 and bf16, compiled imagination, save/load);
#   2. benchmarks/components.py --preset paper (published batch sizes 256/64/64) in float32 and bfloat16, with
#      compile_imagination off and on;
#   3. benchmarks/epoch.py on PongNoFrameskip-v4 with the published networks and batch sizes, fp32 and bf16:
#      real epochs (collection + the three phases) and the projected time of the full 100k run.
# Writes DIR/parts/*.json and *.log, DIR/summary.json (every step: command, seconds, exit status, its JSON) and
# DIR/parts.tar.gz. Under a tool that returns only a few files, copy summary.json and parts.tar.gz.
set -uo pipefail
cd "$(dirname "$0")/.."

device=cuda
out=gpu_check
wheels=.whl
epoch_updates=20
epochs=2
python=${PYTHON:-python3}
while [ $# -gt 0 ]; do
    case "$1" in
        --device) device="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --wheels) wheels="$2"; shift 2 ;;
        --epoch-updates) epoch_updates="$2"; shift 2 ;;
        --epochs) epochs="$2"; shift 2 ;;
        *) echo "gpu_check.sh: unknown argument '$1' (valid: --device cuda|cpu, --out DIR, --wheels DIR," \
               "--epoch-updates N, --epochs N)" >&2; exit 2 ;;
    esac
done
case "$device" in
    cuda|cpu) ;;
    *) echo "gpu_check.sh: --device must be cuda or cpu, got '$device'" >&2; exit 2 ;;
esac

parts="$out/parts"
mkdir -p "$parts"
steps_file="$parts/steps.tsv"
: >"$steps_file"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} PYTHONUNBUFFERED=1 MPLBACKEND=Agg

if ! "$python" -c "import stable_baselines3, gymnasium, ale_py, sb3_iris" 2>/dev/null; then
    if ! ls "$wheels"/*.whl >/dev/null 2>&1; then
        echo "gpu_check.sh: SB3 / gymnasium / ale-py / sb3-iris are not importable and $wheels has no wheels" \
             "(make them with benchmarks/gpu_wheels.sh)" >&2
        exit 2
    fi
    site=/tmp/sb3_iris_gpu_check_site
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
        "$wheels"/*.whl || exit 2
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi

# step NAME LIMIT_SECONDS COMMAND...: run one step, its stdout to parts/NAME.out, stderr to parts/NAME.log.
step() {
    local name="$1" limit="$2"
    shift 2
    echo "== $name: $*"
    local start end status seconds
    start=$(date +%s%N)
    timeout "$limit" "$@" >"$parts/$name.out" 2>"$parts/$name.log"
    status=$?
    end=$(date +%s%N)
    seconds=$(( (end - start) / 1000000 ))
    seconds="$(( seconds / 1000 )).$(printf '%03d' $(( seconds % 1000 )))"
    printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$seconds" "$*" >>"$steps_file"
    echo "   exit $status, $seconds s"
}

"$python" - >"$parts/environment.out" 2>"$parts/environment.log" <<'EOF'
import json, os, platform, torch
info = {"python": platform.python_version(), "torch": torch.__version__, "cuda_available": torch.cuda.is_available(),
        "cpu_count": os.cpu_count(), "machine": platform.machine()}
if torch.cuda.is_available():
    info.update(gpu=torch.cuda.get_device_name(), gpu_count=torch.cuda.device_count(),
                cuda=torch.version.cuda, bf16_supported=torch.cuda.is_bf16_supported())
print(json.dumps(info))
EOF

# 1. The tests that exercise the device.
step tests 240 env SB3_IRIS_TEST_DEVICE="$device" "$python" -m pytest tests/test_device.py -q -p no:cacheprovider \
    --junitxml="$parts/tests.xml"

# 2. Component timings.
if [ "$device" = cuda ]; then
    components=(--preset paper --device cuda --tokenizer-batch 256 --wm-batch 64 --ac-batch 64 --warmup 2 --repeats 5)
    limit=90
else
    components=(--preset tiny --device cpu --threads 1 --warmup 0 --repeats 1)
    limit=240
fi
for dtype in float32 bfloat16; do
    for compiled in off on; do
        step "components_${dtype}_compile_${compiled}" "$limit" "$python" benchmarks/components.py "${components[@]}" \
            --dtype "$dtype" --compile-imagination "$compiled"
    done
done

# 3. Published-size Pong epochs and the projected 100k run.
if [ "$device" = cuda ]; then
    epoch=(--device cuda --updates "$epoch_updates" --epochs "$epochs" --replay-steps 2000)
    limit=150
else
    epoch=(--device cpu --threads 1 --updates 1 --epochs 1 --replay-steps 100 --steps-per-epoch 20
           --tokenizer-batch 4 --wm-batch 2 --ac-batch 2)
    limit=300
fi
for precision in off on; do
    step "epoch_pong_mixed_precision_${precision}" "$limit" "$python" benchmarks/epoch.py --env PongNoFrameskip-v4 \
        "${epoch[@]}" --mixed-precision "$precision"
done

"$python" - "$out" "$device" <<'EOF'
import json, pathlib, sys
out, device = pathlib.Path(sys.argv[1]), sys.argv[2]
parts = out / "parts"
def parsed(path):
    text = path.read_text() if path.is_file() else ""
    start = text.find("{")
    try:
        return json.loads(text[start:]) if start >= 0 else None
    except json.JSONDecodeError:
        return None
steps = []
for line in (parts / "steps.tsv").read_text().splitlines():
    name, status, seconds, command = line.split("\t", 3)
    result = parsed(parts / f"{name}.out")
    if result is not None:
        (parts / f"{name}.json").write_text(json.dumps(result, indent=2))
    tail = (parts / f"{name}.out").read_text().splitlines()[-3:] if name == "tests" else None
    steps.append({"name": name, "exit_status": int(status), "seconds": float(seconds), "command": command,
                  "result": result, "output_tail": tail})
summary = {"device": device, "environment": parsed(parts / "environment.out"), "steps": steps,
           "total_seconds": sum(s["seconds"] for s in steps), "all_passed": all(s["exit_status"] == 0 for s in steps)}
(out / "summary.json").write_text(json.dumps(summary, indent=2))
print(json.dumps({k: summary[k] for k in ("device", "total_seconds", "all_passed")}))
for s in steps:
    print(f"{s['name']}: exit {s['exit_status']}, {s['seconds']:.1f} s")
EOF
tar -czf "$out/parts.tar.gz" -C "$out" parts
"$python" -c "import json, sys; sys.exit(0 if json.load(open('$out/summary.json'))['all_passed'] else 1)"

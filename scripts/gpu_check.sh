#!/usr/bin/env bash
# The GPU paths that CPU tests cannot reach, checked in one go on one GPU (about 5-10 minutes, most of it model
# loading): QLoRA under ZeRO-3 (4-bit weights stored in bf16 so ZeRO-3 can shard them), bf16 LoRA under ZeRO-2, the
# vllm backend in-process, and `lema eval` of a trained adapter through vllm. Prints PASS/FAIL per item and exits
# non-zero if any failed. Needs: lema with the train extra, bitsandbytes and vllm installed for CUDA.
# Usage: scripts/gpu_check.sh            (PYTHON=/path/to/python to pick the interpreter; KEEP=1 keeps the work dir)
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/services${PYTHONPATH:+:$PYTHONPATH}"
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/lema-gpu-check.XXXXXX")
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$WORK"' EXIT
export LEMA_CACHE_DIR=${LEMA_CACHE_DIR:-$WORK/cache}
declare -a RESULTS=()
FAILED=0

check() {  # check NAME TIMEOUT_S COMMAND...: run one item, log to $WORK/NAME.log, record PASS/FAIL with its time
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  local runner=(timeout "$limit")
  [ "$(type -t "$1")" = function ] && runner=()  # a shell function runs here; each of them is quick
  if "${runner[@]}" "$@" >"$WORK/$name.log" 2>&1; then
    RESULTS+=("PASS  $name  ($((SECONDS - start))s)")
  else
    RESULTS+=("FAIL  $name  ($((SECONDS - start))s): $(grep -v '^\s*$' "$WORK/$name.log" | tail -n 1 | cut -c1-200)")
    FAILED=1
    echo "---- $name: last lines of $WORK/$name.log"; tail -n 25 "$WORK/$name.log"
  fi
  echo "${RESULTS[-1]}"
}

# ---- a small LEMA dataset from the demo problems: gold CoT, and a correction of a first step made wrong on purpose
"$PYTHON" - "$WORK" <<'PY'
import json, re, sys
from pathlib import Path
from lema.records import CorrectionExample, CotExample, Question
from lema.stages.dataset import CORRECTION_INSTRUCTION, correction_output

root = Path(sys.argv[1]) / "store" / "data"
root.mkdir(parents=True)
cot, corrections = [], []
for line in Path("examples/data/demo_problems.jsonl").read_text().splitlines():
    row = json.loads(line)
    reasoning, _, gold = row["answer"].rpartition("####")
    steps = [s for s in reasoning.strip().split("\n") if s]
    q = Question.create(row["question"], gold.strip(), "gsm8k", "demo_problems.jsonl")
    solution = "\n".join(f"Step {i}: {s}" for i, s in enumerate(steps, 1)) + f"\nThe answer is {q.gold}."
    cot.append(CotExample(id=f"c-{q.id}", question_id=q.id, task="gsm8k", source="gold", model=None, round=0,
                          input=q.text, output=solution, answer=q.gold))
    wrong = re.sub(r"(\d+)(?!.*\d)", lambda m: str(int(m.group(1)) + 1), steps[0])
    wrong_solution = "\n".join(f"Step {i}: {s}" for i, s in enumerate([wrong, *steps[1:]], 1))
    corrections.append(CorrectionExample(
        id=f"x-{q.id}", question_id=q.id, path_id=f"p-{q.id}", task="gsm8k", round=0, question=q.text,
        wrong_solution=wrong_solution, wrong_answer=None, incorrect_step=1,
        explanation="The first calculation is off by one.", corrected_solution=solution, answer=q.gold,
        sampler_model="check", corrector_model="check", prompt_version="check",
        input=f"Question: {q.text}\n\nSolution:\n{wrong_solution}\n\n{CORRECTION_INSTRUCTION}",
        output=correction_output(1, "The first calculation is off by one.", solution)))
(root / "cot.jsonl").write_text("".join(r.model_dump_json() + "\n" for r in cot))
(root / "corrections.jsonl").write_text("".join(r.model_dump_json() + "\n" for r in corrections))
PY

train_config() {  # train_config NAME DEEPSPEED_JSON QUANTIZE: a 12-step run of SmolLM2-135M with a checkpoint at 6
  cat >"$WORK/$1.yaml" <<YAML
run: {name: $1, work_dir: $WORK/$1-work}
model: {name: smollm2-135m, quantize_4bit: $3, gradient_checkpointing: true}
data: {prefix: data, max_length: 512}
optim: {max_steps: 12, batch_size: 4, logging_steps: 2}
deepspeed: {config: $2}
checkpoints: {prefix: train/$1, every_steps: 6}
store: {kind: local, root: $WORK/store}
YAML
}

verify_run() {  # verify_run NAME EXPECT_4BIT: the manifest says bf16 (and 4-bit as expected) and the adapter exists
  "$PYTHON" - "$WORK/store/train/$1" "$2" <<'PY'
import json, sys
from pathlib import Path
run, want_4bit = Path(sys.argv[1]), sys.argv[2] == "true"
manifest = json.loads((run / "manifest.json").read_text())
fingerprint = manifest["fingerprint"]
assert fingerprint["model.bf16"] is True, f"trained without bf16: {fingerprint}"
assert fingerprint["model.4bit"] is want_4bit, f"4-bit is {fingerprint['model.4bit']}, expected {want_4bit}"
assert manifest["metrics"]["global_step"] == 12, manifest["metrics"]
assert (run / "adapter" / "adapter_model.safetensors").is_file(), "no adapter stored"
print("manifest ok:", {k: fingerprint[k] for k in ("model.bf16", "model.4bit", "world_size")}, manifest["metrics"])
PY
}

check gpu 120 "$PYTHON" -c '
import torch
assert torch.cuda.is_available(), "no CUDA device visible to torch"
assert torch.cuda.is_bf16_supported(), "this GPU has no bf16"
import bitsandbytes
print(torch.cuda.get_device_name(0), "torch", torch.__version__, "bitsandbytes", bitsandbytes.__version__)'

train_config qlora-zero3 training_job/ds_zero3.json auto
check qlora-zero3-train 300 "$PYTHON" -m lema.cli train --config "$WORK/qlora-zero3.yaml"
check qlora-zero3-manifest 60 verify_run qlora-zero3 true

train_config bf16-zero2 training_job/ds_zero2.json never
check bf16-zero2-train 240 "$PYTHON" -m lema.cli train --config "$WORK/bf16-zero2.yaml"
check bf16-zero2-manifest 60 verify_run bf16-zero2 false

# vLLM in this process, sharing the GPU politely; eager mode skips CUDA graph capture, which a check does not need.
cat >"$WORK/vllm.yaml" <<YAML
llms:
  smollm2:
    backend: vllm
    model: smollm2-135m
    engine_args: {gpu_memory_utilization: 0.4, enforce_eager: true}
YAML
check vllm-backend 300 "$PYTHON" - "$WORK/vllm.yaml" <<'PY'
import sys
from pathlib import Path
from lema.config import LemaSettings, load_settings
from lema.llm.base import ChatMessage, GenerationRequest
from lema.llm.factory import create_backend
from lema.records import GenerationParams

settings = load_settings(Path(sys.argv[1]), [], settings_cls=LemaSettings).llms["smollm2"]
backend = create_backend(settings)
try:
    ask = GenerationRequest((ChatMessage("user", "What is 2 + 3?"),), GenerationParams(temperature=0.0, max_tokens=24))
    (first,), (again,) = backend.generate([ask, ask])
finally:
    backend.close()
assert first.text.strip(), "vllm returned an empty completion"
assert first.text == again.text, "greedy decoding differed between two identical requests"
print("vllm:", repr(first.text[:80]))
PY

check eval-vllm-adapter 300 "$PYTHON" -m lema.cli eval --config "$WORK/vllm.yaml" --llm smollm2 \
  --adapter "$WORK/store/train/bf16-zero2/adapter" --data examples/data/demo_problems.jsonl --max-tokens 160 \
  --output "$WORK/eval.jsonl"

echo
echo "== scripts/gpu_check.sh summary"
printf '%s\n' "${RESULTS[@]}"
exit $FAILED

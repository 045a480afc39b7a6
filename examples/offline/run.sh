#!/usr/bin/env bash
# The whole loop, fully offline, with the scripted backend and the real MiniLM embedder.
#
#   examples/offline/run.sh STORE        # STORE: a directory (created if missing)
#   examples/offline/run.sh http://HOST:PORT   # or a Chroma server (`chroma run --path DIR --port PORT`)
#
# Pass 1 attempts three GSM8K problems (4 attempts each), pairs successes with failures,
# reflects on each contrast and stores the insights. Pass 2 attempts two new problems: the
# recalled insights appear in their prompts (shown from the transcript) and their uses,
# wins and losses are counted. Last, CRPS: each analysed contrast becomes a clean solution,
# re-verified, and the chains (plus the RFT and best-of baselines) are exported as
# fine-tuning data (to $CRPS_EXPORT_OUT, default STORE/exports/offline). Uses `crps-agent`
# from PATH, else the repo's .venv.
set -euo pipefail
STORE="${1:?usage: examples/offline/run.sh STORE (a directory or http://HOST:PORT)}"
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
CLI="crps-agent"
command -v crps-agent >/dev/null 2>&1 || CLI="$ROOT/.venv/bin/crps-agent"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
COMMON=(--backend scripted --script "$HERE/script.yaml" --store "$STORE")
TRANSCRIPT="$(mktemp)"
trap 'rm -f "$TRANSCRIPT"' EXIT
case "$STORE" in
  http://*|https://*)
    OUT="${CRPS_EXPORT_OUT:-$(mktemp -d)/export}"
    echo "== store: the Chroma server at $STORE (run checkpoints in ~/.cache/crps-agent)" ;;
  *)
    OUT="${CRPS_EXPORT_OUT:-$STORE/exports/offline}"
    echo "== store: the directory $STORE" ;;
esac

# The scripted model answers the same with or without notes, so: no admission (it makes an
# insight active only on evidence that it helps, and would retire them all), no note
# dropout (counterfactual credit) and no exploration of young notes (each would split a
# search into several scripted calls).
export CRPS_MEMORY__ADMISSION=0 CRPS_LEARN__DROPOUT=0 CRPS_MEMORY__EXPLORE_SLOTS=0

echo "== pass 1: learn from 3 problems, 4 attempts each"
"$CLI" learn "$HERE/tasks.jsonl" "${COMMON[@]}" --budget 4 --json
echo
echo "== insights after pass 1"
"$CLI" insights list --store "$STORE"

echo
echo "== pass 2: 2 new problems, with recalled insights in the prompt"
# No ablation here: a learn run holds out a random 10% of tasks (no notes, a baseline
# sample), and this pass is meant to show the notes every time.
CRPS_MEMORY__ABLATION_SHARE=0 CRPS_TRANSCRIPT="$TRANSCRIPT" "$CLI" learn "$HERE/tasks-pass2.jsonl" "${COMMON[@]}" --budget 3 --json
echo
echo "== notes recalled into the pass-2 solve prompts"
python3 - "$TRANSCRIPT" <<'PY'
import json, re, sys
for line in open(sys.argv[1], encoding="utf-8"):
    rec = json.loads(line)
    if rec["purpose"] != "solve" or rec.get("meta", {}).get("admission"):
        continue
    notes = re.search(r"<notes>.*?</notes>", rec["prompt"], re.S)
    problem = rec["prompt"].split("Problem:\n", 1)[-1].split("\n", 1)[0][:70]
    print(f"-- {problem}...")
    print(notes.group(0) if notes else "(no notes recalled)")
PY
echo
echo "== insights after pass 2 (uses, wins and losses counted)"
"$CLI" insights list --store "$STORE"
"$CLI" insights stats --store "$STORE"

echo
echo "== CRPS: synthesize verified chains from the contrasts, export them and the baselines"
"$CLI" export "${COMMON[@]}" --method all --out "$OUT"
echo "(TRL conversational JSONL, DPO pairs and a meta.json sidecar per method in $OUT)"

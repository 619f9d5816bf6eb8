#!/usr/bin/env bash
# Run percept over whole folders: outputs mirrored under one output folder, a JSON-lines log,
# resumable, and a non-zero exit status if any input failed.
#
#   examples/batch.sh [-t TASK] [-o OUT] [-l LOG] FOLDER... [-- PERCEPT_OPTION...]
#
#   examples/batch.sh -o out photos/ scans/ -- --model tiny --steps 10
#     -> out/photos/<sub-folders>/NAME.depth.*, out/scans/<sub-folders>/NAME.depth.*, out/log.jsonl
#
# Each FOLDER is searched recursively (`percept TASK FOLDER -r`) and its outputs go to OUT/<its name>,
# keeping its sub-folders, so equal file names in different places never collide. percept's `--json`
# line for every input (status "ok", "skipped" or "failed", inputs, outputs, seconds, settings) is
# appended to LOG. Re-running the same command resumes: percept skips inputs whose outputs all exist
# (add `-- --overwrite` to predict again). Exit status: 0 when every input is done, 1 when some input
# failed (the others are still written), 2 on bad arguments. PERCEPT="python -m percept_cli" runs
# another percept than the one on PATH.
set -euo pipefail

usage() {
    cat >&2 <<'EOF'
usage: batch.sh [-t TASK] [-o OUT] [-l LOG] FOLDER... [-- PERCEPT_OPTION...]
  -t TASK  depth (default) or flow (flow: each folder of frames is a sequence)
  -o OUT   output folder (default: percept-out); FOLDER's outputs go to OUT/<FOLDER's name>
  -l LOG   JSON-lines log, appended to (default: OUT/log.jsonl)
  after --  options for percept, e.g. -- --model tiny --steps 10 --ensemble 4
Re-run the same command to resume. Exit status: 0 all done, 1 some input failed, 2 bad arguments.
EOF
    exit 2
}

task=depth
out=percept-out
log=""
while getopts ":t:o:l:h" opt; do
    case "$opt" in
        t) task=$OPTARG ;;
        o) out=$OPTARG ;;
        l) log=$OPTARG ;;
        h) usage ;;
        :) echo "batch.sh: -$OPTARG needs a value" >&2; usage ;;
        *) echo "batch.sh: unknown option -$OPTARG" >&2; usage ;;
    esac
done
shift $((OPTIND - 1))

case "$task" in
    depth | flow) ;;
    *) echo "batch.sh: -t must be depth or flow, got '$task'" >&2; usage ;;
esac

# FOLDER... up to `--`; the rest goes to percept as it is.
folders=()
while (($#)) && [[ $1 != -- ]]; do
    folders+=("$1")
    shift
done
(($#)) && shift  # the `--`
percept_options=("$@")

((${#folders[@]})) || { echo "batch.sh: no FOLDER given" >&2; usage; }

# Check every folder before any work, and give each a distinct name under OUT.
names=()
for folder in "${folders[@]}"; do
    [[ -d $folder ]] || { echo "batch.sh: '$folder' is not a folder" >&2; usage; }
    name=$(basename "$(cd "$folder" && pwd)")
    for seen in "${names[@]+"${names[@]}"}"; do
        [[ $seen != "$name" ]] || { echo "batch.sh: two folders are named '$name'; their outputs would mix" >&2; usage; }
    done
    names+=("$name")
done

read -r -a percept <<<"${PERCEPT:-percept}"
log=${log:-$out/log.jsonl}
mkdir -p "$out" "$(dirname "$log")"

status=0
for i in "${!folders[@]}"; do
    echo "batch.sh: ${folders[i]} -> $out/${names[i]}" >&2
    rc=0
    "${percept[@]}" "$task" "${folders[i]}" --recursive --output "$out/${names[i]}" --json \
        "${percept_options[@]+"${percept_options[@]}"}" >>"$log" || rc=$?
    if ((rc == 2)); then
        exit 2  # a usage error (a bad percept option) fails every folder alike: stop at the first
    fi
    ((rc == 0)) || status=1
done

if ((status)); then
    echo "batch.sh: some inputs failed (lines with \"status\": \"failed\" in $log)" >&2
fi
exit "$status"

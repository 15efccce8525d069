#!/bin/sh
# Claims intake at scale, on one node: the figures of docs/benchmarks.md ("Claims intake").
#
#   cargo build --release -p troupe-ops && sh examples/claims/bench.sh [DOCUMENTS]
#
# For each form of the same 7-step pipeline, streaming (`map.from`) and barrier
# (`map.over = "steps.X.output"`): submit; time to the first finished document, to the end of the
# first pass (degraded: 3 % dead-lettered at OCR); peak RSS; then the fix and one bulk redrive, and
# the time until `succeeded`. Checks the invariants: every document output exactly once, no dead
# letter left. Runs from the repository root; traffic stays on 127.0.0.1.
set -eu
N=${1:-15000}
BIN=${TROUPE_BIN:-target/release/troupe}
work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
head -n "$N" examples/claims/claims.txt > "$work/claims.txt"
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }

run_form() {
    form=$1
    spec=$work/spec-$form.toml
    out=$work/out-$form.txt
    sed -e "s#claims/claims.txt#$work/claims.txt#" \
        -e "s#examples/claims/encodings-installed#$work/fixed-$form#" \
        -e "s#\"claims-out.txt\"#\"$out\"#" examples/claims-intake.toml > "$spec"
    if [ "$form" = barrier ]; then
        sed -i -e 's#map = { from = "\([a-z]*\)" }#map = { over = "steps.\1.output" }#' \
            -e '/id = "ingest"/!s#"{{ item }}"#"{{ item.doc }}"#' "$spec"
        # (ingest's own argv keeps {{ item }}: its items are the lines)
        sed -i '0,/"{{ item.doc }}"/s##"{{ item }}"#' "$spec"
    fi
    data=$work/data-$form
    "$BIN" dev --listen 127.0.0.1:0 --data "$data" > "$work/node-$form.log" 2>&1 &
    pid=$!
    i=0
    while [ ! -s "$data/api.addr" ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
    api="http://$(cat "$data/api.addr")"
    t0=$(now)
    "$BIN" --api "$api" submit "$spec" --wait > "$work/wait-$form.txt" 2>/dev/null &
    waiter=$!
    i=0
    while [ ! -s "$out" ] && [ $i -lt 6000 ]; do sleep 0.02; i=$((i + 1)); done
    first=$(since "$t0")
    wait $waiter || true   # exit 3: degraded, as expected
    pass=$(since "$t0")
    dead=$("$BIN" --api "$api" --json dlq list --limit 1 | sed -n 's/.*"total": \([0-9]*\).*/\1/p')
    done1=$(wc -l < "$out")
    touch "$work/fixed-$form"
    t1=$(now)
    "$BIN" --api "$api" dlq redrive --step ocr --grep "unsupported encoding" > /dev/null
    i=0
    until "$BIN" --api "$api" status wf-1 | head -n 1 | grep -q ': succeeded'; do
        sleep 0.1; i=$((i + 1)); [ $i -lt 3000 ] || { echo "wf-1 did not succeed"; exit 1; }
    done
    redrive=$(since "$t1")
    rss=$(awk '/VmHWM/ { print $2 }' "/proc/$pid/status")
    total=$(wc -l < "$out")
    dups=$(sort "$out" | uniq -d | wc -l)
    left=$("$BIN" --api "$api" --json dlq list --limit 1 | sed -n 's/.*"total": \([0-9]*\).*/\1/p')
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
    tasks=$((7 * N))
    rate=$(awk -v t="$tasks" -v s="$pass" 'BEGIN { printf "%.0f", t / s }')
    echo "$form: $N documents x 7 steps; first document out after ${first}s; first pass ${pass}s ($rate tasks/s) -> degraded, $dead dead letters, $done1 documents out; bulk redrive to succeeded ${redrive}s; peak RSS $((rss / 1024)) MiB; output $total documents, $dups twice, $left dead letters left"
    [ "$total" -eq "$N" ] && [ "$dups" -eq 0 ] && [ "$left" -eq 0 ] || { echo "INVARIANT BROKEN"; exit 1; }
}

# 10,000 dead letters (the builtin `fail` handler fails attempt 1 only), one bulk redrive.
dlq10k() {
    data=$work/data-dlq
    "$BIN" dev --listen 127.0.0.1:0 --data "$data" > "$work/node-dlq.log" 2>&1 &
    pid=$!
    i=0
    while [ ! -s "$data/api.addr" ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
    api="http://$(cat "$data/api.addr")"
    cat > "$work/dlq.toml" <<SPEC
name = "dlq-10k"
[[step]]
id = "a"
handler = "fail"
with = { message = "down", attempts = 1 }
map = { range = [0, 10000] }
on_failure = "dead-letter"
[[step]]
id = "b"
needs = ["a"]
handler = "noop"
map = { from = "a" }
SPEC
    "$BIN" --api "$api" submit "$work/dlq.toml" --wait > /dev/null 2>&1 || true  # degraded: exit 3
    t1=$(now)
    "$BIN" --api "$api" dlq redrive --all > /dev/null
    cmd=$(since "$t1")
    i=0
    until "$BIN" --api "$api" status wf-1 | head -n 1 | grep -q ': succeeded'; do
        sleep 0.05; i=$((i + 1)); [ $i -lt 2000 ] || { echo "dlq-10k did not succeed"; exit 1; }
    done
    echo "dlq-10k: 10,000 dead letters: bulk redrive answered in ${cmd}s (one command); workflow succeeded $(since "$t1")s after the redrive"
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
}

case "${ONLY:-all}" in
all) run_form streaming; run_form barrier; dlq10k ;;
dlq) dlq10k ;;
*) run_form "$ONLY" ;;
esac

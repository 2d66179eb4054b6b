#!/bin/bash
# The demo's four steps (pretrain, default run, rank sweep, report; no install), timed, from an empty
# FORGETLAB_HOME, for the source tree SRC (e.g. a 'git worktree' of an older commit) with one venv's
# Python, so that two releases compare on one machine:
#   bash benchmarks/demo_steps.sh SRC WORK [PYTHON]      e.g.  bash benchmarks/demo_steps.sh $PWD/src "$(mktemp -d)"
set -euo pipefail
src=$(realpath "$1"); work=$2; py=${3:-$(realpath .venv/bin/python)}
rm -rf "$work" && mkdir -p "$work" && cp -r "$(dirname "$src")/sweeps" "$work/"
cd "$work"
export FORGETLAB_HOME=$work/.cache/forgetlab FORGETLAB_PROGRESS=0 PYTHONPATH=$src
stamp() { date +%s.%N; }
t0=$(stamp); "$py" -m forgetlab pretrain > log.txt 2>&1
t1=$(stamp); "$py" -m forgetlab run >> log.txt 2>&1
t2=$(stamp); "$py" -m forgetlab sweep sweeps/demo.yaml --quiet >> log.txt 2>&1
t3=$(stamp); "$py" -m forgetlab report runs/default runs/demo-rank-sweep --out runs/demo-report >> log.txt 2>&1
t4=$(stamp)
python3 -c "print('$src: pretrain %.0f s, run %.0f s, sweep %.0f s, report %.0f s, total %.0f s' % ($t1-$t0, $t2-$t1, $t3-$t2, $t4-$t3, $t4-$t0))"

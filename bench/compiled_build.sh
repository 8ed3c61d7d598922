#!/usr/bin/env bash
# An experiment, not shipped: the IR builder compiled to C with mypyc, against
# the pure-Python package, in alternating processes (bench/parts.py --sections ir).
#
#   pip install mypy==1.13.0 && bash bench/compiled_build.sh [models] [rounds]
#
# Compiles a copy of torchtrace/ in a temporary folder (record/build.py,
# record/linking.py, record/autograd.py, fingerprint.py: the build's own code;
# ~3 minutes, mypy type-checks torch's stubs) and puts it first on PYTHONPATH.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
models=${1:-mlp,gpt2-tiny}
rounds=${2:-3}
command -v mypyc >/dev/null || { echo "error: mypyc not found. Fix: pip install mypy==1.13.0" >&2; exit 2; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp -r "$root/torchtrace" "$tmp/"
(cd "$tmp" && mypyc torchtrace/record/build.py torchtrace/record/linking.py torchtrace/record/autograd.py \
    torchtrace/fingerprint.py >"$tmp/mypyc.log" 2>&1) || { cat "$tmp/mypyc.log" >&2; exit 1; }
(cd / && PYTHONPATH="$tmp" python -c "import torchtrace.record.build as b, sys; sys.exit(not b.__file__.endswith('.so'))") \
    || { echo "error: the compiled copy is not the one imported" >&2; exit 1; }
for i in $(seq "$rounds"); do
    echo "== round $i: pure Python"
    python "$here/parts.py" --sections ir --models "$models" | grep -E '^\[|build'
    echo "== round $i: compiled (mypyc)"
    PYTHONPATH="$tmp" python "$here/parts.py" --sections ir --models "$models" | grep -E '^\[|build'
done

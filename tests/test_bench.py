"""bench/ is not part of the test suite, but its scripts must keep running:
each is run here once with the smallest settings (nothing is timed or
compared; bench/README.md has the numbers). A rename inside torchtrace once
left ``bench/parts.py`` failing at import for a whole session."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"

RUNS = {
    "bench.py": (["--models", "mlp", "--sections", "overhead,ir,steps", "--budget", "0.05", "--min-reps", "2",
                  "--max-reps", "2", "--warmup", "1", "--step-block", "2"],
                 ["IR build+encode µs/op, mlp fwd", "JSON bytes/op, mlp fwd", "non-sampled step ×plain, mlp"]),
    "parts.py": (["--models", "mlp", "--reps", "2", "--sections", "ir,micro"],
                 ["[mlp] IR, forward:", "WeakIdKeyDictionary.get"]),
    "bench_render.py": (["--reps", "1", "--layers", "2"], ["gpt2-2"]),
    "cuda_check.py": (["--device", "cpu", "--no-timings", "--only", "save_load,recorder_every"], ["2 passed, 0 failed"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(RUNS))
def test_bench_script_runs(script, tmp_path):
    args, expected = RUNS[script]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, str(BENCH / script), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    for text in expected:
        assert text in proc.stdout, (text, proc.stdout[-3000:])

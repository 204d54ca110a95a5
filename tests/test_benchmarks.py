"""Smoke test of benchmarks/mask_overhead.py: it runs and writes the documented JSON.

Timings are not tested; only that they are measured (positive numbers).
"""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_FIELDS = ("plain_ms_per_step", "wrapped_ms_per_step", "ratio", "repeats", "steps", "batch_size")


def test_mask_overhead_quick(tmp_path):
    output = tmp_path / "mask_overhead.json"
    result = subprocess.run(
        [sys.executable, "benchmarks/mask_overhead.py", "--quick", "--output", str(output)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(output.read_text())
    assert json.loads(result.stdout) == report
    assert report["quick"] is True
    assert report["tensorflow"] and report["keras"] and report["cpu_count"] > 0
    assert "1.05" in report["target"]
    assert set(report["models"]) == {"lenet300_100", "conv2"}
    for name, entry in report["models"].items():
        for field in MODEL_FIELDS:
            assert entry[field] > 0, (name, field, entry[field])
        assert isinstance(entry["meets_target"], bool)
        assert len(entry["ratio_per_repeat"]) == entry["repeats"]
        assert 0 < entry["mask_density"] < 0.5

"""bench/models.py: the --smoke run writes a complete JSON report with plausible numbers."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from conftest import REPO

SCRIPT = REPO / "bench" / "models.py"
ROW_KEYS = {
    "model",
    "params_m",
    "gflops",
    "output_stride",
    "fp32_img_s",
    "bf16_cl_img_s",
    "speedup",
}


def run_bench(*args: str) -> subprocess.CompletedProcess:
    """Run the script with ``args`` from the repo root; captures stdout/stderr."""
    cmd = [sys.executable, str(SCRIPT), *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[dict, str]:
    """(JSON payload, stdout) of one ``--smoke --json`` run."""
    path = tmp_path_factory.mktemp("bench") / "models.json"
    proc = run_bench("--smoke", "--json", str(path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(path.read_text()), proc.stdout


def test_smoke_json_has_machine_settings_and_rows(smoke):
    payload, _ = smoke
    assert set(payload["machine"]) == {"cpu", "cores", "torch", "threads", "native_bf16", "gpu"}
    assert isinstance(payload["machine"]["native_bf16"], bool)
    assert payload["machine"]["threads"] >= 1
    settings = payload["settings"]
    assert (settings["size"], settings["batch"], settings["repeats"], settings["warmup"]) == (
        64,
        1,
        1,
        0,
    )
    assert settings["flops_size"] == 320 and "2*MACs" in settings["flops"]
    rows = payload["models"]
    assert len(rows) == 2 and len({r["model"] for r in rows}) == 2
    for row in rows:
        assert set(row) == ROW_KEYS
        for key in ROW_KEYS - {"model"}:
            assert row[key] > 0 and math.isfinite(row[key]), (row["model"], key)
        assert row["speedup"] == pytest.approx(row["bf16_cl_img_s"] / row["fp32_img_s"])


def test_smoke_picks_smallest_models_with_known_params_and_stride(smoke):
    payload, stdout = smoke
    rows = {r["model"]: r for r in payload["models"]}
    assert set(rows) == {"unet_mobilenetv2", "localizer_mobilenetv2"}  # the two smallest Params
    unet = rows["unet_mobilenetv2"]
    assert unet["params_m"] == pytest.approx(1.55, abs=0.01)  # yaml header: 1.6M
    assert unet["output_stride"] == 32
    assert rows["localizer_mobilenetv2"]["params_m"] == pytest.approx(1.3, abs=0.05)  # yaml: 1.3M
    assert rows["localizer_mobilenetv2"]["output_stride"] == 32
    table = [line for line in stdout.splitlines() if line.startswith("| unet_mobilenetv2 |")]
    assert len(table) == 1 and "| 1.6 |" in table[0]
    assert "native bf16:" in stdout


def test_unknown_model_is_a_usage_error():
    proc = run_bench("--models", "unet,no_such_model")
    assert proc.returncode == 2
    assert "no_such_model" in proc.stderr and "unet_mobilenetv2" in proc.stderr

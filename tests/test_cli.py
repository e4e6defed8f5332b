"""The `amoeba` command end to end on the tiny model, and its one-line errors on bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

AMOEBA = [sys.executable, "-c", "from amoeba_search.cli import main; main()"]


def amoeba(*args, cwd=None):
    env = {**os.environ, "AMOEBA_DATA_DIR": ""}
    return subprocess.run([*AMOEBA, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env)


def test_help_lists_commands():
    run = amoeba("--help")
    assert run.returncode == 0
    for command in ("info", "subnet", "extract", "evaluate", "demo"):
        assert command in run.stdout


def test_subnet_extract_evaluate_pipeline(tiny_dir, tiny_data, tmp_path):
    spec = tmp_path / "s.json"
    run = amoeba("subnet", "--model", tiny_dir, "--keep", "0-1,4", "--heads", "4", "--mlp", "0.5", "--out", spec)
    assert run.returncode == 0, run.stderr
    assert json.loads(spec.read_text())["layers"] == [0, 1, 4]
    run = amoeba("extract", "--model", tiny_dir, "--subnet", spec, "--out", tmp_path / "ckpt")
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "ckpt" / "config.json").is_file()
    record = tmp_path / "eval.json"
    run = amoeba("evaluate", "--model", tiny_dir, "--subnet", spec, "--tasks", "wikitext2,arc_easy,mmlu",
                 "--seq-len", "64", "--questions", "2", "--windows", "2", "--data-dir", tiny_data, "--out", record)
    assert run.returncode == 0, run.stderr
    result = json.loads(record.read_text())
    assert result["tasks"]["wikitext2"]["windows"] == 2 and result["tasks"]["arc_easy"]["questions"] == 2
    assert result["environment"]["torch"] and result["subnet"]["summary"].startswith("3/5 layers")


@pytest.mark.parametrize("args, message", [
    (["evaluate", "--model", "/no/such/model", "--data-dir", "{data}"], "does not exist"),
    (["evaluate", "--model", "{tiny}", "--tasks", "arc_esy", "--data-dir", "{data}"], "did you mean 'arc_easy'"),
    (["evaluate", "--model", "{tiny}", "--data-dir", "/no/such/data"], "data directory not found"),
    (["evaluate", "--model", "{tiny}", "--subnet", "{bad}", "--data-dir", "{data}"], "not valid JSON"),
    (["extract", "--model", "{tiny}", "--subnet", "{out_of_range}", "--out", "{tmp}/x"], "layer 7 out of range 0..4"),
    (["subnet", "--model", "{tiny}", "--heads", "5", "--out", "{tmp}/s.json"], "allowed: [2, 3, 4, 6]"),
    (["subnet", "--model", "{tmp}", "--out", "{tmp}/s.json"], "has no config.json"),
    (["search", "--device", "amd-epyc", "--flow", "torch-eager", "--model-dtype", "int8",
      "--target-ratio", "0.6"], "--model-dtype 'int8'"),
    (["select", "--model", "{tiny}", "--dtype", "fp8", "--out", "{tmp}/x"], "--dtype 'fp8': choose auto"),
    (["finetune", "--model", "{tiny}", "--dtype", "half", "--out", "{tmp}/x"], "--dtype 'half': choose auto"),
    (["demo", "--space", "diagonal", "--out", "{tmp}/x"], "--space 'diagonal': choose heterogeneous or uniform"),
    (["demo", "--proxy", "self-ppl", "--out", "{tmp}/x"], "did you mean 'self_ppl'"),
])
def test_bad_input_is_one_line_exit_2(args, message, tiny_dir, tiny_data, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    out_of_range = tmp_path / "range.json"
    out_of_range.write_text(json.dumps({"layers": [0, 7]}))
    fill = {"tiny": tiny_dir, "data": tiny_data, "bad": bad, "out_of_range": out_of_range, "tmp": tmp_path}
    run = amoeba(*[a.format(**fill) for a in args])
    assert run.returncode == 2, run.stdout + run.stderr
    assert "Traceback" not in run.stderr
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], run.stderr
    assert not Path(tmp_path / "x").exists()


def test_select_then_subnet_from_strategy(tiny_dir, tiny_data, tmp_path):
    strategy = tmp_path / "strategy.json"
    run = amoeba("select", "--model", tiny_dir, "--max-removed", "2", "--samples", "2", "--seq-len", "32",
                 "--data-dir", tiny_data, "--out", strategy)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "strategy.json.cache.jsonl").is_file()
    rows = json.loads(strategy.read_text())["depth"]["table"]
    spec = tmp_path / "s.json"
    run = amoeba("subnet", "--model", tiny_dir, "--strategy", strategy, "--layers", "3", "--out", spec)
    assert run.returncode == 0, run.stderr
    assert json.loads(spec.read_text())["layers"] == rows[2]["layers"]
    run = amoeba("subnet", "--model", tiny_dir, "--strategy", strategy, "--layers", "3", "--mlp", "0.5", "--heads", "4",
                 "--out", spec)
    assert run.returncode == 0, run.stderr
    written = json.loads(spec.read_text())
    assert len(written["mlp_channels"][0]) == 24 and written["bias_compensation"] is not None
    run = amoeba("subnet", "--model", tiny_dir, "--strategy", strategy, "--layers", "2", "--out", spec)
    assert run.returncode == 2 and "depths 3..5" in run.stderr
    run = amoeba("select", "--model", tiny_dir, "--metric", "mmlu", "--mmlu-samples", "4", "--max-removed", "1",
                 "--samples", "2", "--seq-len", "32", "--data-dir", tiny_data, "--out", tmp_path / "mmlu.json")
    assert run.returncode == 0, run.stderr
    assert json.loads((tmp_path / "mmlu.json").read_text())["calibration"]["metric"] == "mmlu"
    payload = json.loads(strategy.read_text())
    payload["model"]["config_sha256"] = "another"
    strategy.write_text(json.dumps(payload))
    run = amoeba("subnet", "--model", tiny_dir, "--strategy", strategy, "--layers", "3", "--out", spec)
    assert run.returncode == 2 and "computed for model" in run.stderr

"""Every artifact reader, fed damaged versions of a valid artifact (truncations, missing keys, type swaps, text in
number cells), either reads it or raises the one-line UserError: never another exception. And commands that fail
leave nothing behind."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pandas as pd
import pytest

from amoeba_search.data import read_arc, read_mmlu, read_text, read_training_texts
from amoeba_search.errors import UserError
from amoeba_search.plot import PARETO_COLUMNS, read_pareto_csv
from amoeba_search.profiling.lut import LookupTable, Setting
from amoeba_search.profiling.profile import WidthGrid, read_import_csv
from amoeba_search.profiling.roofline import DeviceSpec, estimate_profile, load_spec
from amoeba_search.selection.calibration import text_calibration
from amoeba_search.selection.select import _open_cache, select_depth
from amoeba_search.selection.strategy import Strategy
from amoeba_search.subnet import ModelDims, Subnet
from tests.test_cli import amoeba

MUTATIONS = 40
ODD_VALUES = [None, "text", -1, 0, 1.5, float("nan"), [], {}, [1, "a"], {"a": 1}, True, 10**12]


def json_mutations(payload, seed: int = 0):
    """Damaged copies of a JSON value: a random key dropped or a random value replaced by one of another type,
    anywhere in the tree, plus the top level replaced by another type."""
    rng = random.Random(seed)
    yield from ([], "text", 3, None)

    def paths(node, prefix=()):
        yield prefix
        children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
        for key, child in list(children)[:6]:
            yield from paths(child, prefix + (key,))

    every = [p for p in paths(payload) if p]
    for _ in range(MUTATIONS):
        damaged = json.loads(json.dumps(payload))
        where = rng.choice(every)
        parent = damaged
        for key in where[:-1]:
            parent = parent[key]
        if isinstance(parent, dict) and rng.random() < 0.4:
            parent.pop(where[-1], None)
        else:
            parent[where[-1]] = rng.choice(ODD_VALUES)
        yield damaged


def byte_mutations(data: bytes, seed: int = 0):
    """Truncations at random points, garbage, and an empty file."""
    rng = random.Random(seed)
    yield b""
    yield b"\xff\xfe not text \x00"
    for _ in range(MUTATIONS // 4):
        yield data[: rng.randrange(len(data))]


def only_user_errors(read, path: Path, contents) -> int:
    """Write each damaged content to `path`, read it: success or UserError only. Returns how many were refused."""
    refused = 0
    for content in contents:
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(json.dumps(content) if not isinstance(content, str) else content)
        try:
            read(path)
        except UserError as exc:
            assert "\n" not in str(exc).strip(), str(exc)        # one line
            refused += 1
    return refused


@pytest.fixture(scope="module")
def strategy_file(tmp_path_factory, tiny_dir, tiny_data):
    from amoeba_search.models import load_model

    loaded = load_model(str(tiny_dir))
    calibration = text_calibration(loaded.tokenizer, read_text(tiny_data / "wikitext2" / "valid.txt"), 4, 32)
    path = tmp_path_factory.mktemp("strategy") / "s.json"
    select_depth(loaded, calibration, "dp", max_removed=2, progress=False).save(path)
    return path


def test_strategy_reader(strategy_file, tiny, tmp_path):
    from amoeba_search.selection.space import SearchSpace, candidate_subnet

    def read_and_use(path):
        """What search and fine-tuning do with a strategy: every candidate of its space as a subnet."""
        strategy = Strategy.load(path)
        strategy.check_model(tiny.fingerprint)
        space = SearchSpace.from_strategy(strategy, ModelDims.from_config(tiny.model.config), min_depth=1)
        for candidate in (space.largest, space.smallest):
            candidate_subnet(tiny.model, strategy, candidate)

    payload = json.loads(strategy_file.read_text())
    target = tmp_path / "s.json"
    assert only_user_errors(read_and_use, target, json_mutations(payload)) > 5
    assert only_user_errors(read_and_use, target, byte_mutations(strategy_file.read_bytes())) > 3


def test_subnet_reader(tiny, tmp_path):
    dims = ModelDims.from_config(tiny.model.config)
    payload = Subnet.uniform(dims, [0, 2, 4], heads=3, mlp=24).to_dict(tiny.fingerprint)
    target = tmp_path / "subnet.json"
    assert only_user_errors(lambda p: Subnet.load(p, dims, tiny.fingerprint), target, json_mutations(payload)) > 5


def test_device_spec_reader(tmp_path):
    from amoeba_search.profiling.store import ProfileStore

    shipped = next(d / "a5000.json" for d in ProfileStore().spec_dirs() if (d / "a5000.json").is_file())
    target = tmp_path / "spec.json"
    assert only_user_errors(lambda p: load_spec(str(p)), target, json_mutations(json.loads(shipped.read_text()))) > 5


@pytest.fixture()
def profile_dir(tiny, tmp_path):
    grid = WidthGrid.for_model(ModelDims.from_config(tiny.model.config), (0.5, 1.0), heads=(3, 6))
    spec = DeviceSpec("toy", 1.0, {"float32": 0.01}, {"bandwidth": 1.0, "compute": 1.0})
    return estimate_profile(tiny, spec, tmp_path / "toy" / "roofline", [Setting("decode", 8, 1, "float32")],
                            grid).directory


def test_profile_readers(profile_dir):
    meta = json.loads((profile_dir / "meta.json").read_text())
    assert only_user_errors(lambda p: LookupTable.load(p.parent), profile_dir / "meta.json",
                            json_mutations(meta)) > 5
    (profile_dir / "meta.json").write_text(json.dumps(meta))
    table = (profile_dir / "lut.csv").read_text()
    damaged = [table.replace("latency_ms", "latency"), table.replace(table.splitlines()[1].split(",")[-2], "fast"),
               table.splitlines()[0] + "\n", "", table.replace("decode", "train")]
    assert only_user_errors(lambda p: LookupTable.load(p.parent), profile_dir / "lut.csv",
                            damaged + list(byte_mutations(table.encode()))) >= len(damaged)


def test_import_csv_reader(tiny, tmp_path):
    dims = ModelDims.from_config(tiny.model.config)
    frame = pd.DataFrame([{"phase": "decode", "tokens": 64, "batch": 1, "dtype": "float16", "layers": n, "heads": 6,
                           "mlp": 48, "median_ms": 1 + n} for n in (0, 4)])
    text = frame.to_csv(index=False)
    damaged = [text.replace("median_ms", "ms"), text.replace(",5", ",five"), text.replace("decode", "train"),
               text.splitlines()[0], text.replace(",6,", ",7,"), text.replace("1,decode", "-1,decode"), ""]
    refused = only_user_errors(lambda p: read_import_csv(p, dims), tmp_path / "r.csv",
                               damaged + list(byte_mutations(text.encode())))
    assert refused >= len(damaged) - 1


def test_pareto_csv_reader(tmp_path):
    row = {c: 1.0 for c in PARETO_COLUMNS} | {"series": "search front", "device": "d", "flow": "f", "source": "s",
                                             "setting": "decode", "proxy": "ppl", "proxy_unit": "ppl",
                                             "direction": "minimize"}
    text = pd.DataFrame([row, row]).to_csv(index=False)
    damaged = [text.replace("latency_ms", "x"), text.splitlines()[0], "", text.replace(",1.0,", ",one,", 1)]
    assert only_user_errors(read_pareto_csv, tmp_path / "p.csv", damaged + list(byte_mutations(text.encode()))) \
        >= len(damaged)


def test_dp_cache_reader(tmp_path):
    header = {"model": {"name": "m"}, "calibration": {}, "metric": "calibration_loss", "protected": [4]}
    good = json.dumps({"header": header}) + "\n" + json.dumps({"removed": "1", "loss": 2.5}) + "\n"
    damaged = ["not json\n", "[1, 2]\n", json.dumps({"header": {"other": 1}}) + "\n",
               good + '{"removed": "2", "loss": "x"}\n{"removed": ', good.encode() + b"\xff\xfe"]
    refused = only_user_errors(lambda p: _open_cache(p, header)[1], tmp_path / "c.jsonl", damaged)
    assert refused >= 3
    (tmp_path / "c.jsonl").write_text(good + '{"removed": "2", "loss": "x"}\n{"removed": ')
    assert _open_cache(tmp_path / "c.jsonl", header)[1] == {"1": 2.5}      # a torn tail is dropped, not fatal


@pytest.mark.parametrize("reader, relative", [(read_arc, "arc/arc_easy_validation.jsonl"),
                                              (read_mmlu, "mmlu/zero_shot_val.jsonl"),
                                              (read_training_texts, "arc/arc_easy_validation.jsonl")])
def test_jsonl_readers(reader, relative, tiny_data, tmp_path):
    records = [json.loads(line) for line in (tiny_data / relative).read_text().splitlines()]
    target = tmp_path / "data.jsonl"
    contents = ["\n".join(json.dumps(r) for r in [damaged, *records[1:]]) for damaged in json_mutations(records[0])]
    only_user_errors(reader, target, contents + list(byte_mutations((tiny_data / relative).read_bytes())))


def test_text_reader_refuses_non_utf8_and_short_text(tiny, tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(b"caf\xe9 latin-1")
    with pytest.raises(UserError, match="not UTF-8"):
        read_text(path)
    with pytest.raises(UserError, match="not enough for 4 windows"):
        text_calibration(tiny.tokenizer, "short", 4, 32)


def test_damaged_model_dirs_are_one_line(tiny_dir, tmp_path):
    from amoeba_search.models import load_model

    for name, damage in (("truncated", lambda d: (d / "model.safetensors").write_bytes(
            (d / "model.safetensors").read_bytes()[:1000])),
                         ("shapes", lambda d: (d / "config.json").write_text(json.dumps(
                             {**json.loads((d / "config.json").read_text()), "intermediate_size": 64}))),
                         ("layers", lambda d: (d / "config.json").write_text(json.dumps(
                             {**json.loads((d / "config.json").read_text()), "num_hidden_layers": 7})))):
        copy = tmp_path / name
        shutil.copytree(tiny_dir, copy)
        damage(copy)
        with pytest.raises(UserError, match="could not load model|does not match its config"):
            load_model(str(copy))


def test_failing_commands_leave_nothing_behind(tiny_dir, tiny_data, tmp_path):
    bad_subnet = tmp_path / "bad.json"
    bad_subnet.write_text(json.dumps({"layers": [0, 9]}))
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("phase,tokens\ndecode,1\n")
    cases = [
        ("extract", "--model", tiny_dir, "--subnet", bad_subnet, "--out", tmp_path / "out" / "ckpt"),
        ("evaluate", "--model", tiny_dir, "--tasks", ",", "--out", tmp_path / "out" / "e.json", "--data-dir",
         tiny_data),
        ("evaluate", "--model", tiny_dir, "--questions", "0", "--out", tmp_path / "out" / "e.json"),
        ("profile", "import", bad_csv, "--flow", "tensorrt-llm", "--device", "x", "--model", tiny_dir,
         "--profiles-dir", tmp_path / "out"),
        ("subnet", "--model", tiny_dir, "--mlp", "1.5", "--out", tmp_path / "out" / "s.json"),
        ("pareto", "--model", tiny_dir, "--device", "x", "--flow", "roofline", "--trials", "0",
         "--storage", f"sqlite:///{tmp_path}/out/s.db"),
        ("search", "--model", tiny_dir, "--device", "x", "--flow", "roofline", "--target-ms", "nan",
         "--storage", f"sqlite:///{tmp_path}/out/s.db", "--out", tmp_path / "out" / "b.json"),
        ("finetune", "--model", tiny_dir, "--lr", "-1", "--out", tmp_path / "out" / "a"),
        ("plot", "pareto", bad_csv, "--targets", "half", "--out", tmp_path / "out" / "p"),
        ("evaluate", "--model", tiny_dir, "--out", tmp_path / "file.txt" / "e.json", "--data-dir", tiny_data),
    ]
    (tmp_path / "file.txt").write_text("a file, not a directory")
    for args in cases:
        run = amoeba(*args, cwd=tmp_path)
        assert run.returncode == 2, (args, run.stdout, run.stderr)
        assert "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1, (args, run.stderr)
        assert not (tmp_path / "out").exists(), args

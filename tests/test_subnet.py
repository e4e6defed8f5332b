import json

import pytest

from amoeba_search.errors import UserError
from amoeba_search.subnet import ModelDims, Subnet

SMOL = ModelDims(num_layers=30, num_heads=9, num_kv_heads=3, head_dim=64, hidden_size=576, intermediate_size=1536)
TINY = ModelDims(num_layers=5, num_heads=6, num_kv_heads=2, head_dim=16, hidden_size=72, intermediate_size=48)


def test_head_counts_follow_gqa_groups():
    assert SMOL.head_counts() == [3, 6, 9]
    # 2 groups of 3: equal per group gives 2, 4, 6; whole groups give 3, 6.
    assert TINY.head_counts() == [2, 3, 4, 6]


def test_uniform_subnet_layout():
    s = Subnet.uniform(SMOL, range(20), heads=6, mlp=0.75)
    assert s.layers == tuple(range(20))
    assert s.heads[0] == (0, 1, 3, 4, 6, 7)  # two query heads in each of the three KV groups
    assert len(s.mlp_channels[0]) == 1152
    assert s.uniform_shape(SMOL) == (6, 3, 1152)
    whole_groups = Subnet.uniform(TINY, range(5), heads=3)
    assert whole_groups.heads[0] == (0, 1, 2) and whole_groups.uniform_shape(TINY) == (3, 1, 48)


@pytest.mark.parametrize("payload, message", [
    ({"layers": [0, 31]}, "layer 31 out of range 0..29"),
    ({"layers": [0, 1, 1]}, "duplicate layer 1"),
    ({"layers": [2, 1]}, "ascending"),
    ({"layers": []}, "at least one layer"),
    ({"layers": "0-3"}, "list of integer"),
    ({"layers": [0], "heads": 4}, "allowed: [3, 6, 9]"),
    ({"layers": [0], "heads": [[0, 1, 3]]}, "group 0 keeps 2, group 1 keeps 1"),
    ({"layers": [0], "heads": [[0, 9]]}, "index 9 out of range 0..8"),
    ({"layers": [0], "mlp_channels": 0.0}, "ratio 0.0 must be in (0, 1]"),
    ({"layers": [0], "mlp_channels": [[5, 2]]}, "sorted ascending"),
    ({"layers": [0, 1], "mlp_channels": [[1], [2], [3]]}, "3 entries but 2 layers"),
    ({"layers": [0], "schema_version": 99}, "schema_version"),
    ({}, "layers: missing"),
])
def test_validation_errors_name_field_and_allowed_values(payload, message):
    with pytest.raises(UserError) as info:
        Subnet.from_dict(payload, SMOL)
    assert message in str(info.value)


def test_shorthand_forms_expand_per_layer():
    shared = Subnet.from_dict({"layers": [0, 5], "heads": [0, 1, 2], "mlp_channels": 0.5}, SMOL)
    assert shared.heads == ((0, 1, 2), (0, 1, 2)) and len(shared.mlp_channels[1]) == 768
    per_layer = Subnet.from_dict({"layers": [0, 5], "heads": [9, [0, 3, 6]], "mlp_channels": [[0, 7], 3]}, SMOL)
    assert per_layer.heads[1] == (0, 3, 6) and per_layer.mlp_channels == ((0, 7), (0, 1, 2))
    assert per_layer.uniform_shape(SMOL) is None


def test_json_round_trip(tmp_path):
    s = Subnet.uniform(SMOL, [0, 3, 29], heads=3, mlp=100)
    path = s.save(tmp_path / "s.json", {"name": "m", "config_sha256": "x"})
    payload = json.loads(path.read_text())
    assert payload["schema_version"] == 1 and payload["kind"] == "amoeba_search.subnet"
    assert Subnet.load(path, SMOL) == s


def test_malformed_file_is_a_user_error(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        Subnet.load(bad, SMOL)
    with pytest.raises(UserError, match="not found"):
        Subnet.load(tmp_path / "missing.json", SMOL)

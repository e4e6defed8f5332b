import pytest

from amoeba_search.errors import UserError
from amoeba_search.registry import Registry
from amoeba_search.tasks import TASKS
from amoeba_search.tasks.base import parse_tasks


def test_duplicates_rejected_and_typos_suggested():
    registry: Registry[int] = Registry("flow")
    registry.register("torch-eager")(1)
    with pytest.raises(ValueError, match="already registered"):
        registry.register("torch-eager")(2)
    with pytest.raises(UserError, match="did you mean 'torch-eager'"):
        registry.get("torch-eagre")


def test_task_names():
    assert {"wikitext2", "arc_easy", "arc_challenge", "mmlu"} <= set(TASKS.names())
    assert [t.name for t in parse_tasks("wikitext2, mmlu")] == ["wikitext2", "mmlu"]
    with pytest.raises(UserError, match="did you mean 'arc_easy'"):
        parse_tasks("arc_esy")

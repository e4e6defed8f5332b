"""Evaluation tasks, one module per dataset family: a new task is one new file here calling
`register_task("name", path_under_data_root, headline, reader)` (see base.py). Found and imported lazily."""

from ..registry import Registry

TASKS = Registry("task", base="amoeba_search.tasks.base:Task", package=__name__)

__all__ = ["TASKS"]

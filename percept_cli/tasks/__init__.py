"""The task registry: name -> Task. Each task is one module (depth.py, flow.py, amodal.py).

A task answers every task question the rest of percept asks (tasks/base.py: labels, prompt,
training targets, decoding, reducer, input kind, writers, visualisation, metrics); pipeline, run
loop, trainer and evaluator look it up here and never branch on its name. A new task is one
module that subclasses `Task` and calls `register(MyTask())`. numpy only: no torch at planning time.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from percept_cli.tasks.base import Source, Task, TaskInput, ToInput, to_unit
from percept_cli.tasks import amodal, depth, flow
from percept_cli.tasks.amodal import AmodalResult, amodal_target
from percept_cli.tasks.depth import DepthResult, depth_target
from percept_cli.tasks.flow import FlowResult, flow_targets

TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
    """Make `task` known to every command (its name must be new)."""
    if task.name in TASKS:
        raise ValueError(f"task {task.name!r} is registered already")
    TASKS[task.name] = task
    return task


def unregister(name: str) -> None:
    TASKS.pop(name, None)


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}: one of {', '.join(TASKS)}")
    return TASKS[name]


for _task in (depth.TASK, flow.TASK, amodal.TASK):
    register(_task)


def prompt_image(task: str, image: np.ndarray, extra: np.ndarray | None) -> np.ndarray:
    """The conditioning image (..., 3, H, W) for `task`, in the official value conventions."""
    return get_task(task).prompt(image, extra)


def members_to_values(task: str, decoded: np.ndarray, config: dict[str, Any]) -> np.ndarray:
    """Decoded members (L, E, 3, h, w) at the processing grid -> task values there."""
    return get_task(task).decode(decoded, config)


__all__ = ["TASKS", "Task", "TaskInput", "Source", "ToInput", "register", "unregister", "get_task", "to_unit",
           "prompt_image", "members_to_values", "depth_target", "flow_targets", "amodal_target",
           "DepthResult", "FlowResult", "AmodalResult"]

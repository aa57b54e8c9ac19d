"""A served model: its task, how texts become features as `predict` makes them, the engine, the outputs."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from distil.data.tasks import TaskSpec, get_task
from distil.errors import UsageError
from distil.models import io
from distil.predict import Featurizer, _softmax, choose_engine

VERSION = "1"  # a model directory is one version of its model


@dataclasses.dataclass
class Model:
    """One served model directory: its task, how texts become features, and the engine that computes logits."""

    name: str
    task: TaskSpec
    featurize: Featurizer
    engine: Any

    @property
    def inputs(self) -> tuple[str, ...]:
        return ("text", "text_pair") if self.task.is_pair else ("text",)

    @property
    def outputs(self) -> dict[str, tuple[str, list[int]]]:
        """Output name -> (datatype, shape)."""
        if self.task.is_regression:
            return {"score": ("FP32", [-1])}
        return {"probabilities": ("FP32", [-1, self.task.num_labels]), "label": ("BYTES", [-1])}

    def metadata(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "versions": [VERSION],
            "platform": self.engine.name,
            "inputs": [{"name": n, "datatype": "BYTES", "shape": [-1]} for n in self.inputs],
            "outputs": [{"name": n, "datatype": d, "shape": s} for n, (d, s) in self.outputs.items()],
        }

    def results(self, logits: np.ndarray) -> dict[str, Any]:
        """Every output of a request's logits, as `predict` computes them."""
        if self.task.is_regression:
            return {"score": logits[:, 0].astype(np.float32)}
        return {
            "probabilities": _softmax(logits.astype(np.float64)).astype(np.float32),
            "label": [self.task.labels[int(i)] for i in np.argmax(logits, axis=-1)],
        }


def load_model(name: str, model_dir: Path, engine: str, precision: str, device: str) -> Model:
    """A fine-tuned model directory ready to serve as `name` (a clear error for anything else)."""
    config = io.read_config(model_dir)
    if not config.get("task"):
        raise UsageError(f"{model_dir} has no task (a pretrained model); fine-tune it first")
    io.weights_mtime(model_dir)  # (an error without weights)
    return Model(
        name,
        get_task(config["task"]["name"]),
        Featurizer(model_dir, config),
        choose_engine(model_dir, engine, None, device, precision),
    )

"""BERT-of-Theseus (Xu et al. 2020): compress a fine-tuned BERT by progressive module replacement.

Stage 1 (replacement): a successor BERT with `--successor_layers` layers (3; initialised from
teacher layers `--successor_init`, default 0,1,2 as the original's init_stu.py) shares the
teacher's frozen embeddings, pooler and classifier; each successor layer replaces a block of
12/3 = 4 frozen teacher layers with probability `--replacing_rate` (constant 0.5, as the
original, or the paper's linear curriculum min(1, k·t + b) with --replace_scheduler linear).
Stage 2: the successor alone is fine-tuned. Loss: cross-entropy on gold labels in both stages.
The saved model is the plain successor BERT. Original: theseus/ + run_train_theseus.sh.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from distil.algorithms.base import Algorithm, Built, RunConfig, Stage, format_number, table
from distil.algorithms.options import TheseusOptions, parse_layer_list
from distil.algorithms.students import load_teacher, student_from_teacher
from distil.data.tasks import TaskSpec
from distil.models import io
from distil.ops.theseus import TheseusStep, freeze_shared, linear_replacing_rate
from distil.train.step import DistillStep, hard_label


def replacing_rates(
    b: float, scheduler: str = "constant", k: float | None = None
) -> Callable[[int, int], tuple[float]]:
    """(step, total steps) -> (replacing rate,): constant b, or the paper's linear curriculum min(1, k·t + b)
    (k by default reaching 1 at the last step)."""
    if scheduler == "constant":
        return lambda step, total: (b,)
    return lambda step, total: (linear_replacing_rate(step, k if k is not None else (1 - b) / total, b),)


class Theseus(Algorithm):
    name = "theseus"
    eval_script = "run_eval_theseus.sh"
    options = TheseusOptions
    # run_train_theseus.sh: lr 1e-5 and 5 epochs for every task; weight decay as below
    task_settings = {
        name: (1e-5, 5, row[2])
        for name, row in table({"CoLA": (0, 0, 0.01), "MRPC": (0, 0, 0.001)}, (0, 0, 0.0001)).items()
    }

    def stages(self, run: RunConfig) -> list[Stage]:
        options: TheseusOptions = run.options
        replacement = Stage("replacement", run.model_save_dir / "replacement_stage", run.settings, final=False)
        settings = dataclasses.replace(
            run.settings,
            epochs=options.successor_epochs or run.settings.epochs,
            learning_rate=options.successor_learning_rate or run.settings.learning_rate,
        )
        return [replacement, Stage("successor", run.model_save_dir, settings, init=replacement.model_dir)]

    def build(self, run: RunConfig, stage: Stage, task: TaskSpec, train_meta: dict[str, Any]) -> Built:
        options: TheseusOptions = run.options
        if stage.name == "successor":
            successor = io.load_model(stage.init).train()
            freeze_shared(successor)
            return Built(
                successor,
                io.read_config(stage.init)["model"],
                DistillStep(successor, [hard_label()]),
                stage.init / io.VOCAB_FILE,
            )
        teacher, teacher_config = load_teacher(options, task, train_meta)
        init = options.successor_init or ",".join(map(str, range(options.successor_layers)))
        layers = parse_layer_list(init, teacher_config["num_hidden_layers"], "--successor_init")
        successor, config = student_from_teacher(teacher, teacher_config, layers)
        freeze_shared(successor)
        return Built(
            successor,
            config,
            TheseusStep(successor, teacher),
            options.teacher_model / io.VOCAB_FILE,
            eager=True,
            step_inputs=replacing_rates(options.replacing_rate, options.replace_scheduler, options.scheduler_k),
        )

    def id_prefix(self, task: TaskSpec, options: TheseusOptions) -> str:
        return f"bert-theseus_{options.successor_layers}"

    def id_suffix(self, options: TheseusOptions) -> str:
        return f"_replace-{format_number(options.replacing_rate)}"

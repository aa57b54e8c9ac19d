"""General distillation: a small general BERT from a pretrained (not fine-tuned) teacher and unlabelled text, the
student that task distillation (`--student_model` of KD and TinyBERT) then starts from.

Data: `python -m distil pregenerate` (scripts/run_pregenerate_training_data.sh) writes CORPUS_DIR/train and
CORPUS_DIR/dev; `--data_root CORPUS_DIR`. No labels: each epoch scores the held-out `dev_loss` (the summed terms
on dev/), and the last epoch is kept. The output is a model dir whose task is "pretraining"; a General TinyBERT
keeps its fit_dense in its weights (`fit_dense.*`), which TinyBERT loads as it loads Huawei's.
- general_tinybert (Jiao et al. 2019, huawei-noah general_distill.py): attention MSE on pre-softmax scores and
  hidden-state MSE through fit_dense, embeddings included, student layer i <-> teacher layer k·i; no prediction
  layer; heads must match.
- general_minilm (Wang et al. 2020): KL of the last layer's attention distributions and of its value relations
  (softmax(V Vᵀ/√d) per head), student width free; with another head count than the teacher's, MiniLMv2's
  query-query, key-key and value-value relations with the student's head count as relation heads.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from distil.algorithms.base import Algorithm, Built, RunConfig, Stage
from distil.algorithms.kd import TINY_STUDENT
from distil.algorithms.options import GeneralOptions
from distil.data import ofrecord
from distil.data.tasks import TaskSpec
from distil.errors import UsageError

PRETRAINING = TaskSpec("pretraining", "", None, ("dev_loss",), {})


class General(Algorithm):
    """What both general methods share: the task, the data layout, the teacher, the student, the evaluation."""

    eval_script = ""
    options = GeneralOptions
    task_settings = {PRETRAINING.name: (5e-5, 3, 0.01)}  # the paper's general distillation: lr 5e-5, 3 epochs

    def task(self, name: str) -> TaskSpec:
        return PRETRAINING

    def data(self, run: RunConfig, task: TaskSpec) -> tuple[Path, dict[str, Path]]:
        """CORPUS_DIR/train and CORPUS_DIR/dev as pregenerate writes them."""
        train, dev = run.data_root / "train", run.data_root / "dev"
        for split in (train, dev):
            if not (split / ofrecord.META_FILE).is_file():
                raise UsageError(
                    f"no pregenerated data at {split} (run: CORPUS=<text file> bash "
                    f"scripts/run_pregenerate_training_data.sh, then give its OUTPUT_DIR as --data_root)"
                )
        if ofrecord.read_meta(train).get("format") != "pretraining":
            raise UsageError(f"{train} is not pregenerated text (python -m distil pregenerate writes it)")
        return train, {"eval": dev}

    def stages(self, run: RunConfig) -> list[Stage]:
        return [Stage("general", run.model_save_dir, dataclasses.replace(run.settings, select_best=False))]

    def evaluator(self, built: Built, split, settings, placement):
        from distil.train.graph import LossEvaluator

        return LossEvaluator(built.step_module, split, settings.eval_batch_size, placement)

    def default_dir(self, models_root: Path, task: TaskSpec, model_id: str) -> Path:
        return models_root / "general_student" / model_id

    def pair(self, run: RunConfig, stage: Stage, train_meta: dict[str, Any]):
        """(teacher, its config, student, its config, vocab file, a checkpoint's fit_dense weights)."""
        from distil.algorithms.students import build_bert_student, load_pretrained_teacher

        options: GeneralOptions = run.options
        if not options.teacher_model:
            raise UsageError("--teacher_model is required: a pretrained BERT (a model dir or a Hugging Face folder)")
        teacher, teacher_config = load_pretrained_teacher(Path(options.teacher_model), train_meta)
        student, config, vocab, projection = build_bert_student(
            options, teacher_config, PRETRAINING, TINY_STUDENT, train_meta
        )
        return teacher, teacher_config, student, config, vocab, projection


class GeneralTinyBert(General):
    name = "general_tinybert"

    def build(self, run: RunConfig, stage: Stage, task: TaskSpec, train_meta: dict[str, Any]) -> Built:
        from distil.algorithms.options import parse_layer_map
        from distil.algorithms.students import check_layer_mapping, check_same_heads, fit_dense
        from distil.train.step import DistillStep, attention, hidden_states

        teacher, teacher_config, student, config, vocab, projection = self.pair(run, stage, train_meta)
        check_same_heads(config, teacher_config, "--student_num_attention_heads")
        mapping = parse_layer_map(run.options.layer_map, "--layer_map")
        check_layer_mapping(config, teacher_config, mapping, "--layer_map (e.g. 0,2,3,5,6 for 4 of 6 layers)")
        fit = fit_dense(
            config["hidden_size"], teacher_config["hidden_size"], projection, str(run.options.student_model)
        )
        if fit is not None:
            student.fit_dense = fit  # saved with the student's weights, for task TinyBERT to start from
        terms = [attention(mapping=mapping), hidden_states(1.0, mapping)]
        return Built(student, config, DistillStep(student, terms, teacher, fit), vocab)


class GeneralMiniLM(General):
    name = "general_minilm"

    def build(self, run: RunConfig, stage: Stage, task: TaskSpec, train_meta: dict[str, Any]) -> Built:
        from distil.train.step import DistillStep, LossTerm

        teacher, teacher_config, student, config, vocab, _ = self.pair(run, stage, train_meta)
        heads = config["num_attention_heads"]
        if heads == teacher_config["num_attention_heads"]:
            operators = ("attention_transfer", "value_relation")
        else:
            operators = ("query_relation", "key_relation", "value_relation")
        for width, who in ((config["hidden_size"], "student"), (teacher_config["hidden_size"], "teacher")):
            if width % heads:
                raise UsageError(
                    f"MiniLM's relations use the student's {heads} heads, which must divide the {who}'s width {width}"
                )
        terms = [LossTerm(f"{operator}_loss", operator) for operator in operators]
        return Built(student, config, DistillStep(student, terms, teacher), vocab)

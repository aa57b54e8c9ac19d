"""Distilled-BiLSTM (Tang et al. 2019): BERT's knowledge in a one-layer BiLSTM over words.

Loss (the original's convention, α on the soft term): (1 − kd_alpha) · CE(gold) + kd_alpha ·
pred_distill(student, teacher); kd_alpha 0.7. `--pred_distill_mode mse` is the paper's logit MSE.
The student reads <TASK>_lstm_32 records, which carry the teacher's BERT view of the same example,
so the two can never drift apart (original: two unshuffled readers in lock-step). On single-sentence
tasks the ReLU layer sees the sentence's [h_fwd; h_bwd] (600 -> 400, as the paper), whatever
`--lstm_pair_mode` says; that flag chooses how pairs are encoded.
Original: examples/distilled-bilstm/task_student_kd_lstm.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

from distil.algorithms.base import Algorithm, Built, RunConfig, format_number, table
from distil.algorithms.students import SoftLabelStep, load_teacher
from distil.data.tasks import TaskSpec
from distil.errors import UsageError
from distil.models import io
from distil.train.settings import TrainSettings


class DistilledLstm(Algorithm):
    name = "distilled_lstm"
    eval_script = "run_eval_student_distilled_lstm.sh"
    task_settings = table({"CoLA": (5e-5, 100, 0.0001), "MRPC": (5e-6, 30, 0.001), "SST-2": (1e-4, 5, 0.0001),
                           "QQP": (7e-5, 10, 0.0001), "RTE": (2e-5, 30, 0.0001)})

    def data_suffix(self, run: RunConfig) -> str:
        return f"_lstm_{run.options.get('lstm_seq_length', 32)}"

    def build(self, run: RunConfig, task: TaskSpec, train_meta: Dict[str, Any]) -> Built:
        if train_meta.get("format") != "lstm":
            raise UsageError(f"{train_meta.get('source')}: not Distilled-BiLSTM data (run glue_process.sh)")
        teacher, _ = load_teacher(run.options, task, train_meta, vocab_meta_key="teacher_vocab")
        vocab = train_meta["vocab"]
        config = {"model_type": "bilstm", "vocab_size": vocab["size"], "pad_token_id": vocab["pad_id"],
                  "num_labels": task.num_labels,
                  "pair_mode": run.options.get("lstm_pair_mode", "separate") if task.is_pair else "single",
                  **{k: run.options[f"lstm_{k}"] for k in ("embedding_size", "hidden_size", "fc_size")
                     if f"lstm_{k}" in run.options}}
        student = io.build_model(config)
        alpha = run.options.get("kd_alpha", 0.7)  # original: alpha weights the soft term here
        step = SoftLabelStep(student, teacher, 1 - alpha, alpha, run.options, teacher_prefix="teacher_")
        vocab_file = run.data_root / f"{task.name}{self.data_suffix(run)}" / io.VOCAB_FILE
        return Built(student, student.config.to_dict(), step, Path(vocab_file))

    def model_id(self, task: TaskSpec, settings: TrainSettings, options: Dict[str, Any]) -> str:
        return f"{super().model_id(task, settings, options)}_kd_alpha-{format_number(options.get('kd_alpha', 0.7))}"

    def id_prefix(self, task: TaskSpec, options: Dict[str, Any]) -> str:
        return "bert-distilled_lstm"

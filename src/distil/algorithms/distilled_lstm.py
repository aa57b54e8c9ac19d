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

from typing import Any

from distil.algorithms.base import Algorithm, Built, RunConfig, Stage, format_number, table
from distil.algorithms.options import LstmOptions
from distil.algorithms.students import load_teacher
from distil.data.tasks import TaskSpec
from distil.errors import UsageError
from distil.models import io
from distil.train.step import DistillStep, hard_label, soft_labels


class DistilledLstm(Algorithm):
    name = "distilled_lstm"
    eval_script = "run_eval_student_distilled_lstm.sh"
    options = LstmOptions
    task_settings = table(
        {
            "CoLA": (5e-5, 100, 0.0001),
            "MRPC": (5e-6, 30, 0.001),
            "SST-2": (1e-4, 5, 0.0001),
            "QQP": (7e-5, 10, 0.0001),
            "RTE": (2e-5, 30, 0.0001),
        }
    )

    def data_suffix(self, options: LstmOptions) -> str:
        return f"_lstm_{options.lstm_seq_length}"

    def build(self, run: RunConfig, stage: Stage, task: TaskSpec, train_meta: dict[str, Any]) -> Built:
        options: LstmOptions = run.options
        if train_meta.get("format") != "lstm":
            raise UsageError(f"{train_meta.get('source')}: not Distilled-BiLSTM data (run glue_process.sh)")
        teacher, _ = load_teacher(options, task, train_meta, vocab_meta_key="teacher_vocab")
        vocab = train_meta["vocab"]
        student = io.build_model(
            {
                "model_type": "bilstm",
                "vocab_size": vocab["size"],
                "pad_token_id": vocab["pad_id"],
                "num_labels": task.num_labels,
                "pair_mode": options.lstm_pair_mode if task.is_pair else "single",
                "embedding_size": options.lstm_embedding_size,
                "hidden_size": options.lstm_hidden_size,
                "fc_size": options.lstm_fc_size,
            }
        )
        terms = [
            hard_label(1 - options.kd_alpha),  # original: alpha weights the soft term here
            soft_labels(options.kd_alpha, options.temperature, options.pred_distill_mode),
        ]
        step = DistillStep(student, terms, teacher, teacher_view="teacher_")
        vocab_file = run.data_root / f"{task.name}{self.data_suffix(options)}" / io.VOCAB_FILE
        return Built(student, student.config.to_dict(), step, vocab_file)

    def id_prefix(self, task: TaskSpec, options: LstmOptions) -> str:
        return "bert-distilled_lstm"

    def id_suffix(self, options: LstmOptions) -> str:
        return f"_kd_alpha-{format_number(options.kd_alpha)}"

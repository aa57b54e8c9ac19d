"""Recipes: a distillation declared in a TOML file instead of coded (`--algorithm recipe --recipe FILE.toml`).

A recipe names the student, optionally the teachers, and one or more stages, each a list of loss terms on the
operators of `distil.train.step` (the four of the original plus the loss zoo), with weights and temperatures
that are numbers or schedules. The built-in BERT-student algorithms ship as recipes in `recipes/` and train
exactly what their classes train (tests/test_recipes_files.py). Format (README "Recipes"):

    [student]                      # a random BERT of these sizes (flags --student_* override), or
    num_hidden_layers = 4          # teacher_layers = [2, 6, 10] (the teacher's layers, as BERT-PKD), or
    hidden_size = 312              # --student_model DIR (TMP_STUDENT_DIR)
    [[teacher]]                    # optional: else --teacher_model (FT_BERT_BASE_DIR), a comma list allowed
    path = "models/finetuned_teacher/SST-2/..."
    weight = 1.0
    [[stage]]
    name = "train"                 # epochs, learning_rate, select_best: optional, per stage
    [[stage.term]]
    operator = "pred_distill"      # name = "pred_loss" by default
    weight = {value = 0.9, schedule = "linear_decay"}
    temperature = {value = 4.0, schedule = "flsw", beta = 1.0, gamma = 2.0}

Every mistake is a UsageError naming the file, the line and the key.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import tomli

from distil.algorithms.base import Algorithm, Built, RunConfig, Stage, table
from distil.algorithms.options import RecipeOptions
from distil.data.tasks import TaskSpec
from distil.errors import UsageError

TERM_NAMES = {
    "hard_label": "hard_label_loss",
    "pred_distill": "pred_loss",
    "layer_distill": "hidden_loss",
    "pkd_patient": "hidden_loss",
    "att_distill": "att_loss",
}  # the built-in algorithms' names
SIZES = ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size")
KINDS = {
    "bert": {*SIZES, "teacher_layers"},  # the student's kind -> its keys in [student]
    "bilstm": {"embedding_size", "hidden_size", "fc_size", "pair_mode", "seq_length"},
    "theseus": {"teacher_layers"},
}
KEYS = {
    "recipe": {"name", "description"},
    "student": {"kind", *set().union(*KINDS.values())},
    "teacher": {"path", "weight"},
    "stage": {"name", "epochs", "learning_rate", "select_best", "term"},
    "term": {"operator", "name", "weight", "temperature", "mode", "layer_map", "project", "pairs", "replacing_rate"},
}
REPLACEMENT = "module_replacement"  # BERT-of-Theseus's operator: a stage of its own, on a theseus student
LSTM_DEFAULTS = {"embedding_size": 300, "hidden_size": 300, "fc_size": 400, "pair_mode": "separate", "seq_length": 32}
SCHEDULE_ARGUMENTS = {
    "weight": {"constant": (), "linear_decay": (), "linear_growth": ()},
    "temperature": {"constant": (), "flsw": ("beta", "gamma"), "cwsm": ("beta",)},
}


@dataclasses.dataclass(frozen=True)
class RecipeFile:
    """A parsed recipe and where each key sits in its file, for errors that name the line."""

    path: Path
    data: dict[str, Any]
    lines: dict[tuple[str, str], int]

    def error(self, where: str, key: str, message: str) -> UsageError:
        line = self.lines.get((where, key)) or self.lines.get((where, "")) or 1
        return UsageError(f"{self.path}:{line}: {where}{'.' if where else ''}{key}: {message}")

    @property
    def stages(self) -> list[dict[str, Any]]:
        return self.data["stage"]


def read_recipe(path: Path) -> RecipeFile:
    """The recipe at `path`, parsed and checked (keys, operators, schedules and their arguments)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"--recipe {path}: no such file") from None
    except (UnicodeDecodeError, IsADirectoryError) as e:
        raise UsageError(f"--recipe {path}: not a UTF-8 text file ({e})") from None
    try:
        data = tomli.loads(text)
    except tomli.TOMLDecodeError as e:
        found = re.search(r"line (\d+)", str(e))
        raise UsageError(f"{path}:{found.group(1) if found else 1}: TOML syntax error: {e}") from None
    recipe = RecipeFile(Path(path), data, _key_lines(text))
    _check(recipe)
    return recipe


def _key_lines(text: str) -> dict[tuple[str, str], int]:
    """(table path, key) -> line, with array tables numbered: ("stage[1].term[0]", "weight") -> 23."""
    lines: dict[tuple[str, str], int] = {}
    where, stage, term = "", -1, -1
    for number, line in enumerate(text.splitlines(), 1):
        header = re.match(r"\s*(\[\[?)\s*([A-Za-z0-9_.]+)\s*\]", line)
        if header:
            name = header.group(2)
            if name == "stage":
                stage, term = stage + 1, -1
                where = f"stage[{stage}]"
            elif name == "stage.term":
                term += 1
                where = f"stage[{stage}].term[{term}]"
            elif name == "teacher":
                where = f"teacher[{sum(1 for k in lines if k[1] == '' and k[0].startswith('teacher['))}]"
            else:
                where = name
            lines.setdefault((where, ""), number)
            continue
        key = re.match(r"\s*([A-Za-z0-9_-]+)\s*=", line)
        if key:
            lines.setdefault((where, key.group(1)), number)
    return lines


def _check(recipe: RecipeFile) -> None:
    data = recipe.data
    for key in data:
        if key not in ("recipe", "student", "teacher", "stage"):
            raise recipe.error("", key, "unknown table (known: recipe, student, teacher, stage)")
    _check_keys(recipe, "recipe", data.get("recipe", {}), "recipe")
    _check_student(recipe, data.get("student", {}))
    for i, teacher in enumerate(data.get("teacher", [])):
        _check_keys(recipe, f"teacher[{i}]", teacher, "teacher")
        if not isinstance(teacher.get("path"), str):
            raise recipe.error(f"teacher[{i}]", "path", "each [[teacher]] needs a path (a fine-tuned model dir)")
    stages = data.get("stage")
    if not isinstance(stages, list) or not stages:
        raise recipe.error("", "stage", "a recipe needs at least one [[stage]] with [[stage.term]] entries")
    names = [stage.get("name") for stage in stages]
    for i, stage in enumerate(stages):
        where = f"stage[{i}]"
        _check_keys(recipe, where, stage, "stage")
        if not isinstance(stage.get("name"), str) or names.count(stage["name"]) > 1:
            raise recipe.error(where, "name", "each stage needs a unique name")
        if not stage.get("term"):
            raise recipe.error(where, "term", "a stage needs at least one [[stage.term]]")
        stage_terms(recipe, i)


def student_kind(recipe: RecipeFile) -> str:
    return recipe.data.get("student", {}).get("kind", "bert")


def _check_student(recipe: RecipeFile, student: dict[str, Any]) -> None:
    _check_keys(recipe, "student", student, "student")
    kind = student_kind(recipe)
    if kind not in KINDS:
        raise recipe.error("student", "kind", f"unknown student kind {kind!r} (known: {', '.join(KINDS)})")
    for key in student:
        if key != "kind" and key not in KINDS[kind]:
            raise recipe.error("student", key, f"not a key of a {kind} student ({', '.join(sorted(KINDS[kind]))})")
        value = student[key]
        if key == "pair_mode" and value not in ("separate", "joint"):
            raise recipe.error("student", key, 'must be "separate" or "joint"')
        if key not in ("kind", "pair_mode", "teacher_layers") and (not isinstance(value, int) or value < 1):
            raise recipe.error("student", key, "must be a positive integer")
    if kind == "theseus" and "teacher_layers" not in student:
        raise recipe.error(
            "student",
            "kind",
            "a theseus student names the teacher layers its successors start from: teacher_layers = [0, 1, 2]",
        )


def stage_terms(recipe: RecipeFile, index: int) -> tuple[list, Any]:
    """(the stage's LossTerms, its module replacement's rates or None): a theseus student's first stage is one
    `module_replacement` term; every other stage is loss terms."""
    terms = recipe.stages[index]["term"]
    where = f"stage[{index}].term[0]"
    replacing = [j for j, term in enumerate(terms) if isinstance(term, dict) and term.get("operator") == REPLACEMENT]
    theseus_first = student_kind(recipe) == "theseus" and index == 0
    if theseus_first != bool(replacing) or (replacing and len(terms) > 1):
        raise recipe.error(
            where,
            "operator",
            f"{REPLACEMENT} is the one term of a theseus student's first stage "
            "(the successors' own fine-tuning follows as a stage of loss terms)",
        )
    if replacing:
        _check_keys(recipe, where, terms[0], "term")
        return [], _replacing_rates(recipe, where, terms[0].get("replacing_rate", 0.5))
    return terms_to_loss(recipe, index, terms), None


def _replacing_rates(recipe: RecipeFile, where: str, value: Any):
    """replacing_rate = b, or {value = b, schedule = "linear", k = slope} (k optional: 1 at the last step)."""
    from distil.algorithms.theseus import replacing_rates

    if isinstance(value, dict):
        schedule = value.get("schedule", "constant")
        if schedule not in ("constant", "linear") or set(value) - {"value", "schedule", "k"} or "value" not in value:
            raise recipe.error(
                where,
                "replacing_rate",
                'must be a rate in (0, 1] or {value = b, schedule = "constant" | "linear", k = slope (optional)}',
            )
        rate, k = value["value"], value.get("k")
    else:
        schedule, rate, k = "constant", value, None
    if (
        not isinstance(rate, (int, float))
        or isinstance(rate, bool)
        or not 0 < rate <= 1
        or (k is not None and (not isinstance(k, (int, float)) or k < 0))
    ):
        raise recipe.error(where, "replacing_rate", f"must be a rate in (0, 1] and a slope k >= 0, got {value!r}")
    return replacing_rates(float(rate), schedule, None if k is None else float(k))


def _check_keys(recipe: RecipeFile, where: str, values: dict[str, Any], kind: str) -> None:
    if not isinstance(values, dict):
        raise recipe.error("", where, f"must be a table ([{kind}])")
    for key in values:
        if key not in KEYS[kind]:
            raise recipe.error(where, key, f"unknown key (known in [{kind}]: {', '.join(sorted(KEYS[kind]))})")


def terms_to_loss(recipe: RecipeFile, stage: int, terms: list[dict[str, Any]], first: int = 0) -> list:
    """The stage's [[stage.term]] tables as LossTerms (a clear error for each wrong value)."""
    from distil.train.step import OPERATORS, LossTerm

    built = []
    for j, term in enumerate(terms, first):
        where = f"stage[{stage}].term[{j}]"
        _check_keys(recipe, where, term, "term")
        operator = term.get("operator")
        if "replacing_rate" in term:
            raise recipe.error(where, "replacing_rate", f"a key of the {REPLACEMENT} operator only")
        if operator not in OPERATORS:
            raise recipe.error(where, "operator", f"unknown operator {operator!r} (known: {', '.join(OPERATORS)})")
        weight, weight_schedule, _ = _scheduled(recipe, where, "weight", term.get("weight", 1.0))
        temperature, temperature_schedule, arguments = _scheduled(
            recipe, where, "temperature", term.get("temperature", 1.0)
        )
        fields = {
            "name": term.get("name", TERM_NAMES.get(operator, f"{operator}_loss")),
            "operator": operator,
            "weight": weight,
            "weight_schedule": weight_schedule,
            "temperature": temperature,
            "temperature_schedule": temperature_schedule,
            **arguments,
        }
        for key, kind in (("mode", str), ("project", bool)):
            if key in term:
                if not isinstance(term[key], kind):
                    raise recipe.error(where, key, f"must be a {kind.__name__}")
                fields[key] = term[key]
        if "layer_map" in term:
            fields["mapping"] = _layer_map(recipe, where, term["layer_map"])
        if "pairs" in term:
            fields["pairs"] = _pairs(recipe, where, term["pairs"])
        try:
            built.append(LossTerm(**fields))
        except ValueError as e:
            raise recipe.error(where, "operator" if operator == "fsp" else "name", str(e)) from None
    return built


def _scheduled(recipe: RecipeFile, where: str, key: str, value: Any) -> tuple[float, str, dict[str, float]]:
    """A number, or {value, schedule, arguments}: (value, schedule, the schedule's arguments)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value), "constant", {}
    if not isinstance(value, dict):
        raise recipe.error(where, key, "must be a number or a table {value = ..., schedule = ...}")
    schedules = SCHEDULE_ARGUMENTS[key]
    schedule = value.get("schedule", "constant")
    if schedule not in schedules:
        raise recipe.error(where, key, f"unknown schedule {schedule!r} (known: {', '.join(schedules)})")
    unknown = set(value) - {"value", "schedule", *schedules[schedule]}
    missing = [name for name in ("value", *schedules[schedule]) if name not in value]
    if unknown or missing:
        takes = ", ".join(("value", *schedules[schedule]))
        raise recipe.error(
            where,
            key,
            f"schedule {schedule!r} takes {takes}"
            f"{'; missing ' + ', '.join(missing) if missing else ''}"
            f"{'; unknown ' + ', '.join(sorted(unknown)) if unknown else ''}",
        )
    numbers = {name: value[name] for name in ("value", *schedules[schedule])}
    if any(not isinstance(v, (int, float)) or isinstance(v, bool) for v in numbers.values()):
        raise recipe.error(where, key, f"the value and arguments of {schedule!r} must be numbers")
    return float(numbers.pop("value")), schedule, {k: float(v) for k, v in numbers.items()}


def _layer_map(recipe: RecipeFile, where: str, value: Any):
    if value in ("uniform", "last"):
        return value
    if isinstance(value, list) and value and all(isinstance(v, int) and v >= 0 for v in value):
        return tuple(value)
    raise recipe.error(
        where,
        "layer_map",
        'must be "uniform", "last" or a list of teacher layer indices '
        "(0 = embeddings), one per student layer and the embeddings",
    )


def _pairs(recipe: RecipeFile, where: str, value: Any):
    try:
        pairs = tuple(((int(s[0]), int(s[1])), (int(t[0]), int(t[1]))) for s, t in value)
    except (TypeError, ValueError, IndexError):
        raise recipe.error(
            where, "pairs", "must be a list of [[student a, student b], [teacher a, teacher b]]"
        ) from None
    if not pairs:
        raise recipe.error(where, "pairs", "must name at least one pair")
    return pairs


class Recipe(Algorithm):
    """The algorithm a recipe file declares (every stage a BERT student, its terms, its teachers)."""

    name = "recipe"
    eval_script = "run_eval_student_kd.sh"
    options = RecipeOptions
    task_settings = table({})

    def file(self, options: RecipeOptions) -> RecipeFile:
        return read_recipe(options.recipe)

    def stages(self, run: RunConfig) -> list[Stage]:
        """The file's stages in order; all but the last train in nested directories <name>_stage, and each
        starts from the one before it."""
        recipe = self.file(run.options)
        stages: list[Stage] = []
        for i, stage in enumerate(recipe.stages):
            final = i == len(recipe.stages) - 1
            changes = {k: stage[k] for k in ("epochs", "learning_rate", "select_best") if k in stage}
            try:
                settings = dataclasses.replace(run.settings, **{"select_best": final, **changes})
            except (TypeError, UsageError) as e:
                raise recipe.error(f"stage[{i}]", next(iter(changes), "name"), str(e)) from None
            model_dir = run.model_save_dir if final else run.model_save_dir / f"{stage['name']}_stage"
            stages.append(
                Stage(stage["name"], model_dir, settings, init=stages[-1].model_dir if stages else None, final=final)
            )
        return stages

    def data_suffix(self, options: RecipeOptions) -> str:
        """A BiLSTM student reads <TASK>_lstm_<seq_length> (with the teacher's BERT view of each example)."""
        recipe = read_recipe(options.recipe)
        if student_kind(recipe) != "bilstm":
            return ""
        return f"_lstm_{recipe.data['student'].get('seq_length', LSTM_DEFAULTS['seq_length'])}"

    def build(self, run: RunConfig, stage: Stage, task: TaskSpec, train_meta: dict[str, Any]) -> Built:
        from distil.train.step import READS

        options: RecipeOptions = run.options
        recipe = self.file(options)
        index = [s["name"] for s in recipe.stages].index(stage.name)
        terms, replacement = stage_terms(recipe, index)
        teachers = recipe.data.get("teacher", [])
        if teachers:
            options = dataclasses.replace(options, teacher_model=Path(",".join(t["path"] for t in teachers)))
        several = len(teachers) > 1 or "," in str(options.teacher_model)
        if several and (replacement or any(READS[t.operator] != "logits" for t in terms)):
            raise recipe.error(
                f"stage[{index}]",
                "term",
                "several teachers average their logits; hidden-state, "
                "attention and module-replacement terms need one teacher",
            )
        kind = student_kind(recipe)
        if kind == "theseus" and index > 0:
            return self._successors(stage, terms)
        from distil.algorithms.students import load_teacher

        teacher, teacher_config = load_teacher(
            options,
            task,
            train_meta,
            several=True,
            weights=[float(t.get("weight", 1.0)) for t in teachers] or None,
            vocab_meta_key="teacher_vocab" if kind == "bilstm" else "vocab",
        )
        if kind == "bilstm":
            return self._bilstm(run, task, train_meta, terms, teacher)
        if kind == "theseus":
            return self._theseus(recipe, options, teacher, teacher_config, replacement)
        return self._bert(recipe, options, stage, task, train_meta, index, terms, teacher, teacher_config)

    def _bert(
        self,
        recipe: RecipeFile,
        options: RecipeOptions,
        stage: Stage,
        task: TaskSpec,
        train_meta: dict[str, Any],
        index: int,
        terms: list,
        teacher,
        teacher_config: dict[str, Any],
    ) -> Built:
        from distil.algorithms.kd import TINY_STUDENT
        from distil.algorithms.students import (
            build_bert_student,
            check_layer_mapping,
            check_same_heads,
            fit_dense,
            teacher_dirs,
        )
        from distil.models import io
        from distil.train.step import READS, DistillStep

        student_table = recipe.data.get("student", {})
        if "teacher_layers" in student_table and not (options.student_model or stage.init):
            student, config = self._from_teacher(recipe, teacher, teacher_config)
            vocab, projection_state = teacher_dirs(options)[0] / io.VOCAB_FILE, {}
        else:
            defaults = {**TINY_STUDENT, **{k: v for k, v in student_table.items() if k in SIZES}}
            student, config, vocab, projection_state = build_bert_student(
                options, teacher_config, task, defaults, train_meta, init=stage.init
            )
        for j, term in enumerate(terms):
            try:
                if READS[term.operator] == "attention_scores":
                    check_same_heads(
                        config, teacher_config, "[student] num_attention_heads or --student_num_attention_heads"
                    )
                if term.operator != "fsp" and READS[term.operator] != "logits":
                    check_layer_mapping(config, teacher_config, term.mapping, "layer_map")
            except (ValueError, UsageError) as e:
                raise recipe.error(f"stage[{index}].term[{j}]", "layer_map", str(e)) from None
        projection = None
        if any(term.project for term in terms):
            projection = fit_dense(
                config["hidden_size"], teacher_config["hidden_size"], projection_state, str(options.student_model)
            )
        return Built(student, config, DistillStep(student, terms, teacher, projection), vocab)

    @staticmethod
    def _from_teacher(recipe: RecipeFile, teacher, teacher_config: dict[str, Any]):
        from distil.algorithms.students import student_from_teacher

        layers = recipe.data["student"]["teacher_layers"]
        if (
            not isinstance(layers, list)
            or not layers
            or not all(isinstance(i, int) and 0 <= i < teacher_config["num_hidden_layers"] for i in layers)
        ):
            raise recipe.error(
                "student",
                "teacher_layers",
                f"must list 0-based teacher layers below {teacher_config['num_hidden_layers']}",
            )
        return student_from_teacher(teacher, teacher_config, layers)

    def _bilstm(self, run: RunConfig, task: TaskSpec, train_meta: dict[str, Any], terms: list, teacher) -> Built:
        """Distilled-BiLSTM's student on the words of <TASK>_lstm_<N>, the teacher on their BERT view."""
        from distil.models import io
        from distil.train.step import DistillStep

        if train_meta.get("format") != "lstm":
            raise UsageError(f"{train_meta.get('source')}: not Distilled-BiLSTM data (run glue_process.sh)")
        sizes = {**LSTM_DEFAULTS, **self.file(run.options).data.get("student", {})}
        vocab = train_meta["vocab"]
        student = io.build_model(
            {
                "model_type": "bilstm",
                "vocab_size": vocab["size"],
                "pad_token_id": vocab["pad_id"],
                "num_labels": task.num_labels,
                "pair_mode": sizes["pair_mode"] if task.is_pair else "single",
                "embedding_size": sizes["embedding_size"],
                "hidden_size": sizes["hidden_size"],
                "fc_size": sizes["fc_size"],
            }
        )
        vocab_file = run.data_root / f"{task.name}{self.data_suffix(run.options)}" / io.VOCAB_FILE
        return Built(
            student, student.config.to_dict(), DistillStep(student, terms, teacher, teacher_view="teacher_"), vocab_file
        )

    def _theseus(
        self, recipe: RecipeFile, options: RecipeOptions, teacher, teacher_config: dict[str, Any], replacement
    ) -> Built:
        """BERT-of-Theseus's replacement stage: successors from teacher layers replace the frozen teacher's
        modules at the replacing rate (eager: each step samples its own network)."""
        from distil.algorithms.students import teacher_dirs
        from distil.models import io
        from distil.ops.theseus import TheseusStep, freeze_shared

        successor, config = self._from_teacher(recipe, teacher, teacher_config)
        freeze_shared(successor)
        return Built(
            successor,
            config,
            TheseusStep(successor, teacher),
            teacher_dirs(options)[0] / io.VOCAB_FILE,
            eager=True,
            step_inputs=replacement,
        )

    @staticmethod
    def _successors(stage: Stage, terms: list) -> Built:
        """After the replacement, the successors alone, their shared parts frozen, as the paper's second stage."""
        from distil.models import io
        from distil.ops.theseus import freeze_shared
        from distil.train.step import READS, DistillStep

        if any(READS[t.operator] != "logits" or t.operator != "hard_label" for t in terms):
            raise UsageError("a theseus student's later stages fine-tune the successors alone: hard_label terms only")
        successor = io.load_model(stage.init).train()
        freeze_shared(successor)
        return Built(
            successor, io.read_config(stage.init)["model"], DistillStep(successor, terms), stage.init / io.VOCAB_FILE
        )

    def id_prefix(self, task: TaskSpec, options: RecipeOptions) -> str:
        return f"recipe-{Path(str(options.recipe)).stem}"

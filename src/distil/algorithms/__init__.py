"""Algorithms: each is typed options, a model pairing and a list of loss terms, run by `distil.train.run`.

Modules are imported on demand, so the command line can build its flags (from `options`) without
loading OneFlow.
"""

from __future__ import annotations

import importlib

from distil.errors import UsageError

# name -> (module, class)
ALGORITHMS = {
    "teacher": ("teacher", "Teacher"),
    "kd": ("kd", "KD"),
    "distilled_lstm": ("distilled_lstm", "DistilledLstm"),
    "bert_pkd": ("bert_pkd", "BertPKD"),
    "tinybert": ("tinybert", "TinyBert"),
    "theseus": ("theseus", "Theseus"),
    "recipe": ("recipe", "Recipe"),
    "general_tinybert": ("general", "GeneralTinyBert"),
    "general_minilm": ("general", "GeneralMiniLM"),
}


def get_algorithm(name: str):
    """An instance of the algorithm called `name`."""
    if name not in ALGORITHMS:
        raise UsageError(f"unknown algorithm '{name}'; valid: {', '.join(ALGORITHMS)}")
    module, cls = ALGORITHMS[name]
    return getattr(importlib.import_module(f"distil.algorithms.{module}"), cls)()

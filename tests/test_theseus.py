"""The module-replacement operator: which branch runs, which gets gradients, the replacing-rate schedule."""

from __future__ import annotations

import numpy as np
import pytest

from distil.algorithms.theseus import replacing_rates
from distil.models.bert import BertConfig, BertLayer, additive_attention_mask
from distil.models.dropout import seed_dropout
from distil.ops import TheseusEncoder
from distil.ops.theseus import linear_replacing_rate
from distil.runtime import import_oneflow

flow = import_oneflow()
CONFIG = BertConfig(vocab_size=10, hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=24)


def encoder(predecessors: int = 4, successors: int = 2) -> TheseusEncoder:
    flow.manual_seed(0)
    teacher_layers = flow.nn.ModuleList([BertLayer(CONFIG) for _ in range(predecessors)]).eval()  # as load_teacher
    module = TheseusEncoder(teacher_layers, flow.nn.ModuleList([BertLayer(CONFIG) for _ in range(successors)]))
    seed_dropout(module, 0)
    return module


def run(module: TheseusEncoder, rate: float):
    flow.manual_seed(1)
    hidden = flow.randn(3, 5, 16)
    mask = additive_attention_mask(flow.ones(3, 5, dtype=flow.int32))
    last, states, _ = module(hidden, mask, rate)
    return last, states


def grads(layers) -> list:
    return [p.grad for p in layers.parameters()]


def test_rate_zero_runs_only_the_frozen_predecessors_with_dropout_on():
    module = encoder()
    last, states = run(module, 0.0)
    assert len(states) == 1 + 4  # embeddings + 4 predecessor layers
    assert not last.requires_grad  # nothing to learn: EagerStep skips the update
    again, _ = run(module, 0.0)
    assert not np.allclose(last.numpy(), again.numpy())  # predecessors' dropout is active in training
    module.eval()
    assert len(run(module, 0.0)[1]) == 1 + 2  # inference: successors only, whatever the rate


def test_rate_one_runs_only_the_successors_and_only_they_learn():
    module = encoder()
    last, states = run(module, 1.0)
    assert len(states) == 1 + 2
    last.sum().backward()
    assert all(g is not None for g in grads(module.successors))
    assert all(g is None for g in grads(module.predecessors)) and not any(
        p.requires_grad for p in module.predecessors.parameters()
    )


def test_a_mixed_rate_samples_each_block():
    module = encoder()
    lengths = {
        len(run_states)
        for run_states in (
            module(flow.randn(2, 5, 16), additive_attention_mask(flow.ones(2, 5, dtype=flow.int32)), 0.5)[1]
            for _ in range(30)
        )
    }
    assert lengths == {1 + 2, 1 + 3, 1 + 4}  # both, one or no block replaced


def test_linear_schedule_values():
    assert linear_replacing_rate(0, 0.001, 0.3) == pytest.approx(0.3)
    assert linear_replacing_rate(200, 0.001, 0.3) == pytest.approx(0.5)
    assert linear_replacing_rate(10_000, 0.001, 0.3) == 1.0
    rates = replacing_rates(0.5, "linear")
    assert rates(0, 100) == (0.5,) and rates(50, 100)[0] == pytest.approx(0.75) and rates(100, 100) == (1.0,)
    assert replacing_rates(0.3)(77, 100) == (0.3,)
    slope = replacing_rates(0.3, "linear", 0.01)
    assert slope(10, 1000)[0] == pytest.approx(0.4)

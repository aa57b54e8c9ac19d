"""Our BERT equals Hugging Face's layer by layer: on the real pretrained MiniLM and on tiny random checkpoints.

References come from transformers + PyTorch in a separate venv; see tests/fixtures/make_hf_reference.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import PYTHON, ROOT, run
from distil.errors import UsageError
from distil.models import io
from distil.models.bert import flow
from distil.models.hf_format import read_hf_weights, write_safetensors

FIXTURES = Path(__file__).parent / "fixtures"
ATOL = 1e-4  # HF's own integration-test tolerance ...
RTOL = 1e-5  # ... plus float32 rounding of values up to ~10 after six layers (NumPy's allclose default rtol)


def forward(model, ref):
    with flow.no_grad():
        return model(*(flow.tensor(ref[k]) for k in ("input_ids", "token_type_ids", "attention_mask")))


def assert_matches_reference(out, ref):
    for layer, (ours, theirs) in enumerate(zip(out["hidden_states"], ref["hidden_states"])):
        np.testing.assert_allclose(ours.numpy(), theirs, atol=ATOL, rtol=RTOL, err_msg=f"hidden state {layer}")
    assert len(out["hidden_states"]) == len(ref["hidden_states"])
    real_keys = ref["attention_mask"].astype(bool)[:, None, None, :]  # (B, 1, 1, S)
    for layer, (ours, theirs) in enumerate(zip(out["attention_scores"], ref["attention_scores"])):
        ours = ours.numpy()
        # HF adds finfo.min on padding keys, BERT (and we) add -10000: compare real keys, check the masked ones
        np.testing.assert_allclose(
            np.where(real_keys, ours, 0),
            np.where(real_keys, theirs, 0),
            atol=ATOL,
            rtol=RTOL,
            err_msg=f"attention scores {layer}",
        )
        assert (ours[np.broadcast_to(~real_keys, ours.shape)] < -9000).all()


def test_converted_minilm_matches_transformers_on_every_layer(tmp_path, minilm_dir):
    converted = run([PYTHON, "-m", "distil", "convert-hf", str(minilm_dir), str(tmp_path / "minilm")])
    assert converted.returncode == 0, converted.stderr
    report = json.loads(converted.stdout)
    assert report["initialized"] == ["classifier.bias", "classifier.weight"]
    model = io.load_model(tmp_path / "minilm")
    ref = np.load(FIXTURES / "minilm_reference.npz")
    out = forward(model, ref)
    assert_matches_reference(out, ref)
    np.testing.assert_allclose(model.bert.pooler(out["hidden_states"][-1]).numpy(), ref["pooler_output"], atol=ATOL)
    assert (tmp_path / "minilm" / "vocab.txt").read_bytes() == (minilm_dir / "vocab.txt").read_bytes()


@pytest.mark.parametrize("folder", ["hf_tiny_cls_safetensors", "hf_tiny_cls_bin", "hf_tiny_regression"])
def test_sequence_classifiers_convert_with_their_heads(tmp_path, folder):
    result = io.convert_hf(FIXTURES / folder, tmp_path / "m")
    assert result["initialized"] == [] and result["ignored"] == []
    model = io.load_model(tmp_path / "m")
    ref = np.load(FIXTURES / folder / "reference.npz")
    out = forward(model, ref)
    assert_matches_reference(out, ref)
    np.testing.assert_allclose(out["logits"].numpy(), ref["logits"], atol=ATOL, rtol=0)
    assert model.config.num_labels == ref["logits"].shape[1]


def test_safetensors_and_pytorch_bin_hold_the_same_tensors():
    a = read_hf_weights(FIXTURES / "hf_tiny_cls_safetensors")
    b = read_hf_weights(FIXTURES / "hf_tiny_cls_bin")
    assert sorted(a) == sorted(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_legacy_pytorch_bin_reads_without_pytorch(tmp_path):
    """torch.save before PyTorch 1.6 (General TinyBERT, many older hub checkpoints): no zip, raw storages."""
    a = read_hf_weights(FIXTURES / "hf_tiny_cls_safetensors")
    b = read_hf_weights(FIXTURES / "hf_tiny_cls_legacy_bin")
    assert sorted(b) == sorted([*a, "extra.slice", "extra.transposed"])
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    np.testing.assert_array_equal(b["extra.transposed"], a["classifier.weight"].T)  # a strided view
    np.testing.assert_array_equal(b["extra.slice"], a["bert.embeddings.word_embeddings.weight"][5:9, 2:6])
    result = io.convert_hf(FIXTURES / "hf_tiny_cls_legacy_bin", tmp_path / "m")
    assert sorted(result["ignored"]) == ["extra.slice", "extra.transposed"]
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "pytorch_model.bin").write_bytes(b"not a checkpoint at all")
    with pytest.raises(UsageError, match="bad/pytorch_model.bin: not a PyTorch checkpoint"):
        read_hf_weights(bad)
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    (truncated / "pytorch_model.bin").write_bytes(
        (FIXTURES / "hf_tiny_cls_legacy_bin" / "pytorch_model.bin").read_bytes()[:-100]
    )
    with pytest.raises(UsageError, match="truncated"):
        read_hf_weights(truncated)


def test_pretraining_layout_keeps_the_encoder_and_reports_the_rest(tmp_path):
    result = io.convert_hf(FIXTURES / "hf_tiny_pretraining", tmp_path / "m")
    assert result["initialized"] == ["classifier.bias", "classifier.weight"]
    assert result["ignored"] and all(name.startswith("cls.") for name in result["ignored"])
    ref = np.load(FIXTURES / "hf_tiny_pretraining" / "reference.npz")
    assert_matches_reference(forward(io.load_model(tmp_path / "m"), ref), ref)


def broken_copy(tmp_path: Path, edit) -> Path:
    src = FIXTURES / "hf_tiny_cls_safetensors"
    dst = tmp_path / "broken"
    dst.mkdir(parents=True)
    for name in ("config.json", "vocab.txt"):
        (dst / name).write_bytes((src / name).read_bytes())
    tensors = read_hf_weights(src)
    edit(tensors)
    write_safetensors(dst / "model.safetensors", tensors)
    return dst


def test_unknown_missing_and_misshapen_tensors_are_named(tmp_path):
    extra = broken_copy(tmp_path / "a", lambda t: t.update({"bert.encoder.layer.0.extra.weight": np.zeros(3)}))
    with pytest.raises(UsageError, match=r"unexpected \['bert.encoder.layer.0.extra.weight'\]"):
        io.convert_hf(extra, tmp_path / "a" / "out")
    missing = broken_copy(tmp_path / "b", lambda t: t.pop("bert.encoder.layer.1.output.dense.weight"))
    with pytest.raises(UsageError, match=r"missing \['bert.encoder.layer.1.output.dense.weight'\]"):
        io.convert_hf(missing, tmp_path / "b" / "out")
    shape = broken_copy(tmp_path / "c", lambda t: t.update({"bert.pooler.dense.bias": np.zeros(31)}))
    with pytest.raises(UsageError, match=r"'bert.pooler.dense.bias' has shape \(31,\) in the checkpoint but \(32,\)"):
        io.convert_hf(shape, tmp_path / "c" / "out")
    for case in "abc":
        assert not (tmp_path / case / "out").exists()


def test_convert_refuses_to_overwrite_and_needs_an_hf_folder(tmp_path):
    io.convert_hf(FIXTURES / "hf_tiny_regression", tmp_path / "m")
    with pytest.raises(UsageError, match="already holds a model"):
        io.convert_hf(FIXTURES / "hf_tiny_regression", tmp_path / "m")
    with pytest.raises(UsageError, match="a Hugging Face checkpoint\\? import it with: python -m distil convert-hf"):
        io.read_config(FIXTURES / "hf_tiny_regression")
    assert (ROOT / "tests" / "fixtures" / "make_hf_reference.py").is_file()

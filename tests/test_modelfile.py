"""The self-describing model file round-trips exactly and refuses every broken or foreign file by name."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pytest
import torch

from shared.config import PreprocessConfig
from shared.modelfile import ModelFileError, load_model_file, save_model_file, weights_sha256
from shared.models import build_model
from shared.tasks.classification.evaluation import predict_proba
from shared.training import seed_everything

SIZE = 32


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def make_model():
    seed_everything(0)
    model = build_model("smallcnn", 2, SIZE, dropout=0.1)
    # Non-default BN statistics, so a file that dropped buffers would predict differently.
    model.train()
    with torch.no_grad():
        model(torch.rand(16, 1, SIZE, SIZE) * 3)
    return model.eval()


def save(path, model=None, **over):
    args = dict(
        architecture="smallcnn",
        arch_kwargs={"dropout": 0.1},
        classes=["normal", "nodule"],
        preprocess=PreprocessConfig(image_size=SIZE),
        threshold=0.37,
        provenance={"trained_by": "site-a", "kind": "local", "epochs": 3, "extra": {"val_auc": 0.91}},
    )
    args.update(over)
    return save_model_file(path, model if model is not None else make_model(), **args)


def test_round_trip_gives_identical_predictions_and_metadata(tmp_path):
    model = make_model()
    path = tmp_path / "m.pt"
    digest = save(path, model)
    loaded = load_model_file(path)
    x = torch.rand(5, 1, SIZE, SIZE)
    assert np.array_equal(predict_proba(model, x), predict_proba(loaded.model, x))
    assert digest == loaded.weights_sha256 == weights_sha256(model.state_dict())
    assert digest == loaded.provenance["weights_sha256"]
    assert not loaded.model.training
    assert loaded.classes == ["normal", "nodule"]
    assert loaded.preprocess == PreprocessConfig(image_size=SIZE)
    assert loaded.threshold == pytest.approx(0.37)
    assert loaded.architecture == "smallcnn" and loaded.arch_kwargs == {"dropout": 0.1}
    prov = loaded.provenance
    assert prov["trained_by"] == "site-a" and prov["kind"] == "local" and prov["epochs"] == 3
    assert prov["rounds"] is None and prov["extra"] == {"val_auc": 0.91}
    assert datetime.fromisoformat(prov["created"]).utcoffset().total_seconds() == 0
    assert prov["fedrad_version"]
    # Only plain types and tensors: loadable with the safe loader.
    doc = torch.load(path, weights_only=True)
    assert doc["format"] == "fedrad-model" and doc["format_version"] == 1 and doc["input_size"] == [1, SIZE, SIZE]


def test_hash_ignores_key_order_and_device_but_sees_any_change():
    sd = make_model().state_dict()
    reordered = dict(reversed(list(sd.items())))
    assert weights_sha256(sd) == weights_sha256(reordered)
    changed = dict(sd)
    key = "classifier.bias"
    changed[key] = sd[key].clone()
    changed[key][0] += 1e-6
    assert weights_sha256(changed) != weights_sha256(sd)
    retyped = dict(sd)
    retyped[key] = sd[key].double()
    assert weights_sha256(retyped) != weights_sha256(sd)


def test_save_rejects_bad_input_before_writing(tmp_path):
    path = tmp_path / "m.pt"
    with pytest.raises(ValueError, match="kind"):
        save(path, provenance={"trained_by": "a", "kind": "weird"})
    with pytest.raises(ValueError, match="threshold"):
        save(path, threshold=1.5)
    with pytest.raises(ValueError, match="extra"):
        save(path, provenance={"trained_by": "a", "kind": "local", "auc": 0.9})
    with pytest.raises(ValueError, match="cannot be stored"):
        save(path, provenance={"trained_by": "a", "kind": "local", "extra": {"when": datetime.now()}})
    with pytest.raises(ValueError, match="classifier"):
        save(path, classes=["a", "b", "c"])  # a 2-class model saved as 3 classes
    assert not path.exists()


def rewrite(path, mutate):
    doc = torch.load(path, weights_only=True)
    mutate(doc)
    torch.save(doc, path)


def _drop_classes(d):
    del d["classes"]


def _drop_sha(d):
    del d["provenance"]["weights_sha256"]


def _version_2(d):
    d["format_version"] = 2


def _unknown_arch(d):
    d["architecture"]["name"] = "transformer9000"


def _tamper(d):
    d["state_dict"]["classifier.bias"][0] += 0.5


def _wrong_shape_consistent_hash(d):
    d["state_dict"]["classifier.bias"] = torch.zeros(3)
    d["provenance"]["weights_sha256"] = weights_sha256(d["state_dict"])


def _extra_key_consistent_hash(d):
    d["state_dict"]["head.weight"] = torch.zeros(1)
    d["provenance"]["weights_sha256"] = weights_sha256(d["state_dict"])


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (_drop_classes, "missing metadata key 'classes'"),
        (_drop_sha, "missing metadata key 'provenance.weights_sha256'"),
        (_version_2, "unsupported format_version 2"),
        (_unknown_arch, "architecture 'transformer9000' is not known"),
        (_tamper, "sha256 mismatch"),
        (_wrong_shape_consistent_hash, "'classifier.bias' has shape [3]"),
        (_extra_key_consistent_hash, "'head.weight'"),
    ],
)
def test_broken_model_files_are_refused_with_a_named_problem(tmp_path, mutate, expected):
    path = tmp_path / "m.pt"
    save(path)
    rewrite(path, mutate)
    with pytest.raises(ModelFileError) as exc:
        load_model_file(path)
    assert str(path) in str(exc.value)
    assert expected in str(exc.value)


def test_missing_file(tmp_path):
    with pytest.raises(ModelFileError, match="not found"):
        load_model_file(tmp_path / "nope.pt")


def test_random_bytes_are_not_a_model_file(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ModelFileError, match="not a FedRad model file.*not a PyTorch file"):
        load_model_file(path)


def test_truncated_file_is_refused(tmp_path):
    path = tmp_path / "m.pt"
    save(path)
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(ModelFileError, match="damaged or truncated"):
        load_model_file(path)


def test_plain_state_dict_is_recognised_as_such(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save(make_model().state_dict(), path)
    with pytest.raises(ModelFileError, match="plain PyTorch state dict"):
        load_model_file(path)


def test_pickled_code_is_never_executed(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "fedrad-model", "payload": datetime.now()}, path)  # needs full unpickling
    with pytest.raises(ModelFileError, match="never unpickles"):
        load_model_file(path)

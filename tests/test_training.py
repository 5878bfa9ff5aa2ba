"""Patient-level splits, batched augmentation and the local training loop on small synthetic data."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from shared.augment import BatchAugment, build_augment
from shared.modelfile import weights_sha256
from shared.models import build_model
from shared.splits import stratified_group_split
from shared.tasks.classification.dataset import SiteDataset
from shared.tasks.classification.evaluation import class_weights, predict_proba
from shared.training import OptimizerCarry, TrainConfig, seed_everything, train_model


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def blob_dataset(n: int = 64, size: int = 32, seed: int = 0) -> SiteDataset:
    """Half the images carry a bright Gaussian blob at a random place: learnable, not trivially by mean."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    images = 0.3 + 0.1 * torch.rand(n, 1, size, size, generator=g)
    for i in range(n):
        if labels[i]:
            cy, cx = torch.randint(8, size - 8, (2,), generator=g).tolist()
            images[i, 0] += 0.6 * torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 3.0**2))
    return SiteDataset(
        images=images.clamp(0, 1),
        labels=labels,
        classes=["normal", "nodule"],
        groups=[f"p{i // 2}" for i in range(n)],
    )


def fresh_model(seed: int = 0, size: int = 32):
    seed_everything(seed)
    return build_model("smallcnn", 2, size)


# --- splits ---------------------------------------------------------------------------------------


def patients(n_patients: int = 60, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels, groups = [], []
    for p in range(n_patients):
        y = int(rng.random() < 0.3)  # imbalanced, label constant per patient
        for _ in range(rng.integers(1, 4)):
            labels.append(y)
            groups.append(f"patient-{p}")
    return labels, groups


def test_split_keeps_patients_apart_and_both_classes_in_val():
    labels, groups = patients()
    train, val = stratified_group_split(labels, groups, val_fraction=0.2, seed=0)
    assert len(set(train) | set(val)) == len(labels) and not set(train) & set(val)
    g = np.asarray(groups)
    assert not set(g[train]) & set(g[val])
    y = np.asarray(labels)
    assert set(y[val]) == {0, 1} and set(y[train]) == {0, 1}
    assert 0.1 <= len(val) / len(labels) <= 0.3
    # class balance roughly kept
    assert abs(y[val].mean() - y.mean()) < 0.15


def test_split_is_deterministic_by_seed():
    labels, groups = patients()
    a = stratified_group_split(labels, groups, 0.25, seed=3)
    b = stratified_group_split(labels, groups, 0.25, seed=3)
    c = stratified_group_split(labels, groups, 0.25, seed=4)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_split_finds_a_val_fold_with_the_rare_class():
    # Only 3 positive patients among 30: the chosen fold must still hold one.
    labels = [1 if p < 3 else 0 for p in range(30)]
    groups = [f"p{p}" for p in range(30)]
    for seed in range(5):
        train, val = stratified_group_split(labels, groups, 0.2, seed=seed)
        assert 1 in np.asarray(labels)[val] and 1 in np.asarray(labels)[train]


def test_split_without_groups_treats_cases_as_patients_and_rejects_bad_input():
    train, val = stratified_group_split([0, 1] * 10, [], 0.2, seed=0)
    assert len(train) + len(val) == 20 and len(val) > 0
    with pytest.raises(ValueError, match="val_fraction"):
        stratified_group_split([0, 1], ["a", "b"], 1.5, seed=0)
    with pytest.raises(ValueError, match="patient"):
        stratified_group_split([0, 1, 0], ["a", "a", "a"], 0.2, seed=0)
    with pytest.raises(ValueError, match="groups"):
        stratified_group_split([0, 1, 0], ["a", "b"], 0.2, seed=0)


# --- augmentation ---------------------------------------------------------------------------------


def test_augment_strength_zero_is_identity_and_default_changes_images():
    x = torch.rand(8, 1, 32, 32)
    assert build_augment(0.0)(x) is x
    before = x.clone()
    y = build_augment(1.0)(x, torch.Generator().manual_seed(0))
    assert torch.equal(x, before), "input must not be modified in place"
    assert y.shape == x.shape and y.dtype == x.dtype
    assert not torch.allclose(y, x, atol=1e-3)
    # small jitter: overall intensity is about preserved
    assert abs(float(y.mean() - x.mean())) < 0.1


def test_augment_is_reproducible_from_the_generator():
    x = torch.rand(8, 1, 32, 32)
    aug = build_augment(1.0)
    a = aug(x, torch.Generator().manual_seed(7))
    b = aug(x, torch.Generator().manual_seed(7))
    c = aug(x, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_augment_flip_is_exact_and_per_image():
    aug = BatchAugment(1.0)
    aug.max_rotate_deg = aug.max_zoom = aug.max_scale = aug.max_shift = aug.max_noise_std = 0.0
    x = torch.rand(64, 1, 16, 16)
    y = aug(x, torch.Generator().manual_seed(0))
    flipped = [torch.allclose(y[i], x[i].flip(-1), atol=1e-5) for i in range(64)]
    same = [torch.allclose(y[i], x[i], atol=1e-5) for i in range(64)]
    assert all(f or s for f, s in zip(flipped, same))
    assert 16 < sum(flipped) < 48  # p = 0.5, drawn independently per image


def test_augment_rejects_negative_strength():
    with pytest.raises(ValueError, match="strength"):
        build_augment(-1.0)


# --- training -------------------------------------------------------------------------------------


def test_class_weights_are_inverse_frequency():
    w = class_weights(torch.tensor([0, 0, 0, 1]), 3)
    assert torch.allclose(w, torch.tensor([4 / 9, 4 / 3, 0.0]))


def test_smallcnn_learns_blobs_and_reports_history():
    data, val = blob_dataset(64, seed=0), blob_dataset(32, seed=1)
    model = fresh_model()
    epochs_seen, batches = [], []
    cfg = TrainConfig(epochs=6, batch_size=16, lr=3e-3)
    hist = train_model(
        model, data, cfg, val=val, on_epoch=epochs_seen.append, on_batch=lambda i, n: batches.append((i, n))
    )
    assert [h["epoch"] for h in hist] == list(range(1, 7)) and epochs_seen == hist
    assert batches[-1] == (24, 24) and len(batches) == 24
    assert hist[-1]["train_acc"] > 0.9
    assert hist[-1]["loss"] < hist[0]["loss"]
    assert hist[-1]["val_auc"] is not None and hist[-1]["val_auc"] > 0.9
    assert {"val_loss", "val_acc", "images_per_s"} <= set(hist[-1])
    # eval mode (BatchNorm running statistics) agrees with what training learned
    proba = predict_proba(model, data.images)
    assert proba.shape == (64, 2) and np.allclose(proba.sum(1), 1, atol=1e-5)
    assert (proba.argmax(1) == data.labels.numpy()).mean() > 0.9
    assert not model.training


def test_untrained_model_is_not_already_accurate():
    # Guards the test above: the blobs are not separable by a random network.
    data = blob_dataset(64, seed=0)
    acc = (predict_proba(fresh_model(), data.images).argmax(1) == data.labels.numpy()).mean()
    assert acc < 0.75


def test_training_is_deterministic_by_seed():
    data = blob_dataset(32, seed=0)
    cfg = TrainConfig(epochs=2, batch_size=8)
    hashes = []
    for seed in (0, 0, 1):
        model = fresh_model()
        train_model(model, data, TrainConfig(**{**cfg.to_dict(), "seed": seed}))
        hashes.append(weights_sha256(model.state_dict()))
    assert hashes[0] == hashes[1]
    assert hashes[0] != hashes[2]


def test_proximal_term_keeps_weights_closer_to_the_start():
    data = blob_dataset(32, seed=0)
    start = fresh_model()

    def distance(mu: float) -> float:
        model = copy.deepcopy(start)
        train_model(model, data, TrainConfig(epochs=3, batch_size=8, lr=3e-3, proximal_mu=mu))
        with torch.no_grad():
            pairs = zip(model.parameters(), start.parameters())
            return sum(float((p - q).pow(2).sum()) for p, q in pairs) ** 0.5

    free, prox = distance(0.0), distance(5.0)
    assert prox < 0.8 * free


def test_val_auc_is_none_when_val_has_one_class_and_tiny_batch_is_skipped():
    data = blob_dataset(17, seed=0)  # 17 = 2·8 + 1: the 1-image batch is skipped
    val = data.subset([i for i in range(17) if data.labels[i] == 0])
    hist = train_model(fresh_model(), data, TrainConfig(epochs=1, batch_size=8), val=val)
    assert hist[0]["val_auc"] is None and hist[0]["val_loss"] > 0


def test_predict_proba_restores_training_mode():
    model = fresh_model().train()
    predict_proba(model, torch.rand(3, 1, 32, 32), batch_size=2)
    assert model.training


def test_bad_train_config_is_rejected():
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=1)
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0)


def test_cancelling_from_a_callback_leaves_batchnorm_usable():
    model = fresh_model()

    def cancel(step, total):
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_model(model, blob_dataset(32), TrainConfig(epochs=1, batch_size=8), on_batch=cancel)
    assert all(m.momentum == 0.1 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_labels_outside_the_class_list_are_rejected():
    data = blob_dataset(8)
    data.labels[0] = 5
    with pytest.raises(ValueError, match="class indices"):
        train_model(fresh_model(), data, TrainConfig(epochs=1, batch_size=4))


def test_a_carried_optimizer_continues_adamw_instead_of_starting_again():
    """With a carry the second call counts its steps on from the first (AdamW continues); without, it starts again."""
    data = blob_dataset(32, seed=0)
    cfg = TrainConfig(epochs=1, batch_size=8, lr=3e-3, augment=0.0)
    carried, fresh = fresh_model(), fresh_model()
    carry = OptimizerCarry()
    for rnd in (1, 2):
        train_model(carried, data, TrainConfig(**{**cfg.to_dict(), "seed": rnd}), carry=carry)
        train_model(fresh, data, TrainConfig(**{**cfg.to_dict(), "seed": rnd}))
    steps = [s["step"] for s in carry.state["state"].values()]
    assert all(int(s) == 8 for s in steps)  # 4 batches a call, counted on from the first call
    assert weights_sha256(carried.state_dict()) != weights_sha256(fresh.state_dict())
    # A new rate is taken although the carried state holds the old one.
    train_model(carried, data, TrainConfig(**{**cfg.to_dict(), "lr": 1e-4}), carry=carry)
    assert carry.state["param_groups"][0]["lr"] == 1e-4

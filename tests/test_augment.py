"""``walnet train --augment`` (walnet.data.augment): draws seeded per (seed, epoch, index), the
image and its mask moved together, fills, value range, off by default, the same batches with and
without (persistent) loader workers, only the training split augmented, and an augmented run
that resumes exactly."""
from __future__ import annotations

import pytest
import torch

from walnet import cli
from walnet.constants import IGNORE_INDEX
from walnet.data import PlaqueDataset, phantom, read_csv
from walnet.data.augment import Augmentation, EpochSampler, sample_seed
from walnet.engine import trainer
from walnet.engine.config import TrainConfig

SIZE = 48


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return phantom.generate(tmp_path_factory.mktemp("ph") / "data", n=30, seed=0, size=SIZE)


def _image_and_mask():
    """A dark image with a bright off-centre rectangle (so a flip of one and not the other shows)
    and the rectangle's mask."""
    image = torch.full((3, SIZE, SIZE), 0.05, dtype=torch.float64)
    mask = torch.zeros(SIZE, SIZE, dtype=torch.uint8)
    image[:, 12:30, 6:20] = 0.8
    mask[12:30, 6:20] = 1
    return image, mask


def test_draws_are_a_function_of_seed_epoch_and_index():
    image, mask = _image_and_mask()
    augment = Augmentation(seed=3)
    first = augment(image, mask, 2, 5)
    again = Augmentation(seed=3)(image.clone(), mask.clone(), 2, 5)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    for other in (augment(image, mask, 3, 5), augment(image, mask, 2, 6), Augmentation(seed=4)(image, mask, 2, 5)):
        assert not torch.equal(first[0], other[0])
    assert sample_seed(0, 1, 2) != sample_seed(0, 2, 1)
    with pytest.raises(ValueError, match="epoch must be a non-negative integer"):
        augment(image, mask, -1, 0)


def test_image_and_mask_move_together():
    image, mask = _image_and_mask()
    augment = Augmentation(seed=0)
    moved = 0
    for index in range(12):
        out, out_mask = augment(image, mask, 0, index)
        moved += not torch.equal(out_mask, mask)
        assert out.dtype == image.dtype and out.shape == image.shape
        assert out_mask.dtype == torch.uint8 and set(out_mask.unique().tolist()) <= {0, 1, IGNORE_INDEX}
        assert torch.equal(out[0], out[1]) and torch.equal(out[0], out[2])  # grey stays grey
        bright = out[0] > 0.4
        inside, outside = out_mask == 1, out_mask == 0
        # the mask marks the bright pixels, but for a rim of interpolated pixels along the edge
        assert (bright & inside).sum() >= 0.85 * inside.sum(), index
        assert (bright & outside).sum() <= 0.15 * inside.sum(), index
    assert moved == 12


def _away_from(region: torch.Tensor) -> torch.Tensor:
    """The pixels more than one pixel (8-neighbourhood) away from `region`."""
    near = torch.nn.functional.max_pool2d(region[None, None].float(), 3, stride=1, padding=1)[0, 0]
    return near == 0


def test_outside_the_image_the_mask_is_unknown_and_the_image_black():
    image = torch.full((3, SIZE, SIZE), 0.6, dtype=torch.float64)
    mask = torch.zeros(SIZE, SIZE, dtype=torch.uint8)
    filled = 0
    for index in range(12):
        out, out_mask = Augmentation(seed=1)(image, mask, 0, index)
        unknown = out_mask == IGNORE_INDEX
        assert set(out_mask.unique().tolist()) <= {0, IGNORE_INDEX}
        # nearest (mask) and bilinear (image) resampling may disagree on a rim one pixel wide
        outside, inside = unknown & _away_from(~unknown), ~unknown & _away_from(unknown)
        filled += bool(outside.any())
        assert (out[0][outside] == 0).all() and (out[0][inside] > 0).all()
    assert filled >= 8  # a rotation or zoom-out leaves a border to fill in most draws


def test_values_stay_in_the_unit_interval():
    augment = Augmentation(seed=2)
    mask = torch.zeros(SIZE, SIZE, dtype=torch.uint8)
    for index, image in enumerate([torch.ones(3, SIZE, SIZE), torch.zeros(3, SIZE, SIZE),
                                   torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))]):
        for epoch in range(4):
            out, _ = augment(image, mask, epoch, index)
            assert out.dtype == torch.float32 and 0 <= out.min() and out.max() <= 1


def test_bad_inputs_are_clear_errors():
    augment = Augmentation()
    with pytest.raises(ValueError, match="mask must be a uint8"):
        augment(torch.rand(3, 8, 8), torch.zeros(8, 7, dtype=torch.uint8), 0, 0)
    with pytest.raises(ValueError, match="image must be a float"):
        augment(torch.zeros(3, 8, 8, dtype=torch.uint8), torch.zeros(8, 8, dtype=torch.uint8), 0, 0)
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        Augmentation(seed=-1)


def test_off_by_default_items_are_bitwise_as_read(data):
    records, _ = read_csv(data)
    records = records[:4]
    assert TrainConfig(csv="x.csv", output="run").augment is False
    plain = PlaqueDataset(records, SIZE)
    augmented = PlaqueDataset(records, SIZE, augment=Augmentation(0))
    for index in range(len(records)):
        item = plain[index]
        assert torch.equal(plain[index, 7]["image"], item["image"])  # the epoch does nothing without augmentation
        changed = augmented[index, 0]
        assert changed["index"] == index and changed["label"] == item["label"]
        assert not torch.equal(changed["image"], item["image"])
        augmented.augment = None
        same = augmented[index, 0]
        augmented.augment = Augmentation(0)
        for key in ("image", "mask"):
            assert same[key].dtype == item[key].dtype and torch.equal(same[key], item[key]), key
    # a plain index takes the epoch of set_epoch
    augmented.set_epoch(3)
    assert torch.equal(augmented[1]["image"], augmented[1, 3]["image"])


def _batches(loader, sampler, epochs):
    out = []
    for epoch in epochs:
        sampler.set_epoch(epoch)
        out.append([(b["image"], b["mask"], b["index"]) for b in loader])
    return out


def test_two_persistent_workers_give_the_batches_of_none(data):
    records, _ = read_csv(data)
    dataset = PlaqueDataset(records[:8], SIZE, augment=Augmentation(0))

    def loader(workers):
        sampler = EpochSampler(torch.utils.data.DistributedSampler(dataset, 1, 0, shuffle=True, seed=0))
        return torch.utils.data.DataLoader(dataset, 4, sampler=sampler, num_workers=workers,
                                           persistent_workers=workers > 0), sampler

    # epoch 1 after epoch 0: persistent workers keep their dataset copy, yet see the new epoch
    serial = _batches(*loader(0), [0, 1])
    parallel = _batches(*loader(2), [0, 1])
    assert not torch.equal(serial[0][0][0], serial[1][0][0])  # another order and other draws
    for mine, theirs in zip(serial, parallel):
        for (image, mask, index), (image2, mask2, index2) in zip(mine, theirs, strict=True):
            assert torch.equal(index, index2) and torch.equal(image, image2) and torch.equal(mask, mask2)


def test_only_the_training_split_is_augmented(data, tmp_path, monkeypatch):
    loaders = []

    def stop_at_validation(dataset, config, speed, pin, **kw):
        loaders.append((dataset, kw.get("sampler")))
        if len(loaders) == 2:
            raise KeyboardInterrupt  # the training and validation loaders are known: no need to train

    monkeypatch.setattr(trainer, "_loader", stop_at_validation)
    for augment in (False, True):
        loaders.clear()
        config = TrainConfig(csv=data, output=tmp_path / f"run{augment}", size=SIZE, device="cpu", augment=augment)
        with pytest.raises(KeyboardInterrupt):
            trainer.train(config)
        (train_set, sampler), (val_set, _) = loaders
        assert val_set.augment is None
        if augment:
            assert isinstance(train_set.augment, Augmentation) and isinstance(sampler, EpochSampler)
        else:  # the paper's setup: the loader of a run without --augment is what it always was
            assert train_set.augment is None and type(sampler) is torch.utils.data.DistributedSampler


def test_augmented_run_resumes_like_an_uninterrupted_one(data, tmp_path, one_thread):
    small = ["--csv", str(data), "--backbone", "resnet18", "--attention-channels", "8", "--size", str(SIZE),
             "-b", "8", "--rcm-warmup", "1", "--device", "cpu", "--augment"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert cli.main(["train", *small, "--output", str(whole), "--epochs", "2"]) == 0
    assert cli.main(["train", *small, "--output", str(cut), "--epochs", "1"]) == 0
    assert cli.main(["train", *small, "--output", str(cut), "--epochs", "2", "--resume", str(cut / "last.pt")]) == 0
    a = torch.load(whole / "last.pt", weights_only=True)
    b = torch.load(cut / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 1 and a["args"]["augment"] is True
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name

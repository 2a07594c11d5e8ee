"""TTA presets: the views they produce, how they merge, their Hydra configs, and order safety."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image
from torch.utils.data import DataLoader

from carclf.data.dataset import CarDataset, skip_none_collate
from carclf.data.images import load_rgb
from carclf.data.presets import EvalPreset
from carclf.data.tta import (
    TTA_PRESETS,
    CropPreset,
    HFlipTTA,
    MultiCropTTA,
    MultiScaleTTA,
    NoTTA,
    TTAPreset,
    View,
    merge_views,
    tta_preset,
)
from carclf.inference.files import loader_logits

ROOT = Path(__file__).resolve().parents[1]
NORM = {"mean": [0.5] * 3, "std": [0.5] * 3}


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (60, 90, 3), dtype=np.uint8)


def test_no_tta_is_exactly_the_eval_preset(image):
    views = NoTTA(size=32, **NORM)(image)
    assert len(views) == 1
    assert torch.equal(views[0], EvalPreset(size=32, **NORM)(image))


def test_hflip_view_is_the_mirrored_eval_view(image):
    plain, flipped = HFlipTTA(size=32, **NORM)(image)
    assert torch.equal(flipped, plain.flip(-1))


def test_multiscale_views_have_their_own_sizes(image):
    views = MultiScaleTTA(size=32, scales=(1.0, 1.25), **NORM)(image)
    assert [tuple(v.shape) for v in views] == [(3, 32, 32), (3, 40, 40)]


def test_crop_views_cut_the_enlarged_eval_view(image):
    big = EvalPreset(size=40, **NORM)(image)  # 32 * zoom 1.25
    tl = CropPreset(size=32, position="tl", zoom=1.25, **NORM)(image)
    br = CropPreset(size=32, position="br", zoom=1.25, **NORM)(image)
    assert torch.equal(tl, big[:, :32, :32])
    assert torch.equal(br, big[:, 8:, 8:])
    views = MultiCropTTA(size=32, zoom=1.25, hflip=True, **NORM)(image)
    assert len(views) == 10 and all(v.shape == (3, 32, 32) for v in views)


def test_merge_rules():
    logits = torch.tensor([[[2.0, 0.0], [0.0, 0.0]]])  # 1 image, 2 views, 2 classes
    by_logits = merge_views(logits, merge="logits")
    assert torch.allclose(by_logits, torch.softmax(torch.tensor([[1.0, 0.0]]), 1))
    by_probs = merge_views(logits, merge="probs")
    first = torch.softmax(torch.tensor([2.0, 0.0]), 0)
    assert torch.allclose(by_probs[0], (first + torch.tensor([0.5, 0.5])) / 2)
    # temperature divides the logits of each view before merging
    assert torch.allclose(
        merge_views(logits, 2.0, "probs")[0], merge_views(logits / 2, 1.0, "probs")[0]
    )
    with pytest.raises(ValueError, match="unknown TTA merge"):
        merge_views(logits, merge="median")


def test_bad_settings_name_what_is_wrong():
    with pytest.raises(ValueError, match="unknown TTA policy 'fancy'"):
        tta_preset("fancy", size=32, **NORM)
    with pytest.raises(ValueError, match="unknown TTA crop"):
        TTAPreset(size=32, views=[View(crop="middle")], **NORM)
    with pytest.raises(ValueError, match="unknown TTA merge"):
        HFlipTTA(size=32, merge="max", **NORM)
    with pytest.raises(ValueError, match="zoom"):
        MultiCropTTA(size=32, zoom=0.5, **NORM)


@pytest.mark.parametrize(
    "path", sorted((ROOT / "conf" / "tta").glob("*.yaml")), ids=lambda p: p.stem
)
def test_each_tta_config_builds_its_named_preset(path):
    preset = instantiate(OmegaConf.load(path), size=32, **NORM)
    assert isinstance(preset, TTAPreset)
    assert preset.name == path.stem, "conf/tta/<name>.yaml must build the preset called <name>"
    reference = TTA_PRESETS[path.stem](size=32, **NORM)
    assert preset.views == reference.views, "YAML values should equal the class defaults"
    assert preset.merge == reference.merge


def test_every_named_preset_has_a_config():
    assert {p.stem for p in (ROOT / "conf" / "tta").glob("*.yaml")} == set(TTA_PRESETS)


class ContentModel:
    """A stand-in classifier whose logits are a function of each view's pixels only."""

    num_classes = 3

    def view_logits(self, views):
        return torch.stack([v.mean(dim=(2, 3)) for v in views], dim=1)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("tta-photos")
    rng = np.random.default_rng(1)
    paths = []
    for i in range(23):
        arr = np.full((40, 50, 3), (i * 11) % 256, dtype=np.uint8)
        arr[:, :25] = rng.integers(0, 256, 3, dtype=np.uint8)  # asymmetric: flips matter
        Image.fromarray(arr).save(folder / f"{i:03d}.png")
        paths.append(str(folder / f"{i:03d}.png"))
    (folder / "broken.png").write_bytes(b"\x89PNG broken")
    return [*paths[:5], str(folder / "broken.png"), *paths[5:]]


def test_shuffled_loader_maps_back_to_the_right_rows(photos):
    preset = HFlipTTA(size=16, **NORM)
    dataset = CarDataset(photos, None, preset)
    model = ContentModel()

    def run(shuffle: bool, workers: int = 0):
        g = torch.Generator().manual_seed(123)
        loader = DataLoader(
            dataset,
            batch_size=4,
            shuffle=shuffle,
            generator=g,
            num_workers=workers,
            collate_fn=skip_none_collate,
        )
        return loader_logits(model, loader, len(dataset), len(preset))

    ordered, seen = run(False)
    shuffled, seen2 = run(True, workers=2)
    assert (
        seen.tolist()
        == seen2.tolist()
        == [p.endswith(".png") and "broken" not in p for p in photos]
    )
    np.testing.assert_array_equal(ordered, shuffled)
    for i, path in enumerate(photos):  # each row holds the logits of its own file
        if seen[i]:
            expected = model.view_logits([v[None] for v in preset(load_rgb(path))])[0]
            np.testing.assert_allclose(shuffled[i], expected.numpy(), atol=1e-6)
    assert np.isnan(shuffled[5]).all()


def test_datamodule_tta_dataloader(tmp_path):
    from carclf.data.datamodule import CarDataModule

    rng = np.random.default_rng(2)
    rows = []
    for c in range(2):
        (tmp_path / "train" / str(c)).mkdir(parents=True)
        for i in range(4):
            name = f"{c}{i}.jpg"
            Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(
                tmp_path / "train" / str(c) / name
            )
            rows.append((name, c))
    (tmp_path / "test_upload").mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(
            tmp_path / "test_upload" / f"t{i}.jpg"
        )
    pd.DataFrame(rows, columns=["Id", "Category"]).to_csv(tmp_path / "train.csv", index=False)
    dm = CarDataModule(str(tmp_path), image_size=24, batch_size=2, num_workers=0)
    loader = dm.tta_dataloader("hflip_multiscale", "test")
    views, labels, index = next(iter(loader))
    assert len(views) == 4 and views[0].shape == (2, 3, 24, 24) and views[2].shape[-1] == 28
    assert index.tolist() == [0, 1] and labels.tolist() == [-1, -1]
    views, labels, index = next(iter(dm.tta_dataloader(None, "val")))
    assert len(views) == 1 and (labels >= 0).all()

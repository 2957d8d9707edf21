"""CLEVRDataModule on real rendered shards (the `clevr_shards` fixture: 32x32, counts 1-3)."""

from __future__ import annotations

import collections
import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lcsbench.data import conditioning as C
from lcsbench.data.datamodule import CLEVRDataModule, ShardError
from lcsbench.data.samplers import StridedSampler
from lcsbench.data.shards import read_shard_samples


def scenes_by_key(root: Path) -> dict[str, dict]:
    """Every sample's scene JSON and raw PNG, read straight from the tars (independent of the DataModule)."""
    found = {}
    for tar in sorted(root.glob("n*/*.tar")):
        for sample in read_shard_samples(tar):
            found[sample["__key__"]] = {"scene": json.loads(sample["json"]), "png": sample["png"]}
    return found


def make_dm(root, **overrides):
    options = dict(batch_size=6, num_workers=0, steps_per_epoch=4, shuffle_buffer=12, seed=0)
    return CLEVRDataModule(str(root), **{**options, **overrides})


def val_samples(dm) -> list[dict]:
    dm.setup()
    rows = []
    for batch in dm.val_dataloader():
        rows += [{name: value[i] for name, value in batch.items()} for i in range(len(batch["key"]))]
    return rows


def test_lcsbench_data_imports_without_lightning():
    code = ("import sys, lcsbench.data, lcsbench.data.conditioning; "
            "assert 'lightning' not in sys.modules, 'lightning imported'; "
            "assert lcsbench.data.CLEVRDataModule.__name__ == 'CLEVRDataModule'; "
            "assert 'lightning' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize("label_mode", C.LABEL_MODES)
def test_label_modes_match_scene_json(clevr_shards, label_mode):
    truth = scenes_by_key(clevr_shards)
    dm = make_dm(clevr_shards, label_mode=label_mode, grid_size=8)
    rows = val_samples(dm)
    assert len(rows) == 12  # 4 held-out images x 3 counts, each exactly once
    assert sorted(r["key"] for r in rows) == sorted(k for k in truth if "_val_" in k)
    train_batch = next(iter(dm.train_dataloader()))
    rows += [{name: value[i] for name, value in train_batch.items()} for i in range(6)]
    for row in rows:
        scene = truth[row["key"]]["scene"]
        n = len(scene["objects"])
        full = C.location_grid(scene, grid_size=8)
        assert row["cond"].shape == (8, 8) and row["cond"].dtype == torch.long
        assert row["num_objects"] == n == scene["num_objects"]
        expected_sum = {"all": n, "single": 1, "drop_one": n - 1}.get(label_mode)
        if expected_sum is None:
            assert 1 <= row["cond"].sum() <= n
        else:
            assert row["cond"].sum() == expected_sum
        if label_mode == "all":
            assert torch.equal(row["cond"], full)
        assert (row["cond"] <= full).all()  # only cells that hold real object centres
        assert row["num_labelled"] == row["cond"].sum()
        assert torch.allclose(row["label"], C.encode_label(row["cond"], "location"))
        assert row["label"].shape == (64,)


def test_validation_labels_are_reproducible(clevr_shards):
    first = {r["key"]: r["cond"] for r in val_samples(make_dm(clevr_shards, label_mode="random"))}
    again = {r["key"]: r["cond"] for r in val_samples(make_dm(clevr_shards, label_mode="random", num_workers=2,
                                                              val_batch_size=5))}
    assert all(torch.equal(first[k], again[k]) for k in first)  # independent of batching and workers


def test_color_counts_match_scene_json(clevr_shards):
    truth = scenes_by_key(clevr_shards)
    dm = make_dm(clevr_shards, conditioning="color")
    assert dm.label_dim == 8
    for row in val_samples(dm):
        scene = truth[row["key"]]["scene"]
        expected = [sum(o["color"] == name for o in scene["objects"]) for name in C.COLOR_NAMES]
        assert row["cond"].tolist() == expected
        assert torch.equal(row["label"], row["cond"].float())  # the counts as they are (label_scale counts)


def test_images_are_the_pngs_scaled_to_minus_one_one(clevr_shards):
    truth = scenes_by_key(clevr_shards)
    dm = make_dm(clevr_shards)
    batch = next(iter(dm.train_dataloader()))
    # training batches carry the PNG's uint8 pixels; the DataModule scales them once they are on the device
    assert batch["image"].shape == (6, 3, 32, 32) and batch["image"].dtype == torch.uint8
    images = dm.on_after_batch_transfer(batch, 0)["image"]
    assert images.dtype == torch.float32 and images.min() >= -1 and images.max() <= 1
    assert images.std() > 0.05  # real renders, not blank frames
    for image, raw, key in zip(images, batch["image"], batch["key"]):
        pixels = np.array(Image.open(io.BytesIO(truth[key]["png"])).convert("RGB"))
        assert torch.equal(raw, torch.from_numpy(pixels).permute(2, 0, 1))
        assert torch.allclose(image, torch.from_numpy(pixels).permute(2, 0, 1).float() / 127.5 - 1)
    assert batch["label"].shape == (6, dm.label_dim) == (6, 256)
    val = next(iter(dm.val_dataloader()))  # validation stays float: commands and callbacks read it directly
    assert val["image"].dtype == torch.float32 and val["image"].min() >= -1 and val["image"].max() <= 1
    assert dm.on_after_batch_transfer(val, 0)["image"] is val["image"]


def test_counts_are_mixed_equally(clevr_shards):
    buffer = 12
    dm = make_dm(clevr_shards, batch_size=8, steps_per_epoch=45, shuffle_buffer=buffer)
    seen = collections.Counter()
    for batch in dm.train_dataloader():
        seen.update(batch["num_objects"].tolist())
    assert sum(seen.values()) == 45 * 8
    # Counts enter the buffer strictly in turn; only the <= `buffer` samples left in it can skew the split.
    assert set(seen) == {1, 2, 3}
    assert all(abs(seen[c] - 120) <= buffer for c in (1, 2, 3)), seen
    only_two = make_dm(clevr_shards, counts="2-3", steps_per_epoch=3)
    assert {n for b in only_two.train_dataloader() for n in b["num_objects"].tolist()} <= {2, 3}


def test_training_stream_epochs_and_seeds(clevr_shards):
    dm = make_dm(clevr_shards, steps_per_epoch=3, num_workers=1)
    loader = dm.train_dataloader()
    assert len(loader) == 3
    epochs = [[k for b in loader for k in b["key"]] for _ in range(2)]
    assert all(len(keys) == 18 for keys in epochs)
    assert epochs[0] != epochs[1]  # a new stream every epoch
    rerun = make_dm(clevr_shards, steps_per_epoch=3, num_workers=1).train_dataloader()
    assert [k for b in rerun for k in b["key"]] == epochs[0]  # reproducible from the seed
    other = make_dm(clevr_shards, steps_per_epoch=3, num_workers=1, seed=1).train_dataloader()
    assert [k for b in other for k in b["key"]] != epochs[0]


def test_two_workers_draw_different_streams(clevr_shards):
    dm = make_dm(clevr_shards, steps_per_epoch=6, num_workers=2, batch_size=4, shuffle_buffer=4)
    batches = [b["key"] for b in dm.train_dataloader()]
    assert len(batches) == 6
    worker0, worker1 = batches[0::2], batches[1::2]  # the DataLoader alternates workers
    assert worker0 != worker1


def test_strided_sampler_splits_exactly():
    dataset = list(range(11))
    parts = [list(StridedSampler(dataset, num_replicas=3, rank=r)) for r in range(3)]
    assert sorted(sum(parts, [])) == dataset  # each index exactly once, no padding
    assert [len(StridedSampler(dataset, 3, r)) for r in range(3)] == [4, 4, 3]


# --- bad input -------------------------------------------------------------------------------------


def test_missing_manifest(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest.json does not exist"):
        make_dm(tmp_path).setup()


def test_resolution_grid_and_count_mismatches(clevr_shards):
    with pytest.raises(ValueError, match=r"resolution 64 was requested but .* holds 32x32"):
        make_dm(clevr_shards, resolution=64).setup()
    make_dm(clevr_shards, resolution=32).setup()
    with pytest.raises(ValueError, match="grid_size 12 does not divide the image size 32x32"):
        make_dm(clevr_shards, grid_size=12).setup()
    with pytest.raises(ValueError, match=r"no training shards for object count\(s\) \[4, 5\]"):
        make_dm(clevr_shards, counts="1-5").setup()
    with pytest.raises(ValueError, match="label_mode must be one of"):
        make_dm(clevr_shards, label_mode="half")
    with pytest.raises(ValueError, match="conditioning kind"):
        make_dm(clevr_shards, conditioning="shape")


def rewrite_tar(path: Path, change) -> None:
    """Rewrite a shard with `change(name, data) -> data` applied to every member."""
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar]
    with tarfile.open(path, "w") as tar:
        for member, data in members:
            data = change(member.name, data)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))


@pytest.fixture
def damaged_copy(clevr_shards, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(clevr_shards, root)
    return root


@pytest.mark.parametrize("num_workers", [0, 1])
def test_corrupt_sample_names_shard_and_key(damaged_copy, num_workers):
    for shard in damaged_copy.glob("n2/train-*.tar"):
        rewrite_tar(shard, lambda name, data: b"not a png" if name.endswith("_00000001.png") or
                    name.endswith("_00000005.png") else data)
    dm = make_dm(damaged_copy, counts="2", num_workers=num_workers, steps_per_epoch=20)
    with pytest.raises(ShardError, match=r"sample n2_train_0000000[15] in shard .*n2/train-00000[01]\.tar cannot be "
                                         r"decoded .*python -m lcsbench render --out .* --repair"):
        for _ in dm.train_dataloader():
            pass


def test_truncated_shards_are_reported(damaged_copy):
    train = damaged_copy / "n1" / "train-000001.tar"
    train.write_bytes(train.read_bytes()[:5000])  # cut inside a member's data
    with pytest.raises(ShardError, match=r"shard .*n1/train-000001\.tar is truncated or corrupt .*--repair"):
        for _ in make_dm(damaged_copy, counts="1", steps_per_epoch=20).train_dataloader():
            pass
    val = damaged_copy / "n3" / "val-000000.tar"
    data = val.read_bytes()
    val.write_bytes(data[: len(data) // 2])
    with pytest.raises(ShardError, match=r"n3/val-000000\.tar .*(truncated|promises)"):
        make_dm(damaged_copy).val_dataloader()


def test_missing_member_and_missing_shard(damaged_copy):
    shard = damaged_copy / "n3" / "train-000000.tar"
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar if m.name != "n3_train_00000002.json"]
    with tarfile.open(shard, "w") as tar:
        for member, data in members:
            tar.addfile(member, io.BytesIO(data))
    with pytest.raises(ShardError, match=r"sample n3_train_00000002 in shard .*has no json member"):
        for _ in make_dm(damaged_copy, counts="3", steps_per_epoch=20).train_dataloader():
            pass
    (damaged_copy / "n2" / "train-000001.tar").unlink()
    with pytest.raises(ShardError, match=r"missing on disk, e\.g\. .*n2/train-000001\.tar"):
        make_dm(damaged_copy).train_dataloader()


@pytest.fixture(scope="module")
def protocol_layouts(tmp_path_factory):
    """Two requested scenes rendered exactly (render --layout), as scripts/judge_layouts.py's file would give."""
    from lcsbench.data.render import render_layouts

    root = tmp_path_factory.mktemp("layouts")
    scenes = [[{"pixel": [20.8, 20.8], "size": "small"}, {"pixel": [8.0, 14.4], "size": "small"}],
              [{"pixel": [11.2, 11.2], "size": "small"}]]
    render_layouts(root, scenes, resolution=32, samples=4, seed=5, progress=False)
    return root


def test_extra_training_renders_join_the_stream_as_one_more_group(clevr_shards, protocol_layouts):
    dm = make_dm(clevr_shards, counts="1", extra_train=[str(protocol_layouts)], batch_size=8, steps_per_epoch=10)
    keys = [key for batch in dm.train_dataloader() for key in batch["key"]]
    from_layouts = [key for key in keys if key.startswith("layout_")]
    assert {key for key in keys if key not in from_layouts} <= {k for k in scenes_by_key(clevr_shards) if k[:2] == "n1"}
    assert abs(len(from_layouts) - len(keys) / 2) <= 12  # two groups in turn; the shuffle buffer skews <= 12
    assert {key for key in from_layouts} == {"layout_eval_00000000", "layout_eval_00000001"}
    assert len({key for key in keys if key.startswith("n1")}) > 2  # still the count groups' own scenes
    val_keys = {key for batch in dm.val_dataloader() for key in batch["key"]}
    assert not any(key.startswith("layout_") for key in val_keys)  # held-out data stays the dataset's own


def test_extra_training_render_at_another_resolution_is_refused(clevr_shards, protocol_layouts, tmp_path):
    import shutil

    other = tmp_path / "layouts64"
    shutil.copytree(protocol_layouts, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["settings"]["resolution"] = 64
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="64x64 images but the dataset is 32x32"):
        make_dm(clevr_shards, extra_train=[str(other)]).setup()
    manifest["settings"]["resolution"] = 32
    (other / "manifest.json").write_text(json.dumps(manifest))
    next(other.glob("layout/*.tar")).unlink()
    with pytest.raises(ShardError, match="missing on disk"):
        make_dm(clevr_shards, extra_train=[str(other)]).setup()

"""The Blender renderer: labels against masks, determinism, resume, splitting, layouts, bad input."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lcsbench.data.render import RenderError, render_dataset
from lcsbench.data.scenes import parse_counts
from lcsbench.data.shards import ShardError, read_shard_samples, verify_shard
from tests.conftest import TINY_DATASET

pytestmark = pytest.mark.blender  # every test here runs the Blender renderer

REPO = Path(__file__).resolve().parents[1]


def shard_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.tar"))}


def decoded(sample: dict) -> tuple[np.ndarray, dict, np.ndarray]:
    image = np.array(Image.open(io.BytesIO(sample["png"])))
    mask = np.array(Image.open(io.BytesIO(sample["mask.png"])))
    return image, json.loads(sample["json"]), mask


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lcsbench", "render", "--no-progress", *args], cwd=REPO,
                          capture_output=True, text=True, env=env, timeout=300)


def test_manifest_lists_every_shard_and_image(clevr_shards):
    manifest = json.loads((clevr_shards / "manifest.json").read_text())
    assert manifest["settings"]["resolution"] == 32
    assert manifest["renderer"]["blender"].startswith(("3.", "4.", "5."))
    for count in (1, 2, 3):
        group = manifest["shards"][f"n{count}"]
        assert group["train"] == [f"n{count}/train-000000.tar", f"n{count}/train-000001.tar"]
        assert group["val"] == [f"n{count}/val-000000.tar"]
        assert manifest["images"][f"n{count}"] == {"train": 8, "val": 4}
    assert manifest["totals"] == {"train": 24, "val": 12}
    assert not (clevr_shards / ".staging").exists()


def test_labels_agree_with_masks(clevr_shards):
    """Every object's pixel_coords lies in its own mask region, or within 2 px of its centroid when
    occluded; object counts and visible pixel counts match the mask."""
    occluded = 0
    for tar in sorted(clevr_shards.rglob("*.tar")):
        count = int(tar.parent.name[1:])
        for sample in read_shard_samples(tar):
            image, scene, mask = decoded(sample)
            assert image.shape == (32, 32, 3) and image.dtype == np.uint8
            assert mask.shape == (32, 32)
            assert scene["num_objects"] == count == len(scene["objects"])
            assert sorted(set(np.unique(mask)) - {0}) == [o["mask_id"] for o in scene["objects"]]
            for obj in scene["objects"]:
                region = mask == obj["mask_id"]
                assert obj["visible_pixels"] == int(region.sum()) >= 3  # 0.26% of 32x32, rounded up
                x, y = obj["pixel_coords"][:2]
                assert 0 <= x < 32 and 0 <= y < 32
                if region[int(y), int(x)]:
                    continue
                rows, cols = np.nonzero(region)
                centroid = np.array([cols.mean() + 0.5, rows.mean() + 0.5])
                assert np.hypot(*(centroid - [x, y])) <= 2.0, (sample["__key__"], obj)
                occluded += 1
            assert all(o["shape"] in ("cube", "sphere", "cylinder") for o in scene["objects"])
    print(f"{occluded} object centres fell on another object (occluded) and were checked by centroid")


def test_same_seed_same_shards_whatever_the_worker_split(clevr_shards, tmp_path):
    """Scenes depend only on (seed, count, split, index): a render of a subset by one process equals
    the corresponding shards of the full 2-process render, and another seed changes them."""
    options = {**TINY_DATASET, "counts": (2,), "progress": False}
    render_dataset(tmp_path / "one", workers=1, **options)
    reference = shard_bytes(clevr_shards)
    for relpath, data in shard_bytes(tmp_path / "one").items():
        ours = {s["__key__"]: decoded(s) for s in read_shard_samples(tmp_path / "one" / relpath)}
        theirs = {s["__key__"]: decoded(s) for s in read_shard_samples(clevr_shards / relpath)}
        assert ours.keys() == theirs.keys()
        for key in ours:
            assert ours[key][1] == theirs[key][1]  # scene JSON identical
            assert np.array_equal(ours[key][2], theirs[key][2])  # mask identical
            # Cycles sums samples in a thread-dependent order: 1 vs 2 threads may differ by one level
            assert np.abs(ours[key][0].astype(int) - theirs[key][0]).max() <= 1
    render_dataset(tmp_path / "again", workers=1, **options)
    assert shard_bytes(tmp_path / "again") == shard_bytes(tmp_path / "one")  # same workers: same bytes
    render_dataset(tmp_path / "seed1", workers=1, **{**options, "seed": 1})
    first = read_shard_samples(tmp_path / "seed1" / "n2/train-000000.tar")[0]
    assert json.loads(first["json"])["objects"] != decoded(read_shard_samples(
        clevr_shards / "n2/train-000000.tar")[0])[1]["objects"]
    assert reference  # the fixture rendered something


@pytest.mark.slow  # kills and reruns a Blender render
def test_killed_render_resumes_to_the_same_shards(clevr_shards, tmp_path):
    out = tmp_path / "killed"
    args = ["--out", str(out), "--counts", "1-3", "--per-count", "8", "--val-per-count", "4", "--shard-size", "4",
            "--resolution", "32", "--samples", "8", "--seed", "0"]
    process = subprocess.Popen([sys.executable, "-m", "lcsbench", "render", "--no-progress", *args], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.rglob("*.tar")):
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # the driver and its Blender processes, mid-render
    process.wait()
    finished_before = shard_bytes(out)
    assert 0 < len(finished_before) < 9, "kill the render while it is in progress"
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    assert shard_bytes(out) == shard_bytes(clevr_shards)
    assert json.loads(result.stdout)["rendered_images"] < 36  # finished work was kept
    again = run_cli(*args)
    assert json.loads(again.stdout)["rendered_images"] == 0  # rerun: everything skipped


def test_shards_split_over_machines_cover_the_dataset(clevr_shards, tmp_path):
    out = tmp_path / "split"
    options = {**TINY_DATASET, "progress": False}
    first = render_dataset(out, shards=slice(0, 4), **options)
    assert first == {**first, "selected_shards": 4, "complete_shards": 4, "total_shards": 9}
    render_dataset(out, shards=slice(4, None), node_rank=0, num_nodes=2, **options)
    last = render_dataset(out, shards=slice(4, None), node_rank=1, num_nodes=2, **options)
    assert last["complete_shards"] == 9
    assert shard_bytes(out) == shard_bytes(clevr_shards)


def test_layout_renders_objects_at_requested_positions(tmp_path):
    layout = tmp_path / "layout.json"
    layout.write_text(json.dumps({"grid_size": 16, "scenes": [
        [{"pixel": [10.0, 12.0], "color": "red", "shape": "sphere"},
         {"frac": [0.75, 0.7], "color": "blue", "size": "large"}],
        {"objects": [{"grid": [8, 3], "material": "metal"}]},
    ]}))
    result = run_cli("--out", str(tmp_path / "eval"), "--layout", str(layout), "--resolution", "32", "--samples", "8")
    assert result.returncode == 0, result.stderr
    samples = read_shard_samples(tmp_path / "eval" / "layout/eval-000000.tar")
    assert [s["__key__"] for s in samples] == ["layout_eval_00000000", "layout_eval_00000001"]
    expected = [[(10.0, 12.0), (24.0, 22.4)], [((3 + 0.5) * 2, (8 + 0.5) * 2)]]
    for sample, positions in zip(samples, expected):
        _, scene, mask = decoded(sample)
        assert len(scene["objects"]) == len(positions)
        for obj, (x, y) in zip(scene["objects"], positions):
            assert obj["pixel_coords"][:2] == pytest.approx([x, y], abs=1e-3)
            assert mask[int(y), int(x)] == obj["mask_id"]
    first = decoded(samples[0])[1]["objects"]
    assert (first[0]["color"], first[0]["shape"], first[1]["color"], first[1]["size"]) == ("red", "sphere", "blue", "large")
    assert decoded(samples[1])[1]["objects"][0]["material"] == "metal"


def test_layout_errors_name_the_problem(tmp_path):
    from lcsbench.data.layouts import LayoutError, normalize_scenes

    with pytest.raises(LayoutError, match="color 'pink' is not one of"):
        normalize_scenes([[{"pixel": [1, 1], "color": "pink"}]], 32)
    with pytest.raises(LayoutError, match="exactly one of"):
        normalize_scenes([[{"pixel": [1, 1], "frac": [0.5, 0.5]}]], 32)
    with pytest.raises(LayoutError, match="outside the 32x32 image"):
        normalize_scenes([[{"frac": [1.2, 0.5]}]], 32)
    with pytest.raises(LayoutError, match="does not divide"):
        normalize_scenes([[{"grid": [1, 1]}]], 40)


def test_missing_blender_is_a_clear_error(tmp_path):
    env = {**os.environ, "PATH": str(Path(sys.executable).parent), "LCSBENCH_BLENDER": ""}
    result = run_cli("--out", str(tmp_path / "x"), "--per-count", "2", env=env)
    assert result.returncode == 1
    assert "Blender executable 'blender' not found on PATH" in result.stderr
    assert "lcsbench renders with Blender 3.4 to 5.0" in result.stderr
    assert "apt-get install -y blender" in result.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("text", ["3-1", "0-2", "a", "1,1", ""])
def test_invalid_counts_are_rejected(text):
    with pytest.raises(ValueError, match="invalid object counts"):
        parse_counts(text)
    assert parse_counts("1-3") == (1, 2, 3) and parse_counts("2,5") == (2, 5)


def test_cli_rejects_invalid_counts(tmp_path):
    result = run_cli("--out", str(tmp_path / "x"), "--counts", "3-1")
    assert result.returncode == 1 and "invalid object counts '3-1'" in result.stderr


def test_directory_rendered_with_other_settings_is_refused(clevr_shards, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(clevr_shards, out)
    before = shard_bytes(out)
    with pytest.raises(RenderError, match=r"resolution: 32 there, 64 now.*Nothing was changed"):
        render_dataset(out, **{**TINY_DATASET, "resolution": 64, "progress": False})
    assert shard_bytes(out) == before


def test_truncated_shard_is_named_and_repaired(clevr_shards, tmp_path):
    out = tmp_path / "damaged"
    shutil.copytree(clevr_shards, out)
    victim = out / "n2/train-000001.tar"
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    with pytest.raises(ShardError, match=r"(?s)n2/train-000001.tar is truncated or corrupt after member \d+ .*--repair"):
        render_dataset(out, **{**TINY_DATASET, "progress": False})
    summary = render_dataset(out, repair=True, **{**TINY_DATASET, "progress": False})
    assert summary["rendered_images"] == 4  # only the damaged shard's images
    assert (out / "n2/train-000001.tar.corrupt").exists()  # kept, not deleted
    assert shard_bytes(out) == shard_bytes(clevr_shards)


# --- bad and hostile input (issue 17, items 3, 4, 5, 10, 11) -------------------------------------------------


def flip_png_byte(shard: Path) -> str:
    """Flip one byte in the middle of the first image's PNG data, leaving the tar intact; returns the member."""
    import tarfile

    with tarfile.open(shard) as tar:
        member = next(m for m in tar if m.name.endswith(".png") and not m.name.endswith(".mask.png"))
    data = bytearray(shard.read_bytes())
    data[member.offset_data + member.size // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    return member.name


@pytest.mark.parametrize("counts", ["40", "1-1000000"])
def test_counts_beyond_the_maximum_are_refused_before_anything_starts(counts, tmp_path, capsys):
    from lcsbench.cli import main as cli_main

    assert cli_main(["render", "--out", str(tmp_path / "x"), "--counts", counts]) == 1
    assert "at most 12 are supported: CLEVR's placement rules fit 12 objects" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # no manifest, no Blender


def test_a_count_that_cannot_fit_fails_fast_naming_count_size_and_resolution(tmp_path):
    # 5 objects 3 units apart on CLEVR's 6x6 ground cannot be placed: this searched forever before
    result = run_cli("--out", str(tmp_path / "x"), "--counts", "5", "--per-count", "1", "--val-per-count", "0",
                     "--resolution", "16", "--samples", "1", "--min-dist", "3", "--workers", "1")
    assert result.returncode == 1
    assert re.search(r"Blender cannot render n5_train_00000000: 5 objects do not fit: in 50000 layouts at most "
                     r"[1-4] could be placed .*object sizes large 1.4, small 0.7 scene units, min_dist 3, margin "
                     r"0.4, image 16x16 px\)", result.stderr), result.stderr
    assert "Traceback" not in result.stderr


def test_flipped_png_bytes_are_found_by_verify_and_mended_by_repair(clevr_shards, tmp_path):
    out = tmp_path / "flipped"
    shutil.copytree(clevr_shards, out)
    victim = out / "n2/train-000001.tar"
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["shard_sha256"]) == set(manifest["shard_samples"])  # recorded at render time
    member = flip_png_byte(victim)
    options = {**TINY_DATASET, "progress": False}
    assert render_dataset(out, **options)["rendered_images"] == 0  # a plain rerun checks structure only: fast
    result = subprocess.run([sys.executable, "-m", "lcsbench", "render", "--out", str(out), "--verify"], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert json.loads(result.stdout) == {**json.loads(result.stdout), "shards": 9, "verified": 8, "damaged": 1}
    assert "n2/train-000001.tar does not match the checksum the manifest recorded" in result.stderr
    assert render_dataset(out, repair=True, **options)["rendered_images"] == 4  # only the damaged shard
    assert shard_bytes(out) == shard_bytes(clevr_shards)
    first_corrupt = (out / "n2/train-000001.tar.corrupt").read_bytes()

    # a manifest of an earlier lcsbench has no checksums: the decode check alone finds the flip (PNG chunk CRCs)
    del manifest["shard_sha256"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    flip_png_byte(victim)
    with pytest.raises(ShardError, match=f"holds a damaged member {member} .*fails its CRC"):
        verify_shard(victim, 4, None, fix="repair it")
    assert render_dataset(out, repair=True, **options)["rendered_images"] == 4
    assert shard_bytes(out) == shard_bytes(clevr_shards)
    # the second repair numbers its copy instead of overwriting the first
    assert (out / "n2/train-000001.tar.corrupt").read_bytes() == first_corrupt
    assert (out / "n2/train-000001.tar.corrupt.2").exists()
    assert json.loads((out / "manifest.json").read_text())["shard_sha256"] == {
        "n2/train-000001.tar": json.loads((clevr_shards / "manifest.json").read_text())["shard_sha256"][
            "n2/train-000001.tar"]}  # the old manifest gains checksums for the shards rendered from now on


def test_a_manifest_without_checksums_still_trains(clevr_shards, tmp_path):
    import lightning as L

    from lcsbench.data.datamodule import CLEVRDataModule
    from lcsbench.models.edm2 import EDM2Diffusion
    from lcsbench.nn.edm2 import Precond

    out = tmp_path / "old"
    shutil.copytree(clevr_shards, out)
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["shard_sha256"]  # as written by lcsbench before checksums
    (out / "manifest.json").write_text(json.dumps(manifest))
    net = Precond(img_resolution=32, img_channels=3, label_dim=256, model_channels=16, channel_mult=[1, 2],
                  num_blocks=1, attn_resolutions=[16], channels_per_head=16)
    data = CLEVRDataModule(str(out), counts="1-3", batch_size=2, num_workers=0, steps_per_epoch=1, shuffle_buffer=4)
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        default_root_dir=str(tmp_path))
    trainer.fit(EDM2Diffusion(net=net), data)
    assert trainer.global_step == 1


def test_a_second_render_of_the_same_shards_is_refused_while_one_runs(clevr_shards, tmp_path):
    from lcsbench.data.locks import LOCKS, claim_shards
    from lcsbench.data.render_plan import RenderSettings, plan_dataset

    out = tmp_path / "busy"
    shutil.copytree(clevr_shards, out)
    before = shard_bytes(out)
    plans = plan_dataset(RenderSettings(**{**TINY_DATASET, "counts": (2,)}))
    with claim_shards(out, plans):  # the running render: this process holds the claim, as another would
        with pytest.raises(RenderError, match=rf"{out} is being rendered by another `lcsbench render` \(pid "
                                              rf"{os.getpid()} on .*claims 3 of the shards .*Nothing was changed"):
            render_dataset(out, **{**TINY_DATASET, "progress": False, "repair": True})
        assert shard_bytes(out) == before
        # disjoint shards may be rendered at once (machines sharing a dataset): n1's first 3 shards
        assert render_dataset(out, shards=slice(0, 3), **{**TINY_DATASET, "progress": False})["rendered_images"] == 0
    stale = out / LOCKS / "otherhost-1.claim"  # left by a render that was killed: nobody holds its flock
    stale.write_text(json.dumps({"host": "otherhost", "pid": 1, "shards": [p.relpath for p in plans]}))
    assert render_dataset(out, **{**TINY_DATASET, "progress": False})["complete_shards"] == 9
    assert not stale.exists() and not list((out / LOCKS).glob("*.claim"))


def test_unsupported_blender_is_refused_before_rendering(tmp_path):
    fake = tmp_path / "bin" / "blender"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'Blender 2.93.18'\n")  # an old release's --version, nothing else
    fake.chmod(0o755)
    result = run_cli("--out", str(tmp_path / "x"), "--per-count", "2", "--blender", str(fake))
    assert result.returncode == 1
    assert f"{fake} is Blender 2.93.18, which lcsbench's scene script does not support: it runs on Blender " \
           f"3.4 to 5.0" in result.stderr
    assert not (tmp_path / "x").exists()


def test_a_dataset_is_not_resumed_with_another_blender_release(clevr_shards, tmp_path):
    out = tmp_path / "other-blender"
    shutil.copytree(clevr_shards, out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["renderer"]["blender"] = "4.5.0"
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RenderError, match=r"rendered with Blender 4.5.0 and this is Blender 3\.4\.\d+: .*Nothing "
                                          r"was changed"):
        render_dataset(out, **{**TINY_DATASET, "progress": False})


@pytest.mark.slow  # stops two Blender renders with signals and reruns them
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=lambda s: s.name)
def test_a_stop_signal_ends_every_blender_and_the_rerun_resumes(stop, clevr_shards, tmp_path):
    from lcsbench.data.blender_binary import parent_death_prefix

    if stop == signal.SIGKILL and not parent_death_prefix():
        pytest.skip("no util-linux setpriv with --pdeathsig here: SIGKILL leaves Blender running")
    out = tmp_path / "stopped"
    args = ["--out", str(out), "--counts", "1-3", "--per-count", "8", "--val-per-count", "4", "--shard-size", "4",
            "--resolution", "32", "--samples", "8", "--seed", "0", "--workers", "2"]
    # as `timeout` or SLURM would: a signal to the render process alone (Blender runs in sessions of its own)
    process = subprocess.Popen([sys.executable, "-m", "lcsbench", "render", "--no-progress", *args], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    blenders: set[int] = set()  # every Blender render process seen
    deadline = time.time() + 600  # generous: a busy machine starts Python and Blender slowly
    while time.time() < deadline and process.poll() is None:
        running = [pid for pid in child_pids(process.pid) if "clevr_scene.py" in cmdline(pid)]
        blenders |= set(running)
        if running and list(out.rglob("*.tar")):
            break
        time.sleep(0.02)
    assert running, "no Blender render ran while a shard was finished"
    for pid in running:  # hold the render in progress (finished shards on disk, images in flight) meanwhile
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
    second = run_cli(*args)  # a second render into the same --out while the first runs
    assert second.returncode == 1 and "is being rendered by another `lcsbench render`" in second.stderr
    process.send_signal(stop)
    _, stderr = process.communicate(timeout=300)
    if stop == signal.SIGKILL:  # no handler runs: the kernel ends Blender (parent-death signal)
        assert process.returncode == -stop
        time.sleep(1)  # the kernel signals the children as the parent exits; let them go
    else:
        assert process.returncode == 128 + stop, stderr
        assert f"stopped by {stop.name}: every Blender process was stopped" in stderr
    survivors = [pid for pid in blenders if alive(pid)]
    for pid in survivors:  # do not leave them behind (stopped) when the check fails
        os.kill(pid, signal.SIGKILL)
    assert not survivors, "a Blender process outlived the render"
    finished = shard_bytes(out)
    assert 0 < len(finished) < 9, "stop the render while it is in progress"
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["rendered_images"] < 36  # finished work was kept
    assert shard_bytes(out) == shard_bytes(clevr_shards)


def child_pids(parent: int) -> list[int]:
    """Processes whose parent is `parent` (from /proc)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            children.append(int(stat.parent.name))
    return children


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False

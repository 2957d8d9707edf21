"""Closed-form denoisers built from a render, taken by every command like a checkpoint (issue 23).

A *closed-form spec* is a small file (`.pt`, plain data only, read with `checkpoints.read_checkpoint`) that names a
render and how to build a training-free denoiser from its training split:

    {"lcsbench_closed_form": {"kind": "local" | "empirical", "render": "/abs/data/reproduce32",
                              "manifest_sha256": ..., "counts": [1, 2, 3], "label_mode": "all" | "single" | ...,
                              "grid_size": 16, "radius": 2, "equivariant": false, "images_per_count": null,
                              "memory_budget": 536870912},
     "datamodule_hyper_parameters": {"root": ..., "counts": [1, 2, 3], "conditioning": "location",
                                     "label_mode": ..., "grid_size": 16, "resolution": 32}}

The second entry is what a training checkpoint records about its data, so `lengthgen` reads the success rule
(trained counts, label mode) from a spec as from a checkpoint. Write one with
`python -m lcsbench closed-form spec ...`; `load_closed_form(path)` reads the render's training images (the
project's shard reader), builds the denoiser (analysis/closed_form/) and returns a `ClosedFormModel`, which has
what the commands use of a trained module: `.denoiser` (the one denoiser interface), `.conditioning`,
`.grid_size`, `.image_shape`, `.to(device)`, `.eval()`.

Images are decoded as the DataModule decodes them (uint8 / 127.5 - 1, in [-1, 1]); held-out labels are drawn
as its validation labels are (one generator per sample key).
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from lcsbench.analysis.closed_form import EmpiricalDenoiser, LocalScoreMachine, TrainingSet, training_set
from lcsbench.analysis.closed_form.posterior import DEFAULT_MEMORY_BUDGET
from lcsbench.checkpoints import DATA_HPARAMS_KEY, read_checkpoint, save_atomic
from lcsbench.data.conditioning import DEFAULT_GRID_SIZE, LABEL_MODES, check_grid_size, scene_conditioner
from lcsbench.data.datamodule import sample_generator
from lcsbench.data.scenes import IMAGE_EXT, SCENE_EXT, parse_counts
from lcsbench.data.shards import CHECKSUMS, MANIFEST, file_sha256, iter_shard_samples, load_manifest

CLOSED_FORM_KEY = "lcsbench_closed_form"
KINDS = ("local", "empirical")
REWRITE = "write the spec again with `python -m lcsbench closed-form spec` rather than editing it"


# --- reading a render --------------------------------------------------------------------------------------------


def render_images(
    root: str | Path,                        # a render (python -m lcsbench render --out ROOT)
    counts: Sequence[int],                   # object counts to read
    split: str = "train",                    # train | val
    images_per_count: int | None = None,     # the first N images of each count (None: all)
) -> tuple[torch.Tensor, list[dict]]:
    """Images `float32 [N, 3, H, W]` in [-1, 1] and their scene records, count by count in shard order."""
    root = Path(root)
    manifest = load_manifest(root)
    images, scenes = [], []
    for count in counts:
        shards = manifest.get("shards", {}).get(f"n{count}", {}).get(split, [])
        if not shards:
            raise ValueError(f"{root} has no {split} shards for {count}-object scenes (manifest groups: "
                             f"{sorted(manifest.get('shards', {}))}): render them or choose counts it has")
        taken = 0
        for rel in shards:
            check_shard_checksum(root, rel, manifest)
            for sample in iter_shard_samples(root / rel, fix=f"re-render {root} with `python -m lcsbench render "
                                                             f"--out {root} ... --repair`"):
                if images_per_count is not None and taken >= images_per_count:
                    break
                with Image.open(io.BytesIO(sample[IMAGE_EXT])) as png:
                    images.append(np.asarray(png.convert("RGB")))
                scenes.append(json.loads(sample[SCENE_EXT]) | {"key": sample["__key__"]})
                taken += 1
            if images_per_count is not None and taken >= images_per_count:
                break
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()  # uint8 HWC -> float CHW
    return pixels.div_(127.5).sub_(1.0), scenes


def check_shard_checksum(root: Path, rel: str, manifest: dict) -> None:
    """A ValueError unless the shard `rel` of the render has the sha256 its manifest recorded when it was written:
    a closed form is trusted by the render's content, not by its manifest alone (a spec records the manifest's
    sha256, the manifest every shard's). Manifests written before checksums existed record none: nothing to check."""
    recorded = manifest.get(CHECKSUMS)
    if recorded is None:
        return
    fix = f"re-render it with `python -m lcsbench render --out {root} ... --repair`, then write the spec again"
    if rel not in recorded:
        raise ValueError(f"the manifest of {root} records no sha256 for its shard {rel} (a render still being "
                         f"written?): let the render finish, or {fix}")
    found = file_sha256(root / rel)
    if found != recorded[rel]:
        raise ValueError(f"the shard {root / rel} does not match the sha256 its manifest recorded (sha256 "
                         f"{found[:16]}... where {recorded[rel][:16]}... was recorded): its bytes changed; {fix}")


def render_training_set(root: str | Path, counts: Sequence[int], label_mode: str, grid_size: int,
                        images_per_count: int | None = None) -> TrainingSet:
    """The training distribution of a render's train split under a label mode (analysis/closed_form)."""
    images, scenes = render_images(root, counts, "train", images_per_count)
    check_grid_size(grid_size, images.shape[-1], images.shape[-2])
    return training_set(images, scenes, label_mode, grid_size)


def heldout_batch(
    root: str | Path,                        # the render
    counts: Sequence[int],                   # object counts
    label_mode: str,                         # labels as the DataModule's validation draws them
    grid_size: int,                          # G
    number: int,                             # held-out images wanted (spread over the counts)
    seed: int = 0,                           # the DataModule's seed of validation labels
) -> tuple[torch.Tensor, torch.Tensor]:
    """`number` held-out images `[B, 3, H, W]` and their location grids `[B, G, G]` from the val split."""
    per_count = -(-number // len(counts))
    images, scenes = render_images(root, counts, "val", per_count)
    cond = torch.stack([scene_conditioner(scene, "location", label_mode, grid_size,
                                          sample_generator(seed, scene["key"])) for scene in scenes])
    pick = torch.linspace(0, len(scenes) - 1, min(number, len(scenes))).round().long()
    return images[pick], cond[pick]


# --- the model the commands take ---------------------------------------------------------------------------------


class ClosedFormModel(nn.Module):
    """A closed-form denoiser with what the commands use of a trained module (module docstring)."""

    conditioning = "location"

    def __init__(
        self,
        machine: nn.Module,                  # EmpiricalDenoiser or LocalScoreMachine (analysis/closed_form)
        spec: dict[str, Any],                # the settings it was built with (the spec's CLOSED_FORM_KEY entry)
    ):
        super().__init__()
        self.machine = machine
        self.spec = dict(spec)

    @property
    def denoiser(self) -> nn.Module:
        """`denoiser(x, sigma, cond) -> D` with its image shape, conditioning kind and grid size."""
        return self.machine

    @property
    def grid_size(self) -> int:
        return self.machine.grid_size

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.machine.image_shape

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, cond: torch.Tensor) -> torch.Tensor:
        return self.machine(x, sigma, cond)


def build_closed_form(
    kind: str,                               # local | empirical
    render: str | Path,                      # the render whose train split it integrates over
    counts: Sequence[int],                   # object counts of the training data
    label_mode: str,                         # all | single | random | drop_one: how the labels were drawn
    grid_size: int = DEFAULT_GRID_SIZE,      # G
    radius: int = 2,                         # local: patches of (2r+1) x (2r+1) cells
    equivariant: bool = False,               # local: training patches at any cell
    images_per_count: int | None = None,     # the first N training images of each count (None: all)
    memory_budget: int = DEFAULT_MEMORY_BUDGET,  # bytes of one chunk's intermediates
) -> ClosedFormModel:
    """Read the render's training split and build the closed form, in eval mode on the CPU."""
    check_settings(kind, label_mode)
    train = render_training_set(render, counts, label_mode, grid_size, images_per_count)
    if kind == "empirical":
        machine: nn.Module = EmpiricalDenoiser(train, memory_budget)
    else:
        machine = LocalScoreMachine(train, radius, equivariant, memory_budget)
    spec = {"kind": kind, "render": str(render), "counts": list(counts), "label_mode": label_mode,
            "grid_size": grid_size, "radius": radius if kind == "local" else None,
            "equivariant": equivariant if kind == "local" else None, "images_per_count": images_per_count,
            "memory_budget": memory_budget, "training_images": int(train.images.shape[0]),
            "training_examples": int(train.labels.shape[0])}
    return ClosedFormModel(machine, spec).eval()


def check_settings(kind: str, label_mode: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"a closed form is one of {KINDS}; found {kind!r}")
    if label_mode not in LABEL_MODES:
        raise ValueError(f"label_mode must be one of {LABEL_MODES} (how the model's labels were drawn); found "
                         f"{label_mode!r}")


# --- the spec file -----------------------------------------------------------------------------------------------


def write_spec(
    path: str | Path,                        # the spec file to write (.pt)
    kind: str,                               # local | empirical
    render: str | Path,                      # the render (its train split is the training set)
    counts: str | Sequence[int],             # object counts, e.g. "1-3"
    label_mode: str,                         # all (Exp. 1) | single (Exp. 2/3) | random | drop_one
    grid_size: int = DEFAULT_GRID_SIZE,      # G
    radius: int = 2,                         # local: patches of (2r+1) x (2r+1) cells (configs/exp3.yaml: 2)
    equivariant: bool = False,               # local: training patches at any cell
    images_per_count: int | None = None,     # the first N training images of each count (None: all)
    memory_budget: int = DEFAULT_MEMORY_BUDGET,  # bytes of one chunk's intermediates
) -> dict[str, Any]:
    """Check the settings against the render and write a closed-form spec (module docstring); returns it."""
    check_settings(kind, label_mode)
    for name, value, accepted in (("radius", radius, _whole(radius, 0)),
                                  ("images_per_count", images_per_count, images_per_count is None
                                   or _whole(images_per_count, 1)),
                                  ("equivariant", equivariant, isinstance(equivariant, bool)),
                                  ("memory_budget", memory_budget, _whole(memory_budget, 1))):
        if not accepted:
            raise ValueError(f"{name} must be {SPEC_FIELDS[name][1]}; found {value!r}")
    root = Path(render).resolve()
    manifest = load_manifest(root)
    counts = list(parse_counts(counts))
    resolution = manifest.get("settings", {}).get("resolution")
    check_grid_size(grid_size, resolution, resolution)
    missing = [c for c in counts if not manifest.get("shards", {}).get(f"n{c}", {}).get("train")]
    if missing:
        raise ValueError(f"{root} has no training shards for object counts {missing}: choose counts it has "
                         f"({sorted(manifest.get('shards', {}))})")
    entry = {"kind": kind, "render": str(root), "manifest_sha256": file_sha256(root / MANIFEST), "counts": counts,
             "label_mode": label_mode, "grid_size": grid_size, "radius": radius, "equivariant": equivariant,
             "images_per_count": images_per_count, "memory_budget": memory_budget}
    data = {"root": str(root), "counts": counts, "conditioning": "location", "label_mode": label_mode,
            "grid_size": grid_size, "resolution": resolution}
    payload = {CLOSED_FORM_KEY: entry, DATA_HPARAMS_KEY: data}
    spec_entry(payload, path)  # what a reader checks, so no spec is written that its readers would refuse
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_atomic(payload, path)
    return entry


# --- the spec's fields: checked when a spec is written and whenever one is read (a hand-edited field is named) ---


def _whole(value: Any, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _counts(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(_whole(c, 1) for c in value) and value == sorted(set(value))


COUNTS_EXPECTED = "distinct object counts >= 1 in increasing order, as a list such as [1, 2, 3]"
SPEC_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {  # field -> (accepted?, what is expected)
    "kind": (lambda v: isinstance(v, str) and v in KINDS, f"one of {list(KINDS)}"),
    "render": (lambda v: isinstance(v, str) and v.strip() != "", "the render's folder, a non-empty path"),
    "manifest_sha256": (lambda v: isinstance(v, str) and re.fullmatch("[0-9a-f]{64}", v) is not None,
                        "the sha256 of the render's manifest.json, 64 hex digits"),
    "counts": (_counts, COUNTS_EXPECTED),
    "label_mode": (lambda v: isinstance(v, str) and v in LABEL_MODES, f"one of {list(LABEL_MODES)}"),
    "grid_size": (lambda v: _whole(v, 1), "a whole number of grid cells >= 1 (the paper's: 16)"),
    "radius": (lambda v: v is None or _whole(v, 0), "a whole number of cells >= 0 (null only in an empirical spec)"),
    "equivariant": (lambda v: v is None or isinstance(v, bool), "true or false (null only in an empirical spec)"),
    "images_per_count": (lambda v: v is None or _whole(v, 1), "a whole number >= 1, or null for every image"),
    "memory_budget": (lambda v: _whole(v, 1), f"a whole number of bytes >= 1 (the default: {DEFAULT_MEMORY_BUDGET})"),
}
DATA_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {  # what lengthgen reads as the success rule
    "root": SPEC_FIELDS["render"], "counts": SPEC_FIELDS["counts"],
    "conditioning": (lambda v: v == "location", "'location' (closed forms are location models)"),
    "label_mode": SPEC_FIELDS["label_mode"], "grid_size": SPEC_FIELDS["grid_size"],
    "resolution": (lambda v: _whole(v, 1), "the render's image size in pixels, a whole number >= 1"),
}
SHARED_FIELDS = {"render": "root", "counts": "counts", "label_mode": "label_mode", "grid_size": "grid_size"}


def check_fields(section: dict, fields: dict, name: str, path: str | Path) -> None:
    """A ValueError naming the first missing, unknown or out-of-range field of the spec section `name`."""
    where = f"the closed-form spec {path}"
    for field, (accepted, expected) in fields.items():
        if field not in section:
            raise ValueError(f"{where} has no field {name}.{field} (expected {expected}): {REWRITE}")
        if not accepted(section[field]):
            raise ValueError(f"{where}: its field {name}.{field} is {_shown(section[field])}, expected {expected}: "
                             f"{REWRITE}")
    unknown = sorted(map(str, set(section) - set(fields)))
    if unknown:
        raise ValueError(f"{where}: its field {name}.{unknown[0]} = {_shown(section[unknown[0]])} is unknown (a spec "
                         f"holds {name}.{{{', '.join(fields)}}}): {REWRITE}")


def _shown(value: Any) -> str:
    text = repr(value)
    return f"{text[:60]}... ({type(value).__name__})" if len(text) > 60 else f"{text} ({type(value).__name__})"


def spec_entry(payload: Any, path: str | Path) -> dict[str, Any]:
    """The closed-form entry of a spec payload after every field of both its sections is checked (SPEC_FIELDS,
    DATA_FIELDS, and the four they share agreeing): a ValueError naming the field, its value and what is expected.
    The spec records no stamp of its own content (manifest_sha256 stamps the render's manifest, each shard the
    manifest's sha256), so these checks are what catches a hand-edited field."""
    entry = payload.get(CLOSED_FORM_KEY) if isinstance(payload, dict) else None
    if not isinstance(entry, dict):
        raise ValueError(f"{path} is not a closed-form spec (no '{CLOSED_FORM_KEY}' entry): write one with "
                         f"`python -m lcsbench closed-form spec --render ... --out {path}`")
    check_fields(entry, SPEC_FIELDS, CLOSED_FORM_KEY, path)
    if entry["kind"] == "local" and (entry["radius"] is None or entry["equivariant"] is None):
        raise ValueError(f"the closed-form spec {path}: a local spec needs {CLOSED_FORM_KEY}.radius (a whole number "
                         f">= 0) and .equivariant (true or false); found {entry['radius']!r}, "
                         f"{entry['equivariant']!r}: {REWRITE}")
    data = payload.get(DATA_HPARAMS_KEY)
    if not isinstance(data, dict):
        raise ValueError(f"the closed-form spec {path} has no '{DATA_HPARAMS_KEY}' section (found "
                         f"{_shown(data)}), which lengthgen reads as the success rule: {REWRITE}")
    check_fields(data, DATA_FIELDS, DATA_HPARAMS_KEY, path)
    for field, mirror in SHARED_FIELDS.items():
        if entry[field] != data[mirror]:
            raise ValueError(f"the closed-form spec {path}: its field {DATA_HPARAMS_KEY}.{mirror} is "
                             f"{data[mirror]!r} but {CLOSED_FORM_KEY}.{field} is {entry[field]!r}; the two must agree "
                             f"(the closed form is built from the second, lengthgen's success rule read from the "
                             f"first): {REWRITE}")
    return entry


def check_spec_render(entry: dict, data: dict, path: str | Path) -> dict:
    """The manifest of the spec's render, after checking that the render is there, is the one the spec was written
    for (manifest_sha256), has the spec's resolution and is tiled by its grid; a ValueError otherwise."""
    root = Path(entry["render"])
    if not (root / MANIFEST).is_file():
        raise ValueError(f"the closed-form spec {path} reads the render {root}, which is not there: render it, or "
                         f"write the spec again with `python -m lcsbench closed-form spec --render <its path>`")
    if file_sha256(root / MANIFEST) != entry["manifest_sha256"]:
        raise ValueError(f"the render {root} changed since the closed-form spec {path} was written (its manifest "
                         f"differs): write the spec again with `python -m lcsbench closed-form spec` if the new "
                         f"render is the one you mean")
    manifest = load_manifest(root)
    resolution = manifest.get("settings", {}).get("resolution")
    if data["resolution"] != resolution:
        raise ValueError(f"the closed-form spec {path}: its field {DATA_HPARAMS_KEY}.resolution is "
                         f"{data['resolution']!r} but its render {root} is {resolution} px: {REWRITE}")
    try:
        check_grid_size(entry["grid_size"], resolution, resolution)
    except ValueError as error:
        raise ValueError(f"the closed-form spec {path}: its field {CLOSED_FORM_KEY}.grid_size: {error}") from None
    return manifest


def closed_form_from_payload(payload: dict, path: str | Path, map_location: str | torch.device = "cpu"
                             ) -> ClosedFormModel:
    """The closed form a spec payload (checkpoints.read_checkpoint) describes, in eval mode on `map_location`.
    `models.loaders.load_denoiser` hands a payload with a CLOSED_FORM_KEY entry here."""
    entry = spec_entry(payload, path)
    check_spec_render(entry, payload[DATA_HPARAMS_KEY], path)
    model = build_closed_form(entry["kind"], Path(entry["render"]), entry["counts"], entry["label_mode"],
                              entry["grid_size"], entry["radius"], entry["equivariant"], entry["images_per_count"],
                              entry["memory_budget"])
    return model.to(map_location)


def load_closed_form(path: str | Path, map_location: str | torch.device = "cpu") -> ClosedFormModel:
    """Read a closed-form spec file and build its denoiser (module docstring)."""
    payload = read_checkpoint(path, "write a closed-form spec with `python -m lcsbench closed-form spec`")
    return closed_form_from_payload(payload, path, map_location)


def is_closed_form_spec(payload: dict) -> bool:
    """Whether a checkpoint payload is a closed-form spec (what `load_denoiser` dispatches on)."""
    return CLOSED_FORM_KEY in payload

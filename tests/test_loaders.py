"""models/loaders.py: the one loader of every kind of denoiser, and models/edm2.py apart from it.

Trained global and patch-local checkpoints and closed-form specs go through `load_denoiser` in
test_edm2_training.py, test_patch_training.py, test_every_model.py and test_closed_form_render.py; here: the SDXL
entry on a tiny pipeline saved to a folder, and the rule that the training module knows nothing of the loaders.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    """Every module a source file imports (module level or inside functions)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_the_training_module_imports_no_other_model_and_no_loader():
    imported = imported_modules(REPO / "lcsbench" / "models" / "edm2.py")
    others = sorted(name for name in imported if name.startswith("lcsbench.models"))
    assert others == [], f"models/edm2.py reaches into {others}: loading belongs in models/loaders.py"
    from lcsbench.models import edm2

    assert not hasattr(edm2, "load_denoiser"), "no backwards alias of the loader in models/edm2.py"


def test_sdxl_loads_from_a_folder_as_a_denoiser_equal_to_its_unet(tmp_path):
    pytest.importorskip("diffusers")
    pytest.importorskip("transformers")
    from lcsbench.analysis.sdxl.pipeline import encode_prompts
    from lcsbench.diffusion.denoiser import Denoiser
    from lcsbench.models.loaders import load_sdxl_denoiser
    from lcsbench.models.sdxl import NotAPipelineError, SDXLDenoiser
    from tests.sdxl_tiny import build_tiny_sdxl_pipeline

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pipe = build_tiny_sdxl_pipeline(tmp_path / "tokenizer")
        pipe.save_pretrained(tmp_path / "pipeline")
        denoiser, loaded = load_sdxl_denoiser(tmp_path / "pipeline")
        assert isinstance(denoiser, Denoiser) and denoiser.conditioning == "text" and not denoiser.training
        x = torch.randn((1, *denoiser.image_shape), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            got = denoiser(x, 2.0, encode_prompts(loaded, ["a cat"]))
            expected = SDXLDenoiser(pipe.unet, pipe.scheduler)(x, 2.0, encode_prompts(pipe, ["a cat"]))
        torch.testing.assert_close(got, expected)
        with pytest.raises(NotAPipelineError, match="does not exist"):
            load_sdxl_denoiser(tmp_path / "missing")
    finally:
        torch.set_num_threads(threads)

"""The layers of docs/architecture.md, checked on the source: a lower layer never imports a higher one.

Every `.py` file under lcsbench/ is parsed with `ast` (no import runs), and every `import x` and
`from x import y`, at module level or inside a function, is checked against LAYER_RULES. Relative imports are
resolved against the file's package. Imports by string (`importlib.import_module` in cli.py) are not seen.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Layer (a folder or a file under lcsbench/) -> its rule. A file belongs to the longest key that names it.
#   allowed:   the only modules it may import, besides the standard library (None: anything not forbidden)
#   forbidden: module prefixes it may not import
#   except:    prefixes exempt from `forbidden`
#   why:       the rule in words, for the violation message
LAYER_RULES: dict[str, dict] = {
    "nn/": {
        "allowed": ("torch", "numpy", "lcsbench.nn"),
        "why": "nn/ may import only torch, numpy and the standard library",
    },
    "diffusion/": {
        "allowed": ("torch", "numpy", "lcsbench.nn", "lcsbench.diffusion"),
        "why": "diffusion/ may import only torch, numpy, lcsbench.nn and the standard library",
    },
    "timefmt.py": {
        "allowed": (),
        "why": "timefmt.py may import only the standard library (callbacks/ and commands/ both format times with it)",
    },
    "checkpoints.py": {
        "allowed": ("torch", "lcsbench.nn", "lcsbench.diffusion"),
        "why": "checkpoints.py may import only torch, lcsbench.nn, lcsbench.diffusion and the standard library",
    },
    "analysis/": {
        "forbidden": ("lightning", "pytorch_lightning", "diffusers", "lcsbench.models", "lcsbench.callbacks",
                      "lcsbench.study", "lcsbench.commands", "lcsbench.cli", "lcsbench.data.datamodule"),
        "why": "analysis/ imports no Lightning, no diffusers (SDXL is loaded in models/sdxl.py) and nothing above "
               "it (models, callbacks, commands, cli, data.datamodule)",
    },
    "data/": {
        "forbidden": ("lightning", "pytorch_lightning", "lcsbench.models", "lcsbench.callbacks", "lcsbench.study",
                      "lcsbench.commands", "lcsbench.analysis", "lcsbench.cli"),
        "why": "data/ (all but datamodule.py) imports no Lightning and nothing above it (analysis, models, "
               "callbacks, commands, cli)",
    },
    "data/datamodule.py": {
        "forbidden": ("lcsbench.models", "lcsbench.callbacks", "lcsbench.study", "lcsbench.commands", "lcsbench.cli"),
        "why": "data/datamodule.py may import Lightning, but nothing above analysis/ "
               "(models, callbacks, study, commands, cli)",
    },
    "models/edm2.py": {
        "forbidden": ("lcsbench.callbacks", "lcsbench.study", "lcsbench.commands", "lcsbench.cli",
                      "lcsbench.models.loaders", "lcsbench.models.closed_form", "lcsbench.models.sdxl"),
        "why": "models/edm2.py (the training module) imports no other model and no loader: loading is "
               "models/loaders.py's",
    },
    "models/": {
        "forbidden": ("lcsbench.callbacks", "lcsbench.study", "lcsbench.commands", "lcsbench.cli"),
        "why": "models/ imports nothing above it (callbacks, study, commands, cli)",
    },
    "callbacks/": {
        "forbidden": ("lcsbench.study", "lcsbench.commands", "lcsbench.cli"),
        "why": "callbacks/ imports nothing above it (study, commands, cli)",
    },
    "study/": {
        "forbidden": ("lcsbench.commands", "lcsbench.cli"),
        "except": ("lcsbench.commands._common",),
        "why": "study/ (the experiments, scales and stages `reproduce` runs) imports no command and not the cli: "
               "commands/ call it; the shared helpers of commands/_common.py only",
    },
    "commands/": {
        "forbidden": ("lcsbench.commands", "lcsbench.cli"),
        "except": ("lcsbench.commands._common",),
        "why": "a command never imports another command or the cli: move shared code to commands/_common.py",
    },
}


def has_prefix(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def layer_of(relative: str) -> str | None:
    """The LAYER_RULES key of a path relative to lcsbench/ (e.g. "nn/mp.py" -> "nn/"), or None."""
    keys = [k for k in LAYER_RULES if relative == k or (k.endswith("/") and relative.startswith(k))]
    return max(keys, key=len) if keys else None


def imported_modules(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, module) for every import in the file at any depth; relative imports resolved.

    `from A import b` counts as importing A.b when A is a package of the tree under `root` (so
    `from lcsbench.commands import render` is the module lcsbench.commands.render), else as importing A.
    """
    package = list(path.relative_to(root).parts[:-1])   # the package a relative import starts from
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)]
                base_name = ".".join(base + ([node.module] if node.module else []))
            else:
                base_name = node.module or ""
            if (root / Path(*base_name.split("."))).is_dir():
                found += [(node.lineno, f"{base_name}.{alias.name}") for alias in node.names if alias.name != "*"]
            else:
                found.append((node.lineno, base_name))
    return found


def violates(module: str, rule: dict) -> bool:
    if has_prefix(module, rule.get("except", ())):
        return False
    if "allowed" in rule:
        return module.split(".")[0] not in sys.stdlib_module_names and not has_prefix(module, rule["allowed"])
    return has_prefix(module, rule["forbidden"])


def layer_violations(root: Path) -> list[str]:
    """Every import under root/lcsbench/ that breaks LAYER_RULES, as "lcsbench/x.py:LINE imports M: why"."""
    package = root / "lcsbench"
    violations = []
    for path in sorted(package.rglob("*.py")):
        layer = layer_of(path.relative_to(package).as_posix())
        if layer is None:
            continue
        rule = LAYER_RULES[layer]
        shown = path.relative_to(root).as_posix()
        try:
            imports = imported_modules(path, root)
        except SyntaxError as error:
            violations.append(f"{shown}:{error.lineno} does not parse ({error.msg}): fix the syntax error")
            continue
        violations += [f"{shown}:{line} imports {module}: {rule['why']}"
                       for line, module in imports if violates(module, rule)]
    return violations


def test_the_package_respects_its_layers():
    violations = layer_violations(REPO)
    assert violations == [], "lower layers import higher ones (docs/architecture.md, layers):\n" + "\n".join(violations)


SCRATCH = {
    "lcsbench/__init__.py": "",
    "lcsbench/nn/__init__.py": "from . import good\n",
    "lcsbench/nn/good.py": "import math\nimport torch\nimport numpy as np\nfrom torch import nn\nfrom .other import f\n",
    "lcsbench/nn/bad.py": "import torch\nimport lightning\n\n\ndef f():\n    from ..diffusion import loss\n",
    "lcsbench/diffusion/__init__.py": "",
    "lcsbench/diffusion/good.py": "from lcsbench.nn.mp import MPConv\nfrom collections.abc import Callable\n",
    "lcsbench/diffusion/bad.py": "import scipy.special\n",
    "lcsbench/analysis/__init__.py": "",
    "lcsbench/analysis/good.py": "import matplotlib\nfrom lcsbench.data.conditioning import location_grid\n",
    "lcsbench/analysis/bad.py": "import torch\n\n\ndef load():\n    from lcsbench.models.loaders import load_denoiser\n"
                                "    from lcsbench.data import datamodule\n",
    "lcsbench/analysis/sdxl_bad.py": "def load(path):\n    from diffusers import StableDiffusionXLPipeline\n"
                                     "    import diffusers.utils\n",
    "lcsbench/data/__init__.py": "",
    "lcsbench/data/shards.py": "import webdataset\nimport pytorch_lightning\n",
    "lcsbench/data/datamodule.py": "import lightning as L\nfrom lcsbench.data.shards import load_manifest\n",
    "lcsbench/models/__init__.py": "",
    "lcsbench/models/edm2.py": "import lightning\nfrom lcsbench.callbacks.ema import EMA\n",
    "lcsbench/callbacks/__init__.py": "",
    "lcsbench/callbacks/ema.py": "from lcsbench.models.edm2 import EDM2\nfrom lcsbench import cli\n",
    "lcsbench/commands/__init__.py": "",
    "lcsbench/commands/_common.py": "import torch\n",
    "lcsbench/commands/a.py": "from lcsbench.commands._common import x\nfrom lcsbench.commands import _common\n"
                              "from lcsbench.commands.b import x\n\n\ndef main(argv):\n    from . import b\n",
    "lcsbench/commands/b.py": "x = 1\n",
    "lcsbench/checkpoints.py": "import json\nimport torch\nimport numpy\n",
    "lcsbench/study/__init__.py": "",
    "lcsbench/study/stages.py": "from lcsbench.commands._common import usable_cores\n"
                                "from lcsbench.analysis import report\n\n\ndef f():\n"
                                "    from lcsbench.commands import render\n",
    "lcsbench/callbacks/study_user.py": "from lcsbench.study import records\n",
}


def test_forbidden_imports_are_reported_and_allowed_ones_are_not(tmp_path):
    for name, text in SCRATCH.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    found = {v.split(":")[0] + ":" + v.split(":")[1] for v in layer_violations(tmp_path)}
    expected = {
        "lcsbench/nn/bad.py:2 imports lightning",
        "lcsbench/nn/bad.py:6 imports lcsbench.diffusion.loss",       # function-level, relative
        "lcsbench/diffusion/bad.py:1 imports scipy.special",
        "lcsbench/analysis/bad.py:5 imports lcsbench.models.loaders",     # function-level
        "lcsbench/analysis/bad.py:6 imports lcsbench.data.datamodule",
        "lcsbench/analysis/sdxl_bad.py:2 imports diffusers",            # the SDXL loader belongs in models/
        "lcsbench/analysis/sdxl_bad.py:3 imports diffusers.utils",
        "lcsbench/data/shards.py:2 imports pytorch_lightning",
        "lcsbench/models/edm2.py:2 imports lcsbench.callbacks.ema",
        "lcsbench/callbacks/ema.py:2 imports lcsbench.cli",
        "lcsbench/commands/a.py:3 imports lcsbench.commands.b",
        "lcsbench/commands/a.py:7 imports lcsbench.commands.b",        # relative sibling
        "lcsbench/checkpoints.py:3 imports numpy",
        "lcsbench/study/stages.py:6 imports lcsbench.commands.render",  # study/ sits below commands/
        "lcsbench/callbacks/study_user.py:1 imports lcsbench.study.records",  # and above callbacks/
    }
    assert found == expected
    message = next(v for v in layer_violations(tmp_path) if v.startswith("lcsbench/nn/bad.py:2"))
    assert message == ("lcsbench/nn/bad.py:2 imports lightning: "
                       "nn/ may import only torch, numpy and the standard library")


def test_layer_of_picks_the_most_specific_rule():
    assert layer_of("nn/mp.py") == "nn/"
    assert layer_of("data/blender/clevr_scene.py") == "data/"
    assert layer_of("data/datamodule.py") == "data/datamodule.py"
    assert layer_of("checkpoints.py") == "checkpoints.py"
    assert layer_of("study/stages.py") == "study/"
    assert layer_of("cli.py") is None

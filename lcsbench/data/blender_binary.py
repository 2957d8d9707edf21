"""Finding the Blender executable, checking its release, and starting it so that it dies with the render."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from lcsbench.data.render_errors import RenderError

SCENE_SCRIPT = Path(__file__).with_name("blender") / "clevr_scene.py"  # runs inside Blender's own Python




# The scene script runs on these Blender releases (major, minor), both ends included: Debian's 3.4 (tested by
# every render test) up to 5.0 (4.2 LTS, 4.5 LTS and 5.0 tested through `bpy` from PyPI:
# tests/test_blender_versions.py). 4.0 renamed the Principled BSDF input "Specular" and 4.1 removed auto
# smooth; the script branches on both. A later release may break the script: test it, then widen this.
SUPPORTED_BLENDER = ((3, 4), (5, 0))


def supported_range() -> str:
    (low_major, low_minor), (high_major, high_minor) = SUPPORTED_BLENDER
    return f"{low_major}.{low_minor} to {high_major}.{high_minor}"


def find_blender(blender: str | None = None) -> str:
    candidate = blender or os.environ.get("LCSBENCH_BLENDER") or "blender"
    path = shutil.which(candidate)
    if path is None:
        raise RenderError(
            f"Blender executable {candidate!r} not found on PATH. lcsbench renders with Blender "
            f"{supported_range()}: install one (Debian/Ubuntu: `apt-get install -y blender`, which is 3.4 on "
            f"Debian 12; or unpack the 4.5 LTS from https://download.blender.org/release/Blender4.5/) and put "
            f"it on PATH, or pass --blender /path/to/blender (or set LCSBENCH_BLENDER).")
    return path


def supported_blender_version(blender: str) -> str:
    """`blender --version`'s version, or RenderError naming the supported releases when it is not one."""
    version = blender_version(blender)
    try:
        major_minor = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        major_minor = ()
    if len(major_minor) != 2 or not SUPPORTED_BLENDER[0] <= major_minor <= SUPPORTED_BLENDER[1]:
        raise RenderError(
            f"{blender} is Blender {version}, which lcsbench's scene script does not support: it runs on Blender "
            f"{supported_range()} (tested: Debian's 3.4, the 4.2 and 4.5 LTS, 5.0). Nothing was rendered. Install a "
            f"supported release (the 4.5 LTS from https://download.blender.org/release/Blender4.5/) and pass "
            f"--blender /path/to/blender (or set LCSBENCH_BLENDER).")
    return version


def blender_version(blender: str) -> str:
    result = subprocess.run([blender, "--version"], capture_output=True, text=True, timeout=120)
    for line in result.stdout.splitlines():
        if line.startswith("Blender "):
            return line.split()[1]
    raise RenderError(f"{blender} --version printed no version (exit {result.returncode}): "
                      f"{(result.stdout + result.stderr)[-500:]}")


def parent_death_prefix() -> list[str]:
    """`setpriv --pdeathsig KILL --` where util-linux has it (>= 2.33): the kernel then kills a Blender process
    when the render process dies, even of SIGKILL, which no handler sees; elsewhere nothing."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return []
    try:
        usage = subprocess.run([setpriv, "--help"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [setpriv, "--pdeathsig", "KILL", "--"] if "--pdeathsig" in usage else []


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1

"""Find the shipped sweep specs: ``ebt_scaling/_experiments`` in an installed wheel, ``<repo>/experiments``
in a checkout. Layout: ``<root>/<preset>/<axis>.toml`` with preset ``paper`` or ``tiny``."""

from __future__ import annotations

from pathlib import Path

from ebt_scaling.config import AXES, PRESETS
from ebt_scaling.errors import SpecError
from ebt_scaling.sweeps.spec import load_spec
from ebt_scaling.sweeps.tables import SweepSpec

SPEC_PRESETS = ("tiny", "paper")


def experiments_dir() -> Path:
    """The directory holding the shipped specs."""
    pkg = Path(__file__).resolve().parents[1]
    for cand in (pkg / "_experiments", pkg.parent / "experiments"):
        if (cand / "tiny").is_dir() or (cand / "paper").is_dir():
            return cand
    raise SpecError(f"experiments: no shipped sweep specs found next to {pkg}; reinstall ebt-scaling "
                    "or pass --spec FILE")


def spec_path(axis: str, preset: str = "tiny") -> Path:
    """The shipped spec of ``axis`` at ``preset`` scale."""
    if axis not in AXES:
        raise SpecError(f"--axis: unknown axis {axis!r}; use one of {', '.join(AXES)}")
    if preset not in SPEC_PRESETS:
        size = f" ({preset} is a model size: --preset in ebt-scale train)" if preset in PRESETS else ""
        raise SpecError(f"--scale: unknown spec scale {preset!r}{size}; use one of {', '.join(SPEC_PRESETS)}")
    p = experiments_dir() / preset / f"{axis}.toml"
    if not p.is_file():
        raise SpecError(f"{p}: shipped spec missing; reinstall ebt-scaling or pass --spec FILE")
    return p


def list_specs() -> list[Path]:
    root = experiments_dir()
    return sorted(root.glob("*/*.toml"))


def load_chosen_spec(command: str, axis: str | None, spec: str | None, preset: str) -> tuple[Path | str, SweepSpec]:
    """The sweep spec a command's ``--axis`` / ``--spec`` / ``--preset`` name: (its path, the loaded SweepSpec).
    With both, the file's axis must be the one given."""
    if spec is None and axis is None:
        raise SpecError(f"{command}: give --axis AXIS (a shipped spec) or --spec FILE")
    path: Path | str = spec if spec is not None else spec_path(axis or "", preset)
    sw = load_spec(path)
    if axis is not None and spec is not None and sw.axis != axis:
        raise SpecError(f"{path}: sweep.axis is {sw.axis!r} but --axis {axis} was given; drop --axis or "
                        "pick the matching spec")
    return path, sw

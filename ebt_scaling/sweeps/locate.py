"""Find the shipped sweep specs: ``ebt_scaling/_experiments`` in an installed wheel, ``<repo>/experiments``
in a checkout. Layout: ``<root>/<preset>/<axis>.toml`` with preset ``paper`` or ``tiny``; the video specs (issue 31)
are ``<root>/<preset>/video-<axis>.toml``."""

from __future__ import annotations

from pathlib import Path

from ebt_scaling.config import AXES, PRESETS
from ebt_scaling.errors import SpecError
from ebt_scaling.sweeps.spec import load_spec
from ebt_scaling.sweeps.tables import SweepSpec

SPEC_PRESETS = ("tiny", "paper")
MODALITIES = ("text", "video")


def experiments_dir() -> Path:
    """The directory holding the shipped specs."""
    pkg = Path(__file__).resolve().parents[1]
    for cand in (pkg / "_experiments", pkg.parent / "experiments"):
        if (cand / "tiny").is_dir() or (cand / "paper").is_dir():
            return cand
    raise SpecError(f"experiments: no shipped sweep specs found next to {pkg}; reinstall ebt-scaling "
                    "or pass --spec FILE")


def spec_path(axis: str, preset: str = "tiny", modality: str = "text") -> Path:
    """The shipped spec of ``axis`` at ``preset`` scale (``modality`` video: ``video-<axis>.toml``)."""
    if axis not in AXES:
        raise SpecError(f"--axis: unknown axis {axis!r}; use one of {', '.join(AXES)}")
    if preset not in SPEC_PRESETS:
        size = f" ({preset} is a model size: --preset in ebt-scale train)" if preset in PRESETS else ""
        raise SpecError(f"--scale: unknown spec scale {preset!r}{size}; use one of {', '.join(SPEC_PRESETS)}")
    if modality not in MODALITIES:
        raise SpecError(f"--modality: unknown modality {modality!r}; use text or video")
    p = experiments_dir() / preset / (f"video-{axis}.toml" if modality == "video" else f"{axis}.toml")
    if not p.is_file() and modality == "video":
        shipped = sorted(q.stem.removeprefix("video-") for q in (experiments_dir() / preset).glob("video-*.toml"))
        raise SpecError(f"--axis {axis} --modality video: no shipped {preset} video spec for the {axis} axis; use "
                        f"--axis {' or '.join(shipped) or 'width'}, or pass --spec FILE")
    if not p.is_file():
        raise SpecError(f"{p}: shipped spec missing; reinstall ebt-scaling or pass --spec FILE")
    return p


def list_specs() -> list[Path]:
    root = experiments_dir()
    return sorted(root.glob("*/*.toml"))


def load_chosen_spec(command: str, axis: str | None, spec: str | None, preset: str,
                     modality: str | None = None) -> tuple[Path | str, SweepSpec]:
    """The sweep spec a command's ``--axis`` / ``--spec`` / ``--preset`` (``--scale``) / ``--modality`` name: (its
    path, the loaded SweepSpec). With both, the file's axis (and modality) must be the ones given."""
    if spec is None and axis is None:
        raise SpecError(f"{command}: give --axis AXIS (a shipped spec) or --spec FILE")
    path: Path | str = spec if spec is not None else spec_path(axis or "", preset, modality or "text")
    sw = load_spec(path)
    if modality is not None and sw.modality != modality:
        raise SpecError(f"{path}: the spec is {sw.modality} but --modality {modality} was given; drop --modality or "
                        "pick the matching spec")
    if axis is not None and spec is not None and sw.axis != axis:
        raise SpecError(f"{path}: sweep.axis is {sw.axis!r} but --axis {axis} was given; drop --axis or "
                        "pick the matching spec")
    return path, sw

"""Validation of the options that both backends' ELBOs share.

Users set ``vectorize_perturbations``, ``strict``, ``stick_the_landing``,
``num_particles`` and ``categorical_form``.  How ``D_y f`` is computed is decided by the
planner; :class:`ExpertSettings` holds the few knobs an expert may still turn, with the
same meaning in both backends.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

CategoricalForm = Literal["local", "raw"]
CompileSetting = Literal["auto"] | bool


def check_categorical_form(form: str, owner: str = "TraceGO_ELBO") -> None:
    """Raise ``ValueError`` unless ``form`` is ``"local"`` or ``"raw"``."""
    if form not in ("local", "raw"):
        raise ValueError(f"{owner}: categorical_form must be 'local' or 'raw', got {form!r}")


def check_num_particles(num_particles: int, owner: str, minimum: int = 1) -> None:
    """Raise ``ValueError`` unless ``num_particles`` is an integer ``>= minimum``."""
    if not isinstance(num_particles, int) or num_particles < minimum:
        raise ValueError(
            f"{owner}: num_particles must be an integer >= {minimum}, got {num_particles!r}"
        )


@dataclass(frozen=True)
class ExpertSettings:
    """Knobs of the ``D_y f`` pipeline that a user should not need.

    :param chunk_elements: at most about this many perturbed-value elements per
        vectorised replay (stack entries × elements of the perturbed values); ``None``
        (default) lets the backend choose.
    :param absorb_linear: let linear layers absorb perturbed inputs and use closed forms
        from recorded layer outputs where they apply (default ``True``); ``False``
        replays the model densely (same gradients up to float rounding).
    :param compile: compile the fused likelihood kernels: ``"auto"`` (default) where a
        compiler is present and after a shape has been seen once, ``True`` always,
        ``False`` never.
    """

    chunk_elements: int | None = None
    absorb_linear: bool = True
    compile: CompileSetting = "auto"

    def __post_init__(self) -> None:
        chunk = self.chunk_elements
        if chunk is not None and not (isinstance(chunk, int) and chunk > 0):
            raise ValueError(f"chunk_elements must be a positive integer or None, got {chunk!r}")
        if not isinstance(self.absorb_linear, bool):
            raise ValueError(f"absorb_linear must be a bool, got {self.absorb_linear!r}")
        if self.compile not in ("auto", True, False):
            raise ValueError(f"compile must be 'auto', True or False, got {self.compile!r}")


def expert_settings(expert: ExpertSettings | dict | None) -> ExpertSettings:
    """An :class:`ExpertSettings` from ``None`` (defaults), a dict of its fields, or
    itself."""
    if expert is None:
        return ExpertSettings()
    if isinstance(expert, ExpertSettings):
        return expert
    if isinstance(expert, dict):
        unknown = set(expert) - {"chunk_elements", "absorb_linear", "compile"}
        if unknown:
            raise ValueError(
                f"unknown expert settings {sorted(unknown)}; the settings are "
                "chunk_elements, absorb_linear and compile"
            )
        return ExpertSettings(**expert)
    raise TypeError(f"expert must be an ExpertSettings, a dict or None, got {type(expert)}")

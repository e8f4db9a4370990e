"""The ``D_y f`` planner: one ordered list of strategies, one chooser.

For every discrete guide site ``y`` the GO estimator needs ``D_y f``, the differences
``f(y with y_v := a) − f(y)`` over every element ``v`` and alternative ``a``.  Several
strategies compute them (closed forms from recorded layer outputs, vectorised replays of
the model over a perturbation stack, one-at-a-time replays, ...).  Each strategy looks at
the sites still unserved and either serves some of them or declines, saying why; the
planner tries the strategies in order and records which strategy served which site.

With ``fast_paths=False`` (or the environment variable ``PYRO_GO_DYF_DEBUG=1``) only the
strategies marked ``reference`` are tried: the dense replay that every fast path must
agree with.  The planner logs its choices to the ``pyro_go.dyf`` logger at ``DEBUG``
level (``logging.getLogger("pyro_go.dyf").setLevel(logging.DEBUG)`` shows them).
"""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

logger = logging.getLogger("pyro_go.dyf")

#: the environment variable that forces the reference strategies (``fast_paths=False``)
DEBUG_ENVIRONMENT_VARIABLE = "PYRO_GO_DYF_DEBUG"

Problem = TypeVar("Problem")


@dataclass(frozen=True)
class Declined:
    """A strategy's answer when it cannot serve a problem: ``reason`` says why."""

    reason: str


class DyfStrategy(ABC, Generic[Problem]):
    """One way of computing ``D_y f`` for some of a problem's sites.

    Subclasses set :attr:`name` and implement :meth:`deltas`.  A strategy may keep state
    across steps on its instance (the planner owns one instance per ELBO).
    """

    #: short name used in logs and in :attr:`DyfPlanner.served`
    name: ClassVar[str] = "strategy"
    #: whether the strategy is a reference the fast paths are checked against (tried
    #: when ``fast_paths=False``)
    reference: ClassVar[bool] = False

    @abstractmethod
    def deltas(self, problem: Problem, sites: Sequence[str]) -> Mapping[str, Any] | Declined:
        """``D_y f`` of some of ``sites`` (site name -> differences), or :class:`Declined`.

        :param problem: everything the backend's strategies need about one particle.
        :param sites: the names of the sites no earlier strategy has served.
        :returns: a mapping from each site served to its differences (a subset of
            ``sites``; the planner passes the rest to the next strategy), or
            :class:`Declined` with the reason.
        """


def fast_paths_enabled(fast_paths: bool | None) -> bool:
    """``fast_paths`` unless it is ``None``: then ``False`` exactly when the environment
    variable :data:`DEBUG_ENVIRONMENT_VARIABLE` is set to a true value."""
    if fast_paths is not None:
        return bool(fast_paths)
    return os.environ.get(DEBUG_ENVIRONMENT_VARIABLE, "").lower() not in ("1", "true", "yes")


class DyfPlanner(Generic[Problem]):
    """Tries ``strategies`` in order on the sites still unserved.

    :param strategies: the strategies, fastest first; the last must serve every site it
        is given (the dense or sequential replay).
    :param fast_paths: ``False`` tries only the reference strategies; ``None`` (default)
        reads :data:`DEBUG_ENVIRONMENT_VARIABLE`.
    """

    def __init__(
        self, strategies: Sequence[DyfStrategy[Problem]], fast_paths: bool | None = None
    ) -> None:
        if not strategies:
            raise ValueError("DyfPlanner needs at least one strategy")
        self.strategies = list(strategies)
        self.fast_paths = fast_paths_enabled(fast_paths)
        #: site name -> name of the strategy that served it on the last call
        self.served: dict[str, str] = {}
        #: strategy name -> reason it declined on the last call
        self.declined: dict[str, str] = {}

    def active_strategies(self) -> list[DyfStrategy[Problem]]:
        if self.fast_paths:
            return self.strategies
        return [strategy for strategy in self.strategies if strategy.reference]

    def deltas(self, problem: Problem, sites: Sequence[str]) -> dict[str, Any]:
        """``D_y f`` of every site in ``sites``: each strategy in turn serves what it can.

        :raises RuntimeError: when no strategy serves some site (a bug: the last
            strategy must serve everything).
        """
        remaining = list(sites)
        result: dict[str, Any] = {}
        self.served = {}
        self.declined = {}
        for strategy in self.active_strategies():
            if not remaining:
                break
            answer = strategy.deltas(problem, remaining)
            if isinstance(answer, Declined):
                self.declined[strategy.name] = answer.reason
                logger.debug("D_y f: %s declined %s: %s", strategy.name, remaining, answer.reason)
                continue
            unknown = set(answer) - set(remaining)
            if unknown:
                raise RuntimeError(
                    f"D_y f strategy {strategy.name!r} served sites it was not given: "
                    f"{sorted(unknown)}"
                )
            for name in answer:
                self.served[name] = strategy.name
            logger.debug("D_y f: %s served %s", strategy.name, sorted(answer))
            result.update(answer)
            remaining = [name for name in remaining if name not in answer]
        if remaining:
            reasons = "; ".join(f"{name}: {why}" for name, why in self.declined.items())
            raise RuntimeError(f"no D_y f strategy served the guide sites {remaining} ({reasons})")
        return result

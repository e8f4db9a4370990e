"""The messenger that records which discrete sites a program reads as Python data."""

from __future__ import annotations

from collections.abc import Iterable

from pyro.poutine.messenger import Messenger
from pyro.poutine.runtime import Message

from pyro_go.ops.provenance import track, watch_scalar_reads


class ScalarReadMessenger(Messenger):
    """Records the provenance of every tracked value that the program reads as Python
    data (``bool``, ``int``, ``float``, ``.item()``, an index, a ``range`` bound; see
    :func:`~pyro_go.ops.provenance.watch_scalar_reads`), and, for each sample site, the
    sites read before it.

    Such a read may decide which sites follow, how many, and with which distributions:
    their existence depends on the sites read, which provenance through tensor ops does
    not show.  :meth:`mark_structure` adds the sites read before each site to its
    log-density's provenance, so that every later term counts as depending on them (the
    conservative choice: a score-function cost with extra downstream terms stays
    unbiased; a cost without them does not).

    :param initial: sites already read (by the guide, when this records the model, whose
        sites all follow the guide's).
    """

    def __init__(self, initial: Iterable[str] = ()) -> None:
        super().__init__()
        #: every site read so far, ``initial`` included
        self.read: set[str] = set(initial)
        #: the sites this program itself read
        self.own_reads: set[str] = set()
        #: sample site name -> the sites read before it was sampled
        self.before: dict[str, frozenset] = {}

    def _record(self, provenance: frozenset) -> None:
        self.read |= provenance
        self.own_reads |= provenance

    def __enter__(self):
        self._watch = watch_scalar_reads(self._record)
        self._watch.__enter__()
        return super().__enter__()

    def __exit__(self, *exc) -> None:
        try:
            return super().__exit__(*exc)
        finally:
            self._watch.__exit__(*exc)

    def _pyro_post_sample(self, msg: Message) -> None:
        if self.read:
            self.before[msg["name"]] = frozenset(self.read)

    def mark_structure(self, trace) -> None:
        """Add to each site's ``log_prob`` and ``log_prob_sum`` in ``trace`` (after
        ``compute_log_prob``) the provenance of the sites read before it."""
        for name, read in self.before.items():
            node = trace.nodes.get(name)
            if node is None or "log_prob" not in node:
                continue
            node["log_prob"] = track(node["log_prob"], read)
            node["log_prob_sum"] = track(node["log_prob_sum"], read)

"""The sampling messenger that makes a guide emit GO-ready samples."""

from __future__ import annotations

from pyro.poutine.messenger import Messenger
from pyro.poutine.runtime import Message
from pyro.poutine.subsample_messenger import _Subsample

from pyro_go.distributions.registry import CategoricalForm, get_go_rule, unwrap_distribution
from pyro_go.ops.provenance import track
from pyro_go.poutine.enumeration import refuse_enumeration

NO_RULE = "no rsample, not a count or finite discrete distribution, no cdf"


class GOSampleMessenger(Messenger):
    """Samples the guide's latent sites the way the GO estimator needs them.

    * continuous sites with a pathwise ``rsample`` sample pathwise (their gradient
      already is the GO gradient of a continuous variable), also where the instance was
      marked ``has_rsample_(False)`` and where a Gamma, Beta or Dirichlet subclass
      declares ``has_rsample = False`` (see
      :func:`~pyro_go.distributions.registry.has_pathwise_sample`);
    * univariate continuous sites with only a ``cdf`` differentiable in every parameter
      get the surrogate sample of :class:`~pyro_go.distributions.rules.CDFSurrogate`,
      so that guide sites downstream receive the variable-nabla by autograd (statistical
      back-propagation, Theorem 3);
    * discrete sites sample without gradient, and their value is wrapped in a
      :class:`~pyro_go.ops.provenance.ProvenanceTensor` naming the site, so that the
      ELBO can tell which guide and model sites depend on it (the provenance tracking of
      :class:`~pyro.infer.TraceGraph_ELBO`, made cheaper);
    * sites with no GO rule (``Empirical``, a continuous class with neither ``rsample``
      nor a usable ``cdf``) are sampled and tracked the same way and recorded in
      :attr:`score_function_sites` with the reason: the ELBO gives them the
      score-function estimator.  So are sites marked
      ``infer={"go_score_function": True}`` (reason ``None``): GO, like any pathwise
      gradient, needs the objective to be differentiable in a continuous value, which
      fails where the value decides control flow (what ``has_rsample_(False)`` is often
      meant for).

    Enumerated sites raise a :class:`ValueError` naming the site and the way out.  Wrap
    the guide *inside* :func:`pyro.poutine.trace`.
    """

    def __init__(self, categorical_form: CategoricalForm = "local") -> None:
        super().__init__()
        self.categorical_form = categorical_form
        #: guide sites given the score function: name -> why (``None``: asked for)
        self.score_function_sites: dict[str, str | None] = {}

    def _pyro_sample(self, msg: Message) -> None:
        if msg["is_observed"] or msg["value"] is not None or isinstance(msg["fn"], _Subsample):
            return
        name = msg["name"]
        refuse_enumeration(msg, "TraceGO_ELBO")
        fn = msg["fn"]
        if msg["infer"].get("go_score_function", False):
            self.score_function_sites[name] = None
            msg["value"] = track(fn(*msg["args"], **msg["kwargs"]).detach(), frozenset({name}))
            return
        form = msg["infer"].get("go_categorical_form", self.categorical_form)
        rule = get_go_rule(fn, form)
        if rule is not None and rule.kind == "reparameterized":
            msg["value"] = rule.sample(fn, *msg["args"], **msg["kwargs"])
            return
        value = fn(*msg["args"], **msg["kwargs"])
        reason = NO_RULE if rule is None else None
        if rule is not None and rule.kind == "cdf":
            base = unwrap_distribution(fn)
            reason = rule.why_not_differentiable(base, value)
            if reason is None:
                msg["value"] = rule.surrogate_sample(base, value)
                return
        if reason is not None:
            self.score_function_sites[name] = reason
        msg["value"] = track(value.detach(), frozenset({name}))

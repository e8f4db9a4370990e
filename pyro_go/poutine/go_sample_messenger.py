"""The sampling messenger that makes a guide emit GO-ready samples."""

from __future__ import annotations

from pyro.poutine.messenger import Messenger
from pyro.poutine.runtime import Message
from pyro.poutine.subsample_messenger import _Subsample

from pyro_go.distributions.registry import CategoricalForm, get_go_rule, unwrap_distribution
from pyro_go.ops.provenance import track
from pyro_go.poutine.enumeration import refuse_enumeration


class GOSampleMessenger(Messenger):
    """Samples the guide's latent sites the way the GO estimator needs them.

    * sites with a pathwise ``rsample`` sample as usual (their gradient already is the
      GO gradient of a continuous variable);
    * univariate continuous sites with only a ``cdf`` get the surrogate sample of
      :class:`~pyro_go.distributions.rules.CDFSurrogate`, so that guide sites downstream
      receive the variable-nabla by autograd (statistical back-propagation, Theorem 3);
    * discrete sites sample without gradient, and their value is wrapped in a
      :class:`~pyro_go.ops.provenance.ProvenanceTensor` naming the site, so that the
      ELBO can tell which guide and model sites depend on it (the provenance tracking of
      :class:`~pyro.infer.TraceGraph_ELBO`, made cheaper).

    Sites without a GO rule and enumerated sites raise a :class:`ValueError` naming the
    site and the way out.  Wrap the guide *inside* :func:`pyro.poutine.trace`.
    """

    def __init__(self, categorical_form: CategoricalForm = "local") -> None:
        super().__init__()
        self.categorical_form = categorical_form

    def _pyro_sample(self, msg: Message) -> None:
        if msg["is_observed"] or msg["value"] is not None or isinstance(msg["fn"], _Subsample):
            return
        name = msg["name"]
        refuse_enumeration(msg, "TraceGO_ELBO")
        fn = msg["fn"]
        form = msg["infer"].get("go_categorical_form", self.categorical_form)
        rule = get_go_rule(fn, form)
        if rule is None:
            raise ValueError(
                f"TraceGO_ELBO: guide site '{name}' has distribution "
                f"{type(unwrap_distribution(fn)).__name__}, which has no GO gradient rule "
                "(no rsample, not a count or finite discrete distribution, no cdf). "
                "Register one with pyro_go.register_go_rule(YourClass, rule), or use a "
                "supported distribution at this site."
            )
        if rule.kind == "reparameterized":
            return
        value = fn(*msg["args"], **msg["kwargs"])
        if rule.kind == "cdf":
            msg["value"] = rule.surrogate_sample(unwrap_distribution(fn), value)
        else:
            msg["value"] = track(value.detach(), frozenset({name}))

"""The sampling handler that makes a guide emit GO-ready samples (the NumPyro twin of
:class:`pyro_go.poutine.GOSampleMessenger`)."""

from __future__ import annotations

from jax.lax import stop_gradient
from numpyro.primitives import Messenger

from numpyro_go.distributions.registry import CategoricalForm, get_go_rule, unwrap_distribution

NO_RULE = "no pathwise sampler, not a count or finite discrete distribution, no cdf"


def refuse_enumeration(msg, elbo: str) -> None:
    """Raise a :class:`ValueError` naming the site if a guide site asks for enumeration:
    the estimators of this package work from samples."""
    flag = msg["infer"].get("enumerate")
    if flag:
        raise ValueError(
            f"{elbo}: guide site '{msg['name']}' asks for enumeration "
            f"(infer={{'enumerate': {flag!r}}}). {elbo} estimates gradients from samples; "
            "remove the enumerate flag (or config_enumerate) from the guide, or use "
            "numpyro.infer.TraceEnum_ELBO for this site."
        )


class go_sample(Messenger):
    """Samples the guide's latent sites the way the GO estimator needs them.

    * sites with a pathwise sampler keep their sample (its gradient already is the GO
      gradient of a continuous variable), also a Gamma, Beta or Dirichlet declared
      non-reparameterised (see
      :func:`~numpyro_go.distributions.registry.has_pathwise_sample`);
    * univariate continuous sites with only a ``cdf`` differentiable in every parameter
      get the surrogate sample of :class:`~numpyro_go.distributions.rules.CDFSurrogate`,
      so that guide sites downstream receive the variable-nabla by autodiff
      (statistical back-propagation, Theorem 3);
    * discrete sites keep their sample with its gradient stopped;
    * sites with no GO rule (a continuous class with neither a pathwise sampler nor a
      usable ``cdf``, a discrete family without a rule) keep their sample with its
      gradient stopped and are recorded in :attr:`score_function_sites` with the
      reason: the ELBO gives them the score-function estimator.  So are sites marked
      ``infer={"go_score_function": True}`` (reason ``None``): GO, like any pathwise
      gradient, needs the objective to be differentiable in a continuous value, which
      fails where the value decides control flow.

    Enumerated sites raise a :class:`ValueError` naming the site and the way out.
    NumPyro runs ``postprocess_message`` from the outermost
    handler inward, so enter this handler *outside* :class:`numpyro.handlers.trace` for
    the trace to record the surrogate values.
    """

    def __init__(self, fn=None, categorical_form: CategoricalForm = "local") -> None:
        self.categorical_form = categorical_form
        #: guide sites given the score function: name -> why (``None``: asked for)
        self.score_function_sites: dict[str, str | None] = {}
        super().__init__(fn)

    def postprocess_message(self, msg) -> None:
        if msg["type"] != "sample" or msg["is_observed"]:
            return
        name, fn = msg["name"], msg["fn"]
        refuse_enumeration(msg, "TraceGO_ELBO")
        if msg["infer"].get("go_score_function", False):
            self.score_function_sites[name] = None
            msg["value"] = stop_gradient(msg["value"])
            return
        form = msg["infer"].get("go_categorical_form", self.categorical_form)
        rule = get_go_rule(fn, form)
        reason = NO_RULE if rule is None else None
        if rule is not None and rule.kind == "cdf":
            base = unwrap_distribution(fn)
            reason = rule.why_not_differentiable(base, msg["value"])
            if reason is None:
                msg["value"] = rule.surrogate_sample(base, msg["value"])
                return
        if reason is not None:
            self.score_function_sites[name] = reason
        if reason is not None or rule.kind == "discrete":
            msg["value"] = stop_gradient(msg["value"])

"""The sampling handler that makes a guide emit GO-ready samples (the NumPyro twin of
:class:`pyro_go.poutine.GOSampleMessenger`)."""

from __future__ import annotations

from jax.lax import stop_gradient
from numpyro.primitives import Messenger

from numpyro_go.distributions.registry import CategoricalForm, get_go_rule, unwrap_distribution

NO_RULE = "no pathwise sampler, not a count or finite discrete distribution, no cdf"


def _asks_for_enumeration(elbo: str, side: str, name: str, flag, way_out: str) -> ValueError:
    return ValueError(
        f"{elbo}: {side} site '{name}' asks for enumeration (infer={{'enumerate': {flag!r}}}). "
        f"{elbo} estimates gradients from samples; {way_out}, or use "
        "numpyro.infer.TraceEnum_ELBO for this site."
    )


def refuse_enumeration(msg, elbo: str) -> None:
    """Raise a :class:`ValueError` naming the site if a guide site asks for enumeration:
    the estimators of this package work from samples."""
    flag = msg["infer"].get("enumerate")
    if flag:
        raise _asks_for_enumeration(
            elbo,
            "guide",
            msg["name"],
            flag,
            "remove the enumerate flag (or config_enumerate) from the guide",
        )


def refuse_model_enumeration(model_trace: dict, guide_trace: dict, elbo: str) -> None:
    """Raise a :class:`ValueError` naming the first latent model site without a guide site
    that asks for enumeration (``config_enumerate`` on a mixture's assignments, written
    for :class:`~numpyro.infer.TraceEnum_ELBO`): sampled from the prior instead of summed
    out, it would silently change the objective."""
    for name, site in model_trace.items():
        if site["type"] != "sample" or site["is_observed"] or name in guide_trace:
            continue
        flag = site["infer"].get("enumerate")
        if flag:
            raise _asks_for_enumeration(
                elbo,
                "model",
                name,
                flag,
                "it has no guide site, so it would be drawn from the prior instead of "
                "summed out, a different objective. Add a guide site for it (and remove "
                "the enumerate flag) to estimate its gradient from samples",
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

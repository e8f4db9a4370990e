"""GO gradient rules for NumPyro distributions (the JAX twin of
:mod:`pyro_go.distributions.rules`).

A *rule* knows, for one family, what the GO estimator needs (Cong et al. 2019,
Theorem 1, eq. 9):

* continuous families either have a pathwise sampler already (:class:`Reparameterized`:
  JAX's implicit gradients of Gamma, Beta and Dirichlet samples *are* the GO gradient of
  a continuous variable) or get a CDF surrogate sample whose gradient is the
  variable-nabla ``−∇F/p`` (:class:`CDFSurrogate`);
* discrete families (:class:`DiscreteRule`) name the *alternative* values of one element
  at which ``f`` is evaluated (``y+1``, or the other states of a finite support) and turn
  the measured differences ``Δ = f(alternative) − f(y)`` into a surrogate whose gradient
  is the GO estimate.

Rules act on the *base* distribution (``Independent``, ``ExpandedDistribution`` and
``MaskedDistribution`` stripped, see :mod:`numpyro_go.distributions.registry`).
Parameters are read as attributes (``fn.probs``, ``fn.rate``, ...): NumPyro computes
them from whatever the user passed (``logits``, ``mean``, ...) inside the traced
function, so gradients reach the user's parameters by the chain rule.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.lax import stop_gradient as _stop
from numpyro.distributions import constraints

from numpyro_go.ops.special import negative_binomial_total_count_nabla, windowed_count_sum


class GORule:
    """Base class of all rules.  ``kind`` is ``"reparameterized"``, ``"cdf"`` or
    ``"discrete"``."""

    kind: str = ""

    def __repr__(self) -> str:
        return type(self).__name__ + "()"


class Reparameterized(GORule):
    """Continuous families with a pathwise sampler (``has_rsample``): JAX's pathwise and
    implicit gradients equal the GO gradient of a continuous variable (Cong et al. 2019,
    section 3 and appendix A.1)."""

    kind = "reparameterized"


class CDFSurrogate(GORule):
    """Univariate continuous families with a differentiable ``cdf`` but no pathwise
    sampler: ``ỹ = y − (F_η(y) − stop F_η(y)) / stop p_η(y)`` has value ``y`` and gradient
    the variable-nabla ``−∇_η F_η(y) / p_η(y)`` (Theorem 1, continuous case)."""

    kind = "cdf"

    def __init__(self) -> None:
        #: class -> why its cdf fails, or ``None``
        self._checked: dict[type, str | None] = {}

    def surrogate_sample(self, fn, value: jax.Array) -> jax.Array:
        value = _stop(value)
        cdf = fn.cdf(value)
        density = jnp.exp(fn.log_prob(value))
        return value - (cdf - _stop(cdf)) / _stop(density)

    def why_not_differentiable(self, fn, value: jax.Array) -> str | None:
        """``None`` if JAX can differentiate ``fn.cdf`` in every floating-point leaf of
        the distribution's pytree, else the reason (such as ``betainc``'s missing
        derivative in ``a`` and ``b``).  Checked once per class by tracing the gradient
        abstractly (:func:`jax.eval_shape`: nothing is computed); a missing derivative
        is a property of the code, not of the point."""
        if type(fn) not in self._checked:
            self._checked[type(fn)] = _cdf_failure(fn, value)
        return self._checked[type(fn)]


def _abstract(x) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x))


def _cdf_failure(fn, value: jax.Array) -> str | None:
    leaves, treedef = jax.tree_util.tree_flatten(fn)
    floating = [
        i for i, leaf in enumerate(leaves) if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)
    ]

    def cdf_sum(params, value):
        full = list(leaves)
        for i, param in zip(floating, params, strict=True):
            full[i] = param
        return jnp.sum(jax.tree_util.tree_unflatten(treedef, full).cdf(value))

    params = [_abstract(leaves[i]) for i in floating]
    try:
        jax.eval_shape(jax.grad(cdf_sum), params, _abstract(value))
    except (ValueError, TypeError, NotImplementedError) as error:
        return (
            f"no pathwise sampler, and its cdf is not differentiable: {str(error).splitlines()[0]}"
        )
    return None


class DiscreteRule(GORule):
    """A discrete family whose random elements are the value's scalar entries."""

    kind = "discrete"

    def num_alternatives(self, fn) -> int:
        """How many alternative values per element the estimator evaluates."""
        return 1

    def alternatives(self, fn, value: jax.Array) -> jax.Array:
        """Alternative values ``[A, *value.shape]``: entry ``[a, i]`` is the value element
        ``i`` takes in perturbation ``a``."""
        raise NotImplementedError

    def surrogate(self, fn, value: jax.Array, delta: jax.Array) -> jax.Array:
        """An array whose ``.sum()`` has gradient equal to the GO estimate, given
        ``delta[a, i] = f(y with element i set to alternative a) − f(y)``."""
        raise NotImplementedError

    def variable_nabla(self, fn, value: jax.Array) -> dict[str, jax.Array]:
        """Variable-nabla ``g_η(y) = −∂_η Q(y) / q(y)`` for each named parameter η."""
        raise NotImplementedError


class VariableNablaRule(DiscreteRule):
    """Raw GO form on ``{0, 1, 2, ...}``: alternative ``y + 1``, surrogate
    ``Σ_η stop(g_η · Δ) · η`` (Theorem 1 with ``D_y f = f(y+1) − f(y)``).  At the top of a
    finite support ``Q(y) = 1``: the term vanishes and ``y + 1`` is never evaluated."""

    parameter_names: tuple[str, ...] = ()

    def parameters(self, fn) -> dict[str, jax.Array]:
        """The parameter arrays that :meth:`variable_nabla` refers to."""
        return {name: getattr(fn, name) for name in self.parameter_names}

    def at_top(self, fn, value: jax.Array) -> jax.Array | None:
        upper = getattr(fn.support, "upper_bound", None)
        return None if upper is None else value >= upper

    def alternatives(self, fn, value):
        top = self.at_top(fn, value)
        alternative = value + 1 if top is None else jnp.where(top, value, value + 1)
        return alternative[None]

    def mask_delta(self, fn, value, delta):
        top = self.at_top(fn, value)
        return delta[0] if top is None else jnp.where(top, 0.0, delta[0])

    def surrogate(self, fn, value, delta):
        delta = self.mask_delta(fn, value, delta)
        params = self.parameters(fn)
        total = jnp.zeros(())
        for name, nabla in self.variable_nabla(fn, value).items():
            total = total + jnp.sum(_stop(nabla * delta) * params[name])
        return total


class PoissonRule(VariableNablaRule):
    """``Poisson(λ)``: ``g_λ = 1`` (Cong et al. 2019, appendix A, Table 3)."""

    parameter_names = ("rate",)

    def variable_nabla(self, fn, value):
        return {"rate": jnp.ones(jnp.broadcast_shapes(jnp.shape(value), jnp.shape(fn.rate)))}


class GeometricRule(VariableNablaRule):
    """``Geometric(p)`` counting failures before the first success: ``g_p = −(y+1)/p``."""

    parameter_names = ("probs",)

    def variable_nabla(self, fn, value):
        return {"probs": -(value + 1) / _stop(fn.probs)}


class BinomialRule(VariableNablaRule):
    """``Binomial(n, p)``: ``g_p = (n − y)/(1 − p)``; ``n`` is not differentiable."""

    parameter_names = ("probs",)

    def variable_nabla(self, fn, value):
        return {"probs": (fn.total_count - value) / (1 - _stop(fn.probs))}


class GammaPoissonRule(VariableNablaRule):
    """``GammaPoisson(α, β)`` = ``NegativeBinomial(r=α, p=1/(1+β))``, and through it
    NumPyro's ``NegativeBinomial2``, ``NegativeBinomialProbs`` and
    ``NegativeBinomialLogits`` (subclasses that set ``concentration`` and ``rate`` from
    their own parameters): ``g_α = g_r`` of appendix A's Table 3 and
    ``g_β = −(y + α)/(β (1 + β))``."""

    parameter_names = ("concentration", "rate")

    def variable_nabla(self, fn, value):
        alpha, beta = _stop(fn.concentration), _stop(fn.rate)
        probs = 1 / (1 + beta)
        return {
            "concentration": negative_binomial_total_count_nabla(
                value, alpha, probs, complement=beta / (1 + beta)
            ),
            "rate": -(value + alpha) / (beta * (1 + beta)),
        }


def _broadcast_leaves(fn, shape):
    """Flatten ``fn`` and broadcast its floating-point leaves to the batch ``shape``, so
    that ``∂ log q / ∂ leaf`` is elementwise; other leaves are returned as ``None``."""
    leaves, treedef = jax.tree_util.tree_flatten(fn)
    floating = []
    for leaf in leaves:
        leaf = jnp.asarray(leaf)
        usable = jnp.issubdtype(leaf.dtype, jnp.floating) and leaf.ndim <= len(shape)
        floating.append(jnp.broadcast_to(leaf, shape) if usable else None)
    return leaves, floating, treedef


class GenericCountRule(VariableNablaRule):
    """Any distribution on ``{0, 1, 2, ...}`` with a differentiable ``log_prob``
    (``ZeroInflatedPoisson``, ``ZeroInflatedNegativeBinomial2``, ``BetaBinomial``, user
    classes): ``g_η(y) = −Σ_{k≤y} [q(k)/q(y)] ∂_η log q(k) = Σ_{k>y} [q(k)/q(y)] ∂_η log q(k)``
    (Cong et al. 2019, appendix A.2), elementwise for every floating-point leaf of the
    distribution's pytree, and the surrogate ``Σ_leaves stop(g · Δ) · leaf``.
    :func:`~numpyro_go.ops.special.windowed_count_sum` takes, per element, the side that
    ends first; each step costs one ``log_prob`` and its gradient on the batch."""

    def _nablas(self, fn, value):
        leaves, floating, treedef = _broadcast_leaves(fn, jnp.shape(value))

        def rebuild(chosen):
            merged = [c if c is not None else leaf for c, leaf in zip(chosen, leaves, strict=True)]
            return jax.tree_util.tree_unflatten(treedef, merged)

        fixed = [None if leaf is None else _stop(leaf) for leaf in floating]

        def log_q(k):
            return rebuild(fixed).log_prob(k)

        def score(k):
            return jax.grad(lambda chosen: jnp.sum(rebuild(chosen).log_prob(k)))(fixed)

        upper = getattr(fn.support, "upper_bound", None)
        head = windowed_count_sum(log_q, score, value, upper)
        nablas = [None if h is None else -h for h in head]
        return nablas, floating

    def surrogate(self, fn, value, delta):
        delta = self.mask_delta(fn, value, delta)
        nablas, floating = self._nablas(fn, value)
        total = jnp.zeros(())
        for nabla, leaf in zip(nablas, floating, strict=True):
            if nabla is not None:
                total = total + jnp.sum(_stop(nabla * delta) * leaf)
        return total

    def variable_nabla(self, fn, value):
        nablas, _ = self._nablas(fn, value)
        return {f"leaf{i}": nabla for i, nabla in enumerate(nablas) if nabla is not None}


class BernoulliLocal(DiscreteRule):
    """``Bernoulli(P)`` in the local form (Cong et al. 2019, appendix I, eq. 34):
    ``∇E[f] = E[Σ_v ∇P_v (f(y_{−v}, 1) − f(y_{−v}, 0))]``; one alternative (the flip),
    ``f(1) − f(0) = (1 − 2y)·Δ``."""

    def alternatives(self, fn, value):
        return (1 - value)[None]

    def surrogate(self, fn, value, delta):
        return jnp.sum(_stop((1 - 2 * value) * delta[0]) * fn.probs)

    def variable_nabla(self, fn, value):
        probs = _stop(fn.probs)
        return {"probs": jnp.where(value == 0, 1 / (1 - probs), 0.0)}


class CategoricalRaw(DiscreteRule):
    """``Categorical(p)`` in the raw GO form: ``Q(y) = Σ_{k≤y} p_k``, ``g = −∇Q(y)/p_y``
    with ``D f = f(y+1) − f(y)`` (Theorem 1, appendix A.2); no term at ``y = K − 1``."""

    def alternatives(self, fn, value):
        num_categories = fn.probs.shape[-1]
        return jnp.minimum(value + 1, num_categories - 1)[None]

    def _cdf_and_mass(self, fn, labels):
        probs = jnp.broadcast_to(fn.probs, labels.shape + fn.probs.shape[-1:])
        index = labels[..., None]
        cdf = jnp.take_along_axis(jnp.cumsum(probs, -1), index, -1)[..., 0]
        mass = jnp.take_along_axis(probs, index, -1)[..., 0]
        return cdf, mass

    def surrogate(self, fn, value, delta):
        labels = value.astype(jnp.int32)
        delta = jnp.where(labels == fn.probs.shape[-1] - 1, 0.0, delta[0])
        cdf, mass = self._cdf_and_mass(fn, labels)
        return jnp.sum(-_stop(delta) * cdf / _stop(mass))

    def variable_nabla(self, fn, value):
        """``g_{p_j}(y) = −1{j ≤ y}/p_y`` (shape ``[*batch, K]``)."""
        labels = value.astype(jnp.int32)
        _, mass = self._cdf_and_mass(fn, labels)
        below = jnp.arange(fn.probs.shape[-1]) <= labels[..., None]
        return {"probs": -below / _stop(mass)[..., None]}


class CategoricalLocal(DiscreteRule):
    """``Categorical(p)`` in the local form ``∇E[f] = E[Σ_v Σ_k ∇p_{vk} f(y_{−v}, k)]``:
    ``K − 1`` alternatives per element; ``Σ_k ∇p_{vk} = 0`` lets ``f(y)`` be the baseline.
    ``variable_nabla`` is that of :attr:`raw_form`."""

    raw_form: DiscreteRule = CategoricalRaw()

    def num_alternatives(self, fn):
        return fn.probs.shape[-1] - 1

    def alternatives(self, fn, value):
        num_categories = fn.probs.shape[-1]
        shifts = jnp.arange(1, num_categories).reshape((-1,) + (1,) * jnp.ndim(value))
        return (value.astype(jnp.int32) + shifts) % num_categories

    def surrogate(self, fn, value, delta):
        alternative = self.alternatives(fn, value)
        probs = jnp.broadcast_to(fn.probs, alternative.shape + fn.probs.shape[-1:])
        alternative_probs = jnp.take_along_axis(probs, alternative[..., None], -1)[..., 0]
        delta = jnp.where(_stop(alternative_probs) > 0, delta, 0.0)
        return jnp.sum(_stop(delta) * alternative_probs)

    def variable_nabla(self, fn, value):
        return self.raw_form.variable_nabla(fn, value)


def is_count_support(support) -> bool:
    """Whether a support is a subset of ``{0, 1, 2, ...}`` starting at 0."""
    if support is constraints.boolean:
        return True
    if not isinstance(support, (constraints.integer_interval, constraints.integer_greater_than)):
        return False
    try:  # a bound that is traced under jit cannot be checked: such supports do not qualify
        return bool(np.all(np.asarray(support.lower_bound) == 0))
    except jax.errors.TracerArrayConversionError:
        return False

"""GO gradient rules: how each family of distributions passes a GO gradient.

A *rule* knows, for one family, everything the GO estimator needs (Cong et al. 2019,
Theorem 1, eq. 9):

* continuous families either have a pathwise ``rsample`` already (:class:`Reparameterized`:
  the implicit/pathwise gradient *is* the GO gradient of a continuous variable) or get
  a CDF surrogate sample whose gradient is the variable-nabla ``-∇Q/q``
  (:class:`CDFSurrogate`);
* discrete families (:class:`DiscreteRule`) name the *alternative* values of one element
  that the estimator must evaluate ``f`` at (``y+1``, or the other states of a finite
  support), and turn the measured differences ``Δ = f(alternative) − f(y)`` into a
  surrogate whose gradient is the GO estimate.

Rules act on the *base* distribution, with ``Independent``/``expand``/masking wrappers
already stripped (see :mod:`pyro_go.distributions.registry`); the value passed in has
the base's batch and event shape (or broadcasts to it).
"""

from __future__ import annotations

import torch
from torch.distributions import constraints

from pyro_go.ops.special import negative_binomial_total_count_nabla, windowed_count_sum


def _stop(x: torch.Tensor) -> torch.Tensor:
    return x.detach()


class GORule:
    """Base class of all rules.  ``kind`` is ``"reparameterized"``, ``"cdf"`` or
    ``"discrete"``."""

    kind: str = ""

    def __repr__(self) -> str:
        return type(self).__name__ + "()"


class Reparameterized(GORule):
    """Continuous families with ``rsample``: torch's pathwise / implicit gradients
    (Gamma, Beta, Dirichlet via implicit reparameterisation) already equal the GO
    gradient of a continuous variable (Cong et al. 2019, section 3 and appendix A.1).

    :meth:`sample` calls ``rsample`` even where the instance was marked
    ``has_rsample_(False)``: for a continuous variable the implicit gradient *is* GO.
    """

    kind = "reparameterized"

    def sample(self, fn, *args, **kwargs) -> torch.Tensor:
        """A pathwise sample of ``fn`` (wrappers included), whatever its flag says."""
        return fn.rsample(*args, **kwargs)


class CDFSurrogate(GORule):
    """Univariate continuous families with a differentiable ``cdf`` but no ``rsample``.

    Returns ``ỹ = y − (F_η(y) − stop F_η(y)) / stop p_η(y)``: value ``y``, gradient the
    variable-nabla ``g_η(y) = −∇_η F_η(y) / p_η(y)`` (Theorem 1, continuous case).
    Downstream, autograd supplies ``D_y f = ∇_y f``.
    """

    kind = "cdf"

    def __init__(self) -> None:
        #: (class, parameters that need a gradient) -> why its cdf fails, or ``None``
        self._checked: dict[tuple, str | None] = {}

    def surrogate_sample(self, fn, value: torch.Tensor) -> torch.Tensor:
        value = _stop(value)
        cdf = fn.cdf(value)
        density = fn.log_prob(value).exp()
        return value - (cdf - _stop(cdf)) / _stop(density)

    def why_not_differentiable(self, fn, value: torch.Tensor) -> str | None:
        """``None`` if ``fn.cdf`` is differentiable in every parameter that ``log_prob``
        depends on and that needs a gradient, else the reason.  Checked by autograd at
        ``value`` once per class and set of such parameters (a missing derivative, such
        as ``igamma``'s in its first argument, or a cdf that ignores a parameter, is a
        property of the code, not of the point)."""
        params = _differentiable_params(fn)
        key = (type(fn), tuple(params))
        if key not in self._checked:
            self._checked[key] = _cdf_failure(fn, _stop(value), params)
        return self._checked[key]


def _differentiable_params(fn) -> dict[str, torch.Tensor]:
    """The parameters set on ``fn`` (among ``arg_constraints``) that need a gradient."""
    return {
        name: param
        for name in fn.arg_constraints
        if torch.is_tensor(param := vars(fn).get(name)) and param.requires_grad
    }


def _cdf_failure(fn, value: torch.Tensor, params: dict[str, torch.Tensor]) -> str | None:
    if not params:
        return None
    tensors = list(params.values())
    try:
        cdf_grads = torch.autograd.grad(
            fn.cdf(value).sum(), tensors, retain_graph=True, allow_unused=True
        )
    except (RuntimeError, NotImplementedError) as error:
        return f"no rsample, and its cdf is not differentiable: {str(error).splitlines()[0]}"
    density_grads = torch.autograd.grad(
        fn.log_prob(value).sum(), tensors, retain_graph=True, allow_unused=True
    )
    for name, cdf_grad, density_grad in zip(params, cdf_grads, density_grads, strict=True):
        if cdf_grad is None and density_grad is not None:
            return f"no rsample, and its cdf does not depend differentiably on '{name}'"
    return None


class DiscreteRule(GORule):
    """A discrete family.  Subclasses implement :meth:`alternatives` and
    :meth:`surrogate`.

    ``atom_dim`` is the number of trailing value dims that form one random element
    (1 for one-hot encodings, 0 otherwise).
    """

    kind = "discrete"
    atom_dim = 0

    def num_alternatives(self, fn) -> int:
        """How many alternative values per element the estimator evaluates."""
        return 1

    def alternatives(self, fn, value: torch.Tensor) -> torch.Tensor:
        """Alternative values, shape ``[A, *value.shape]``.  Entry ``[a, i]`` is the
        value element ``i`` takes in perturbation ``a`` (a no-op where it equals ``y``)."""
        raise NotImplementedError

    def surrogate(self, fn, value: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """A tensor whose ``.sum()`` has gradient (w.r.t. ``fn``'s parameters) equal to
        the GO estimate, given ``delta[a, i] = f(y with element i set to alternative a)
        − f(y)`` (shape ``[A, *element_shape]``, no gradient)."""
        raise NotImplementedError

    def variable_nabla(self, fn, value: torch.Tensor) -> dict[str, torch.Tensor]:
        """Variable-nabla ``g_η(y) = −∂_η Q(y) / q(y)`` for each named parameter η."""
        raise NotImplementedError

    def carrier(self, fn, value: torch.Tensor) -> torch.Tensor:
        """The gradient carrier ``ŷ`` of Algorithm 1: value ``y``, gradient w.r.t. the
        parameters the variable-nabla ``g(y)``, to be paired with
        ``D_y f = f(y + 1) − f(y)`` (raw GO form, Theorem 1)."""
        ones = torch.ones(value.shape[: value.dim() - self.atom_dim], dtype=value.dtype)
        term = self.surrogate(fn, value, ones.unsqueeze(0))
        term = term.expand(ones.shape) if term.dim() else term * ones
        labels = value.argmax(-1).to(value.dtype) if self.atom_dim else value
        return labels + (term - _stop(term))


class VariableNablaRule(DiscreteRule):
    """Raw GO form on ``{0, 1, 2, ...}``: alternative ``y + 1``, surrogate
    ``Σ_η stop(g_η · Δ) · η`` (Theorem 1 with ``D_y f = f(y+1) − f(y)``; Algorithm 1's
    gradient-changing trick).  At the top of a finite support ``Q(y) = 1`` and the term
    vanishes, so no alternative outside the support is ever evaluated."""

    def upper_bound(self, fn) -> torch.Tensor | None:
        support = fn.support
        return getattr(support, "upper_bound", None)

    def at_top(self, fn, value: torch.Tensor) -> torch.Tensor | None:
        upper = self.upper_bound(fn)
        if upper is None:
            return None
        return value >= upper

    def alternatives(self, fn, value):
        alternative = value + 1
        top = self.at_top(fn, value)
        if top is not None:
            alternative = torch.where(top, value, alternative)
        return alternative.unsqueeze(0)

    parameter_names: tuple[str, ...] = ()

    def parameters(self, fn) -> dict[str, torch.Tensor]:
        """Differentiable parameter tensors that :meth:`variable_nabla` refers to."""
        return {name: getattr(fn, name) for name in self.parameter_names}

    def mask_delta(self, fn, value, delta):
        top = self.at_top(fn, value)
        delta = delta[0]
        if top is not None:
            delta = torch.where(top, delta.new_zeros(()), delta)
        return delta

    def surrogate(self, fn, value, delta):
        delta = self.mask_delta(fn, value, delta)
        nablas = self.variable_nabla(fn, value)
        params = self.parameters(fn)
        total = delta.new_zeros(())
        for name, nabla in nablas.items():
            param = params[name]
            if not (torch.is_tensor(param) and param.requires_grad):
                continue
            total = total + (_stop(nabla * delta) * param)
        return total


class PoissonRule(VariableNablaRule):
    """``Poisson(λ)``: ``g_λ = 1`` (Cong et al. 2019, appendix A, Table 3)."""

    parameter_names = ("rate",)

    def variable_nabla(self, fn, value):
        return {"rate": torch.ones_like(value) * torch.ones_like(fn.rate)}


class GeometricRule(VariableNablaRule):
    """``Geometric(p)`` counting failures before the first success:
    ``Q(y) = 1 − (1−p)^{y+1}``, ``g_p = −(y+1)/p``."""

    parameter_names = ("probs",)

    def variable_nabla(self, fn, value):
        return {"probs": -(value + 1) / _stop(fn.probs)}


class BinomialRule(VariableNablaRule):
    """``Binomial(n, p)``: ``g_p = (n − y)/(1 − p)``; ``n`` is not differentiable."""

    parameter_names = ("probs",)

    def variable_nabla(self, fn, value):
        probs = _stop(fn.probs)
        return {"probs": (fn.total_count - value) / (1 - probs)}


class NegativeBinomialRule(VariableNablaRule):
    """``NegativeBinomial(r, p)`` in torch's parameterisation (mean ``r p/(1−p)``):
    ``g_p = (y + r)/(1 − p)`` and ``g_r = −Σ_{k≤y} q(k)[ψ(k+r) − ψ(r) + log(1−p)]/q(y)``
    (Cong et al. 2019, appendix A, Table 3)."""

    parameter_names = ("probs", "total_count")

    def variable_nabla(self, fn, value):
        probs = _stop(fn.probs)
        total_count = torch.as_tensor(fn.total_count, dtype=probs.dtype, device=probs.device)
        # given logits, 1 − p = σ(−logits) keeps its digits where p is close to 1
        logits = fn.__dict__.get("logits")
        complement = None if logits is None else torch.sigmoid(-_stop(logits))
        return {
            "probs": (value + _stop(total_count)) / (1 - probs),
            "total_count": negative_binomial_total_count_nabla(
                value, total_count, probs, complement=complement
            ),
        }


class GammaPoissonRule(VariableNablaRule):
    """Pyro's ``GammaPoisson(α, β)`` is ``NegativeBinomial(r=α, p=1/(1+β))``:
    ``g_α = g_r`` and ``g_β = g_p · dp/dβ = −(y + α)/(β (1 + β))``."""

    parameter_names = ("concentration", "rate")

    def variable_nabla(self, fn, value):
        alpha = _stop(fn.concentration)
        beta = _stop(fn.rate)
        probs = 1 / (1 + beta)
        return {
            "concentration": negative_binomial_total_count_nabla(
                value, alpha, probs, complement=beta / (1 + beta)
            ),
            "rate": -(value + alpha) / (beta * (1 + beta)),
        }


class GenericCountRule(VariableNablaRule):
    """Any distribution on ``{0, 1, 2, ...}`` with a differentiable ``log_prob``
    (ZeroInflatedPoisson, ZeroInflatedNegativeBinomial, BetaBinomial, user classes).

    Uses ``∂_η Q(y) = Σ_{k≤y} q(k) ∂_η log q(k) = −Σ_{k>y} q(k) ∂_η log q(k)`` (Cong et
    al. 2019, appendix A.2): the surrogate ``S = Σ_{k≤y} stop(q(k)/q(y)) log q_η(k)``
    (or minus the tail's) has ``∇S = ∇Q(y)/q(y) = −g(y)``, so the GO term is
    ``−stop(Δ) · S``.  :func:`~pyro_go.ops.special.windowed_count_sum` takes, per element,
    the side that ends first, in windows of fixed size; an element that needs more than
    :data:`~pyro_go.ops.special.COUNT_SUM_CAP` terms on both sides raises
    :class:`~pyro_go.ops.special.CountSumOutOfReach`.
    """

    def _head_sum(self, fn, value):
        return windowed_count_sum(fn.log_prob, value, self.upper_bound(fn))

    def surrogate(self, fn, value, delta):
        delta = self.mask_delta(fn, value, delta)
        return -_stop(delta) * self._head_sum(fn, value)

    def variable_nabla(self, fn, value):
        head = self._head_sum(fn, value)
        nablas = {}
        for name in fn.arg_constraints:
            param = getattr(fn, name, None)
            if not (torch.is_tensor(param) and param.requires_grad):
                continue
            if param.shape != head.shape:
                continue  # only elementwise parameters give elementwise nablas
            (grad,) = torch.autograd.grad(head.sum(), param, retain_graph=True, allow_unused=True)
            if grad is not None:
                nablas[name] = -grad
        return nablas


class BernoulliLocal(DiscreteRule):
    """``Bernoulli(P)`` in the local form (Cong et al. 2019, appendix I, eq. 34):
    ``∇E[f] = E[Σ_v ∇P_v (f(y_{−v}, 1) − f(y_{−v}, 0))]``.  One alternative (the flip);
    ``f(1) − f(0) = (1 − 2y)·Δ``."""

    def alternatives(self, fn, value):
        return (1 - value).unsqueeze(0)

    def surrogate(self, fn, value, delta):
        sign = 1 - 2 * value
        return _stop(sign * delta[0]) * fn.probs

    def variable_nabla(self, fn, value):
        probs = _stop(fn.probs)
        return {"probs": torch.where(value == 0, 1 / (1 - probs), torch.zeros_like(probs))}

    def carrier(self, fn, value):
        nabla = self.variable_nabla(fn, value)["probs"]
        return value + _stop(nabla) * (fn.probs - _stop(fn.probs))


def _categorical_probs(fn) -> torch.Tensor:
    return fn.probs


class _LabelEncoding:
    """Categorical values are labels ``0..K−1``."""

    atom_dim = 0

    def _labels(self, value):
        return value.long()

    def _encode(self, labels, like):
        return labels.to(like.dtype)


class _OneHotEncoding:
    """Categorical values are one-hot vectors (one atom spans the last dim)."""

    atom_dim = 1

    def _labels(self, value):
        return value.argmax(-1)

    def _encode(self, labels, like):
        return torch.nn.functional.one_hot(labels, like.shape[-1]).to(like.dtype)


class CategoricalRaw(_LabelEncoding, DiscreteRule):
    """``Categorical(p)`` in the raw GO form: ``Q(y) = Σ_{k≤y} p_k``,
    ``g = −∇Q(y)/p_y`` with ``D f = f(y+1) − f(y)`` (Theorem 1, appendix A.2).  One
    alternative per element; no term at ``y = K − 1``."""

    def alternatives(self, fn, value):
        num_categories = _categorical_probs(fn).shape[-1]
        labels = self._labels(value)
        return self._encode((labels + 1).clamp(max=num_categories - 1), value).unsqueeze(0)

    def _cdf_and_mass(self, fn, labels):
        probs = _categorical_probs(fn)
        probs = probs.expand(labels.shape + probs.shape[-1:])
        index = labels.unsqueeze(-1)
        cdf = probs.cumsum(-1).gather(-1, index).squeeze(-1)
        mass = probs.gather(-1, index).squeeze(-1)
        return cdf, mass

    def surrogate(self, fn, value, delta):
        labels = self._labels(value)
        num_categories = _categorical_probs(fn).shape[-1]
        delta = torch.where(labels == num_categories - 1, delta.new_zeros(()), delta[0])
        cdf, mass = self._cdf_and_mass(fn, labels)
        return -_stop(delta) * cdf / _stop(mass)

    def variable_nabla(self, fn, value):
        """``g_{p_j}(y) = −1{j ≤ y}/p_y``, shape ``[*batch, K]``, treating the ``p_j``
        as free coordinates (the constraint ``Σ p = 1`` acts through the logits)."""
        probs = _stop(_categorical_probs(fn))
        labels = self._labels(value)
        mass = probs.expand(labels.shape + probs.shape[-1:]).gather(-1, labels.unsqueeze(-1))
        below = torch.arange(probs.shape[-1], device=probs.device) <= labels.unsqueeze(-1)
        return {"probs": -below.to(probs.dtype) / mass}


class OneHotCategoricalRaw(_OneHotEncoding, CategoricalRaw):
    """``OneHotCategorical(p)`` in the raw GO form (see :class:`CategoricalRaw`)."""


class CategoricalLocal(_LabelEncoding, DiscreteRule):
    """``Categorical(p)`` in the local form: ``∇E[f] = E[Σ_v Σ_k ∇p_{vk} f(y_{−v}, k)]``
    (the finite-support analogue of eq. 34).  ``K − 1`` alternatives per element;
    ``Σ_k ∇p_{vk} = 0`` lets ``f(y)`` serve as the baseline.  ``variable_nabla`` and
    ``carrier`` are those of the raw form (:attr:`raw_form`)."""

    raw_form: DiscreteRule = CategoricalRaw()

    def num_alternatives(self, fn):
        return _categorical_probs(fn).shape[-1] - 1

    def _shifted_labels(self, fn, value):
        num_categories = _categorical_probs(fn).shape[-1]
        labels = self._labels(value)
        shifts = torch.arange(1, num_categories, device=value.device)
        return (labels + shifts.reshape((-1,) + (1,) * labels.dim())) % num_categories

    def alternatives(self, fn, value):
        return self._encode(self._shifted_labels(fn, value), value)

    def surrogate(self, fn, value, delta):
        probs = _categorical_probs(fn)
        alternative = self._shifted_labels(fn, value)
        probs = probs.expand(alternative.shape[1:] + probs.shape[-1:])
        probs = probs.unsqueeze(0).expand(alternative.shape + probs.shape[-1:])
        alternative_probs = probs.gather(-1, alternative.unsqueeze(-1)).squeeze(-1)
        possible = _stop(alternative_probs) > 0
        delta = torch.where(possible, delta, delta.new_zeros(()))
        return _stop(delta) * alternative_probs

    def variable_nabla(self, fn, value):
        return self.raw_form.variable_nabla(fn, value)

    def carrier(self, fn, value):
        return self.raw_form.carrier(fn, value)


class OneHotCategoricalLocal(_OneHotEncoding, CategoricalLocal):
    """``OneHotCategorical(p)`` in the local form (see :class:`CategoricalLocal`)."""

    raw_form: DiscreteRule = OneHotCategoricalRaw()


def is_count_support(support) -> bool:
    """Whether a support is a subset of ``{0, 1, 2, ...}`` starting at 0."""
    if support is constraints.boolean:
        return True
    if isinstance(support, (constraints.integer_interval, type(constraints.nonnegative_integer))):
        lower = support.lower_bound
        return bool(torch.all(torch.as_tensor(lower) == 0))
    return False

"""Control variates of :class:`~numpyro_go.infer.trace_relax_elbo.TraceRELAX_ELBO` (the
NumPyro twin of :mod:`pyro_go.infer.control_variates`).

A control variate ``c(ζ)`` of a RELAX site ``s`` is a cost of the site's *slice shape*
(its batch shape with size 1 at every dim that is not a slice dim, see
:class:`RelaxSite`), differentiable in the relaxed sample ``ζ`` and in its own
parameters.  The estimator on the logits ``l`` of ``s`` (RELAX eqs. 8–9) is

    ĝ = [f(b) − c(z̃)] ∂_l log q(b) + ∂_l c(z) − ∂_l c(z̃),

unbiased for any such ``c``; its parameters are trained to minimise ``Σ ĝ²`` (eq. 10).

* :class:`REBAR` — ``c(ζ) = η F_s(σ_λ(ζ))``, the cost at the Concrete relaxation [2];
* :class:`RELAX` — ``c(ζ) = r_ψ(ζ, *guide_args, **guide_kwargs)``, a learned network,
  plus REBAR's term when ``rebar=True`` [1];
* :class:`Baseline` — ``c = b_ψ(*guide_args, **guide_kwargs)``, no ``ζ``: the
  score-function estimator with a learned baseline.

NumPyro's :class:`~numpyro.infer.SVI` collects parameters only from the model and guide
traces, so each control variate *declares* its parameters inside the guide that
:meth:`TraceRELAX_ELBO.wrap_guide` returns (:meth:`ControlVariate.declare`), and the loss
reads their current values back from that guide's trace.  Parameter names, per site
``s``: ``f"{s}.relax_eta"``, ``f"{s}.relax_temperature"`` (positive),
``f"{s}.relax_network"`` and ``f"{s}.relax_baseline"`` (a scalar, or a module);
:func:`numpyro.module` stores a module's parameters at ``name + "$params"``.

**References**

[1] Will Grathwohl, Dami Choi, Yuhuai Wu, Geoffrey Roeder, David Duvenaud (2018).
    *Backpropagation through the Void: Optimizing Control Variates for Black-Box
    Gradient Estimation.* ICLR 2018.

[2] George Tucker, Andriy Mnih, Chris J. Maddison, Dieterich Lawson, Jascha
    Sohl-Dickstein (2017). *REBAR: Low-Variance, Unbiased Gradient Estimates for
    Discrete Latent Variable Models.* NeurIPS 2017.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from math import prod

import jax
import jax.numpy as jnp
import numpyro
from jax.example_libraries import stax
from numpyro.distributions import constraints

from numpyro_go.ops.relaxation import relaxed_bernoulli, relaxed_one_hot

#: the kinds of RELAX sites: Bernoulli, index Categorical, one-hot categorical
#: (``Multinomial(total_count=1)``, NumPyro's ``OneHotCategorical``)
SITE_KINDS = ("bernoulli", "categorical", "one_hot")


@dataclass(frozen=True)
class RelaxSite:
    """The layout of one RELAX site, as a control variate sees it.

    :param str name: the guide site's name.
    :param str kind: ``"bernoulli"``, ``"categorical"`` (index) or ``"one_hot"``.
    :param tuple noise_shape: the shape of the logits, the noise ``u, v`` and ``ζ``: the
        site's batch and event shape, then ``K`` for a Categorical.
    :param tuple batch_shape: the site's batch shape (the leading dims of
        ``noise_shape``).
    :param frozenset kept_dims: the *slice dims*: negative batch dims of the plates in
        which every model term that depends on the site also lies.
    :param dtype: the logits' dtype.
    """

    name: str
    kind: str
    noise_shape: tuple[int, ...]
    batch_shape: tuple[int, ...]
    kept_dims: frozenset[int]
    dtype: object = jnp.float32

    def param_name(self, suffix: str) -> str:
        """``f"{name}.relax_{suffix}"``."""
        return f"{self.name}.relax_{suffix}"

    @property
    def _kept_axes(self) -> list[int]:
        ndim = len(self.batch_shape)
        return [axis for axis in range(ndim) if axis - ndim in self.kept_dims]

    @property
    def slice_shape(self) -> tuple[int, ...]:
        """The batch shape with size 1 at every dim that is not a slice dim."""
        ndim = len(self.batch_shape)
        return tuple(
            size if axis - ndim in self.kept_dims else 1
            for axis, size in enumerate(self.batch_shape)
        )

    @property
    def num_features(self) -> int:
        """``D``: the number of entries of ``ζ`` per slice (coupled plate dims, event dims
        and the categorical ``K`` dim, flattened)."""
        return prod(self.noise_shape) // max(prod(self.slice_shape), 1)

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """``(*slice sizes, D)``: the shape of :meth:`features`."""
        return tuple(self.batch_shape[a] for a in self._kept_axes) + (self.num_features,)

    def features(self, zeta: jax.Array) -> jax.Array:
        """``ζ`` with its slice dims first and every other dim flattened to ``D``."""
        axes = self._kept_axes
        zeta = jnp.moveaxis(zeta, axes, list(range(len(axes))))
        return jnp.reshape(zeta, self.feature_shape)

    def to_slice(self, value: jax.Array, what: str) -> jax.Array:
        """``value`` as a slice-shaped cost: reshaped if it has one entry per slice (e.g.
        a network's ``(*slice sizes, 1)`` output), else broadcast."""
        value = jnp.asarray(value)
        if value.size == prod(self.slice_shape):
            return jnp.reshape(value, self.slice_shape)
        try:
            return jnp.broadcast_to(value, self.slice_shape)
        except ValueError:
            raise ValueError(
                f"TraceRELAX_ELBO: the {what} of site '{self.name}' returned shape "
                f"{value.shape}, which neither has one entry per slice nor broadcasts to "
                f"the slice shape {self.slice_shape}"
            ) from None

    def relax(self, zeta: jax.Array, temperature: jax.Array) -> jax.Array:
        """``σ_λ(ζ)`` (Bernoulli) or ``softmax(ζ / λ)`` (one-hot)."""
        if self.kind == "bernoulli":
            return relaxed_bernoulli(zeta, temperature)
        if self.kind == "one_hot":
            return relaxed_one_hot(zeta, temperature)
        raise ValueError(
            f"TraceRELAX_ELBO: guide site '{self.name}' is an index Categorical, which "
            "cannot hold the relaxed (one-hot) value that REBAR's control variate feeds "
            "the model. Write the site (in model and guide) as the one-hot "
            "dist.Multinomial(total_count=1, logits=...), or use RELAX(rebar=False) or "
            "Baseline, which never evaluate the model at a relaxed value."
        )


def default_network() -> tuple[Callable, Callable]:
    """The default ``r_ψ``: ``D → 10 tanh → 1`` (the RELAX toy's network), a stax pair."""
    return stax.serial(stax.Dense(10), stax.Tanh, stax.Dense(1))


def _guide_inputs(args: tuple, name: str, what: str):
    if not args:
        raise ValueError(
            f"TraceRELAX_ELBO: the {what} of site '{name}' is a network of the guide's "
            "arguments, but the guide takes no positional arguments."
        )
    return args[0] if len(args) == 1 else tuple(args)


def _input_shape(inputs):
    if isinstance(inputs, tuple):
        return tuple(jnp.shape(x) for x in inputs)
    return jnp.shape(inputs)


class ControlVariate:
    """The interface of a control variate ``c`` of :class:`TraceRELAX_ELBO`.

    Subclasses implement :meth:`param_names`, :meth:`declare` and :meth:`__call__`.
    """

    #: whether ``c`` depends on ``ζ`` (``False``: ``∂c(z) − ∂c(z̃)`` is zero and skipped)
    depends_on_zeta = True
    #: whether ``c`` evaluates the model at a relaxed value (not possible for an index
    #: Categorical site)
    needs_relaxed_value = False
    #: whether the shapes of the parameters depend on the site's slice dims (then
    #: :meth:`TraceRELAX_ELBO.wrap_guide` may need the model to find them)
    shapes_depend_on_slices = False

    def param_names(self, site: RelaxSite) -> tuple[str, ...]:
        """The names of the param sites (as recorded in the guide's trace) that
        :meth:`__call__` reads."""
        raise NotImplementedError

    def declare(self, site: RelaxSite, args: tuple, kwargs: dict) -> None:
        """Declare the parameters of site ``site`` with :func:`numpyro.param` /
        :func:`numpyro.module`; called inside the guide of
        :meth:`TraceRELAX_ELBO.wrap_guide`."""
        raise NotImplementedError

    def __call__(
        self,
        params: dict,
        site: RelaxSite,
        zeta: jax.Array | None,
        relaxed_cost: Callable[[jax.Array], jax.Array],
        args: tuple,
        kwargs: dict,
    ) -> jax.Array:
        """``c(ζ)`` of slice shape.

        :param dict params: the values of :meth:`param_names`.
        :param zeta: ``z`` or ``z̃`` (shape ``site.noise_shape``); ``None`` for control
            variates that do not depend on it.
        :param relaxed_cost: ``value ↦ F_s(value)``, the site's cost per slice at a
            (relaxed) value of the site.
        """
        raise NotImplementedError


class REBAR(ControlVariate):
    """REBAR's control variate [2]: ``c(ζ) = η F_s(σ_λ(ζ))``, the site's cost at its
    Concrete relaxation, with ``η`` and the temperature ``λ`` trained on the variance.

    :param float eta: initial ``η`` (param ``f"{s}.relax_eta"``, unconstrained).
    :param float temperature: initial ``λ`` (param ``f"{s}.relax_temperature"``,
        positive).
    """

    needs_relaxed_value = True

    def __init__(self, eta: float = 1.0, temperature: float = 0.5) -> None:
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature!r}")
        self.eta = eta
        self.temperature = temperature

    def param_names(self, site: RelaxSite) -> tuple[str, ...]:
        return (site.param_name("eta"), site.param_name("temperature"))

    def declare(self, site: RelaxSite, args: tuple, kwargs: dict) -> None:
        numpyro.param(site.param_name("eta"), jnp.asarray(self.eta, site.dtype))
        numpyro.param(
            site.param_name("temperature"),
            jnp.asarray(self.temperature, site.dtype),
            constraint=constraints.positive,
        )

    def __call__(self, params, site, zeta, relaxed_cost, args, kwargs):
        eta = params[site.param_name("eta")]
        temperature = params[site.param_name("temperature")]
        return eta * relaxed_cost(site.relax(zeta, temperature))

    def __repr__(self) -> str:
        return f"REBAR(eta={self.eta!r}, temperature={self.temperature!r})"


class RELAX(ControlVariate):
    """RELAX's learned control variate [1]: ``c(ζ) = r_ψ(ζ, *guide_args, **guide_kwargs)``,
    plus REBAR's ``η F_s(σ_λ(ζ))`` when ``rebar=True`` ("relaxed REBAR", the paper's
    choice for its discrete VAEs).

    ``r_ψ`` sees ``ζ`` per slice: the dims that are not slice dims (coupled plate dims,
    event dims, the categorical ``K`` dim) flattened to ``D`` features,
    ``features.shape == (*slice sizes, D)`` (:meth:`RelaxSite.features`).  Its output
    (e.g. ``(*slice sizes, 1)``) is reshaped to the slice shape.  A custom network must
    keep slices apart, its output for a slice depending on that slice's features only
    (as a stack of dense layers does): the estimator pairs each slice's score with that
    slice's cost, which is unbiased only if ``c`` of one slice ignores the others.

    :param network: a :mod:`jax.example_libraries.stax` pair ``(init_fn, apply_fn)``, as
        :func:`numpyro.module` takes (param ``f"{s}.relax_network"``, one per site).
        It is applied to the features alone when the guide takes no positional
        arguments, else to the tuple ``(features, *guide_args)`` (stax's convention for
        several inputs, e.g. ``stax.serial(stax.FanInConcat(-1), ...)``), with the
        guide's keyword arguments as keyword arguments.  Default: ``D → 10 tanh → 1``
        on the features alone.
    :param bool rebar: add REBAR's term (params ``eta``, ``temperature``).
    :param float eta: initial ``η`` of REBAR's term.
    :param float temperature: initial ``λ`` of REBAR's term.
    """

    shapes_depend_on_slices = True

    def __init__(
        self,
        network: tuple[Callable, Callable] | None = None,
        rebar: bool = False,
        eta: float = 1.0,
        temperature: float = 0.5,
    ) -> None:
        self.network = network
        self.rebar = REBAR(eta, temperature) if rebar else None
        self.needs_relaxed_value = rebar

    def _network(self):
        return default_network() if self.network is None else self.network

    def _inputs(self, site: RelaxSite, features, args):
        if self.network is None or not args:
            return features
        return (features, *args)

    def param_names(self, site: RelaxSite) -> tuple[str, ...]:
        names = (site.param_name("network") + "$params",)
        return names + (self.rebar.param_names(site) if self.rebar else ())

    def declare(self, site: RelaxSite, args: tuple, kwargs: dict) -> None:
        features = jax.ShapeDtypeStruct(site.feature_shape, site.dtype)
        inputs = self._inputs(site, features, args)
        numpyro.module(site.param_name("network"), self._network(), _input_shape(inputs))
        if self.rebar:
            self.rebar.declare(site, args, kwargs)

    def __call__(self, params, site, zeta, relaxed_cost, args, kwargs):
        network_params = params[site.param_name("network") + "$params"]
        if self.network is None:
            expected = network_params[0][0].shape[0]
            if expected != site.num_features:
                raise ValueError(
                    f"TraceRELAX_ELBO: the default network of site '{site.name}' was "
                    f"initialised for D = {expected} features per slice, but the site has "
                    f"D = {site.num_features} (slice dims {sorted(site.kept_dims)}: a "
                    "plate of the site is coupled by a model term outside it). Wrap the "
                    "guide with the model, elbo.wrap_guide(guide, model), so that the "
                    "network is initialised with the model's slice dims."
                )
        _, apply_fn = self._network()
        inputs = self._inputs(site, site.features(zeta), args)
        network_kwargs = {} if self.network is None else kwargs
        cost = site.to_slice(apply_fn(network_params, inputs, **network_kwargs), "network")
        if self.rebar:
            cost = cost + self.rebar(params, site, zeta, relaxed_cost, args, kwargs)
        return cost

    def __repr__(self) -> str:
        rebar = (
            f", rebar=True, eta={self.rebar.eta!r}, temperature={self.rebar.temperature!r}"
            if self.rebar
            else ""
        )
        network = "default" if self.network is None else "custom"
        return f"RELAX(network={network}{rebar})"


class Baseline(ControlVariate):
    """A learned baseline: ``c = b_ψ(*guide_args, **guide_kwargs)``, independent of ``ζ``,
    so that the estimator is the score function ``[f(b) − b_ψ] ∂ log q(b)`` (no relaxation
    at all; the variance objective trains ``b_ψ`` towards ``E[f | slice]``-like values).

    :param network: ``None`` (default): one learned scalar per site, param
        ``f"{s}.relax_baseline"``, initialised at 0.  Otherwise a stax pair applied to
        the guide's first positional argument (or the tuple of all of them, when there
        are several), with the guide's keyword arguments as keyword arguments; its
        output has one entry per slice or broadcasts to the slice shape.
    """

    depends_on_zeta = False

    def __init__(self, network: tuple[Callable, Callable] | None = None) -> None:
        self.network = network

    def param_names(self, site: RelaxSite) -> tuple[str, ...]:
        name = site.param_name("baseline")
        return (name,) if self.network is None else (name + "$params",)

    def declare(self, site: RelaxSite, args: tuple, kwargs: dict) -> None:
        name = site.param_name("baseline")
        if self.network is None:
            numpyro.param(name, jnp.zeros((), site.dtype))
        else:
            inputs = _guide_inputs(args, site.name, "baseline")
            numpyro.module(name, self.network, _input_shape(inputs))

    def __call__(self, params, site, zeta, relaxed_cost, args, kwargs):
        if self.network is None:
            return site.to_slice(params[site.param_name("baseline")], "baseline")
        _, apply_fn = self.network
        inputs = _guide_inputs(args, site.name, "baseline")
        output = apply_fn(params[site.param_name("baseline") + "$params"], inputs, **kwargs)
        return site.to_slice(output, "baseline network")

    def __repr__(self) -> str:
        return f"Baseline(network={'scalar' if self.network is None else 'custom'})"


__all__ = ["REBAR", "RELAX", "Baseline", "ControlVariate", "RelaxSite", "default_network"]

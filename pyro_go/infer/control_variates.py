"""Control variates of :class:`~pyro_go.infer.TraceRELAX_ELBO`: REBAR, RELAX and a learned
baseline behind one interface.

A control variate is a cost ``c(ζ)`` per independent slice of a site, evaluated at the
reparameterised noise ``z`` and at the conditional sample ``z̃``.  Its parameters live in
Pyro's param store under ``"<site>.relax_<name>"``, so :class:`~pyro.infer.SVI` updates
them with the user's optimizer, on the gradient of the estimator's single-sample variance
(RELAX paper, eq. 10).

The param store is the source of truth: networks are registered with
``pyro.module(..., update_module_params=True)``, so weights found there (e.g. after
:meth:`~pyro.params.param_store.ParamStoreDict.load` in a new process, with new
:class:`RELAX` / :class:`Baseline` objects) replace the module's own, and a default
network whose weights are stored is built without drawing random numbers.  A run saved
at step ``k`` and resumed (param store, optimizer state and RNG state restored)
therefore continues exactly as the uninterrupted run.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping

import pyro
import torch
from pyro.params.param_store import param_with_module_name
from torch import nn
from torch.distributions import constraints

from pyro_go.infer.relax_site import RelaxSite

RelaxedCost = Callable[[torch.Tensor], torch.Tensor]


def param_name(site: str, what: str) -> str:
    """The param-store name of a control-variate parameter of ``site``."""
    return f"{site}.relax_{what}"


def _scalar(value: float, like: torch.Tensor) -> Callable[[], torch.Tensor]:
    return lambda: torch.tensor(value, dtype=like.dtype, device=like.device)


def _registered(name: str, network: nn.Module) -> nn.Module:
    """``network`` registered under ``name``, its parameters replaced by those the param
    store already holds under that name (restored after a save and load)."""
    return pyro.module(name, network, update_module_params=True)


def _as_cost(site: RelaxSite, value: torch.Tensor) -> torch.Tensor:
    """A network's output as a per-slice cost (one value per slice, or one for all)."""
    if value.numel() == 1:
        return value.reshape(())
    return value.reshape(site.cost_shape())


class ControlVariate(ABC):
    """``c(ζ)``: a differentiable cost of a site's relaxed noise, one value per slice.

    Any such function keeps RELAX unbiased (eq. 9): ``E[c(z̃) ∂log p(b)] =
    E[∂c(z) − ∂c(z̃)]``.  Subclasses implement :meth:`__call__`; parameters are read with
    :func:`pyro.param` / :func:`pyro.module` inside it.
    """

    #: whether ``c`` depends on ``ζ``; a baseline does not, and its correction
    #: term ``∂c(z) − ∂c(z̃)`` vanishes
    depends_on_noise: bool = True

    @abstractmethod
    def __call__(
        self,
        site: RelaxSite,
        zeta: torch.Tensor,
        relaxed_cost: RelaxedCost,
        args: tuple,
        kwargs: dict,
    ) -> torch.Tensor:
        """The control variate at ``zeta``, shaped ``site.cost_shape()`` (or a scalar).

        :param site: the site, its logits, noise and slice layout.
        :param zeta: ``z`` or ``z̃``, shaped like the site's logits.
        :param relaxed_cost: ``value ↦ F(value)``, the site's cost (``log q`` minus the
            model terms that depend on the site) with the site's value replaced by a
            relaxed one; differentiable in ``value``.
        :param args: the guide's positional arguments.
        :param kwargs: the guide's keyword arguments.
        """


class REBAR(ControlVariate):
    """REBAR's control variate ``c(ζ) = η · f(σ_λ(ζ))`` [1]: the objective itself at the
    Concrete relaxation of the sample, with learned scale ``η`` and temperature ``λ``
    (RELAX paper, eq. 8).  Needs a model that accepts relaxed values at the site
    (Bernoulli or OneHotCategorical consumed by differentiable code).

    :param float eta: initial ``η``.
    :param float temperature: initial ``λ``.

    [1] George Tucker, Andriy Mnih, Chris J. Maddison, Dieterich Lawson, Jascha
        Sohl-Dickstein (2017). *REBAR: Low-variance, unbiased gradient estimates for
        discrete latent variable models.* NeurIPS.
    """

    def __init__(self, eta: float = 1.0, temperature: float = 0.5) -> None:
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.eta = eta
        self.temperature = temperature

    def concrete_term(self, site, zeta, relaxed_cost) -> torch.Tensor:
        """``η · f(σ_λ(ζ))``."""
        eta = pyro.param(param_name(site.name, "eta"), _scalar(self.eta, zeta))
        temperature = pyro.param(
            param_name(site.name, "temperature"),
            _scalar(self.temperature, zeta),
            constraint=constraints.positive,
        )
        return eta * relaxed_cost(site.relaxed(zeta, temperature))

    def __call__(self, site, zeta, relaxed_cost, args, kwargs) -> torch.Tensor:
        return self.concrete_term(site, zeta, relaxed_cost)


class _SliceMLP(nn.Module):
    """``D → hidden → 1`` with ``tanh``, the RELAX toy's network; ignores guide args."""

    @classmethod
    def for_site(cls, name: str, num_features: int, hidden: int, like: torch.Tensor):
        """The default network registered under ``name``: left on the ``meta`` device
        (not initialised, no random numbers drawn) when the param store holds all of its
        weights, which :func:`_registered` then puts in place; else initialised as
        usual, like ``like``."""
        with torch.device("meta"):
            network = cls(num_features, hidden)
        store = pyro.get_param_store()
        shapes = {key: param.shape for key, param in network.named_parameters()}
        stored = {
            key: store[param_with_module_name(name, key)].shape
            for key in shapes
            if param_with_module_name(name, key) in store
        }
        if len(stored) < len(shapes):
            return cls(num_features, hidden).to(like)
        if stored != shapes:
            raise ValueError(
                f"TraceRELAX_ELBO: the param store holds a default RELAX network '{name}' "
                f"of another size ({', '.join(f'{k}: {tuple(v)}' for k, v in stored.items())}) "
                f"than this site needs (hidden={hidden}, {num_features} features per slice). "
                "Use RELAX(hidden=...) as saved, or remove the stored network's "
                "parameters to start it afresh."
            )
        return network

    def __init__(self, num_features: int, hidden: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(num_features, hidden), nn.Tanh(), nn.Linear(hidden, 1)
        )

    def forward(self, features: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self.layers(features).squeeze(-1)


class RELAX(REBAR):
    """RELAX's learned control variate ``c(ζ) = r_ψ(ζ)`` [1], optionally plus REBAR's
    ``η · f(σ_λ(ζ))`` (``rebar=True``: the paper's "relaxed REBAR", its choice for
    VAEs).  Without the REBAR term ``f`` is never evaluated at relaxed values, so the
    model may be a black box.

    :param network: ``r_ψ``: an :class:`~torch.nn.Module` called as
        ``network(features, *guide_args, **guide_kwargs)`` with ``features`` of shape
        ``[*slices, D]`` (:meth:`RelaxSite.features`: the site's independent plate slices
        first, everything else flattened) and returning ``[*slices]``; or a mapping from
        site names to such modules; ``None`` (default) builds ``D → hidden → 1`` with
        ``tanh`` per site on first use.
    :param bool rebar: add REBAR's term.
    :param int hidden: width of the default network.
    :param float eta: initial ``η`` of the REBAR term.
    :param float temperature: initial ``λ`` of the REBAR term.

    [1] Will Grathwohl, Dami Choi, Yuhuai Wu, Geoffrey Roeder, David Duvenaud (2018).
        *Backpropagation through the Void: Optimizing control variates for black-box
        gradient estimation.* ICLR.
    """

    def __init__(
        self,
        network: nn.Module | Mapping[str, nn.Module] | None = None,
        rebar: bool = False,
        hidden: int = 10,
        eta: float = 1.0,
        temperature: float = 0.5,
    ) -> None:
        super().__init__(eta, temperature)
        self.network = network
        self.rebar = rebar
        self.hidden = hidden
        self._default_networks: dict[str, nn.Module] = {}

    def _network_for(self, site: RelaxSite, features: torch.Tensor) -> nn.Module:
        if isinstance(self.network, nn.Module):
            return self.network
        if isinstance(self.network, Mapping):
            if site.name not in self.network:
                raise ValueError(
                    f"TraceRELAX_ELBO: RELAX(network=...) has no network for guide site "
                    f"'{site.name}'; add one to the mapping (it has {sorted(self.network)})."
                )
            return self.network[site.name]
        network = self._default_networks.get(site.name)
        num_features = features.shape[-1]
        if network is None:
            name = param_name(site.name, "network")
            network = _SliceMLP.for_site(name, num_features, self.hidden, features)
            self._default_networks[site.name] = network
        elif network.layers[0].in_features != num_features:
            raise ValueError(
                f"TraceRELAX_ELBO: guide site '{site.name}' now gives the default RELAX "
                f"network {num_features} features per slice instead of "
                f"{network.layers[0].in_features} (a coupled plate changed size). Pass "
                "RELAX(network=...) that accepts a varying size."
            )
        return network

    def __call__(self, site, zeta, relaxed_cost, args, kwargs) -> torch.Tensor:
        features = site.features(zeta)
        name = param_name(site.name, "network")
        network = _registered(name, self._network_for(site, features))
        value = _as_cost(site, network(features, *args, **kwargs))
        if self.rebar:
            value = value + self.concrete_term(site, zeta, relaxed_cost)
        return value


class Baseline(ControlVariate):
    """REINFORCE with a learned baseline: ``c = b_ψ(x)``, independent of the noise, so the
    estimator is ``(f(b) − b_ψ) ∂ log p(b)``, trained like the others on its variance.

    :param network: an :class:`~torch.nn.Module` called as
        ``network(*guide_args, **guide_kwargs)`` and returning one value per slice (or
        one value); a mapping from site names to such modules; or ``None`` (default) for
        one learned constant per site.
    """

    depends_on_noise = False

    def __init__(self, network: nn.Module | Mapping[str, nn.Module] | None = None) -> None:
        self.network = network

    def __call__(self, site, zeta, relaxed_cost, args, kwargs) -> torch.Tensor:
        name = param_name(site.name, "baseline")
        if self.network is None:
            return pyro.param(name, _scalar(0.0, zeta))
        network = self.network[site.name] if isinstance(self.network, Mapping) else self.network
        return _as_cost(site, _registered(name, network)(*args, **kwargs))

"""Hierarchical variational inference for the GO paper's deep count models (section 7.4,
appendix K): a Poisson–Gamma deep exponential family (DEF) and deep latent Dirichlet
allocation (DLDA), as Pyro models with neural inference networks.

Both models explain a count vector ``x`` (e.g. MNIST pixel intensities as counts, see
:func:`pixel_counts`) by a Poisson likelihood ``x ~ Pois(W⁽¹⁾ z⁽¹⁾)`` over layers of
nonnegative Gamma latents.  Their guides are the first-order Markov chains of section 5,
``q(z|x) = q(z⁽¹⁾|x) Π_l q(z⁽ˡ⁾|z⁽ˡ⁻¹⁾)``, built from Gamma sites whose parameters come
from neural networks.  Every guide site is continuous, so :class:`pyro_go.TraceGO_ELBO`
back-propagates through the whole chain by GO's continuous form (implicit
reparameterisation, eq. 9) and statistical back-propagation (Theorem 3), holding the
guide's parameters fixed inside ``log q`` (the "sticking" the paper uses for every
compared method).  ``reparameterized=False`` makes the guide's samples
non-differentiable, so that :class:`pyro.infer.TraceGraph_ELBO` gives the
score-function estimator for comparison.

Matrices are stored transposed with respect to the paper (``W⁽¹⁾`` is ``[K₁, V]``), so
that latents ``z⁽¹⁾ : [N, K₁]`` map to Poisson rates by ``z⁽¹⁾ @ W⁽¹⁾`` and a Dirichlet
over each row is a Dirichlet over each of the paper's columns.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn
from torch.nn import functional as F

#: inference networks read Gamma latents as ``log(1e-5 + z)`` (counts as ``log1p``)
LATENT_OFFSET = 1e-5


def floor_straight_through(value: torch.Tensor, floor: float) -> torch.Tensor:
    """``max(value, floor)`` in the forward pass with the identity's gradient, the way
    the GO authors' released code applies its thresholds (appendix K)."""
    return value + (value.clamp_min(floor) - value).detach()


def pixel_counts(images: np.ndarray, levels: int = 10) -> np.ndarray:
    """Pixel intensities as counts ``round(levels · intensity)`` (float32), for uint8
    images in 0..255 or floats in [0, 1]; the GO authors' code uses ``levels=10``."""
    intensity = images / 255.0 if images.dtype == np.uint8 else images
    return np.round(levels * intensity).astype(np.float32)


class _KeepsRsampleFlag:
    """Carries a per-instance ``has_rsample_(False)`` through ``expand`` (Pyro's plates
    expand a site's distribution and cannot set the flag on ``Independent``)."""

    def expand(self, batch_shape, _instance=None):
        new = super().expand(batch_shape, _instance=_instance)
        new.has_rsample = self.has_rsample
        return new


class _Dirichlet(_KeepsRsampleFlag, dist.Dirichlet):
    """:class:`pyro.distributions.Dirichlet` that keeps ``has_rsample_(False)``."""


class FlooredGamma(_KeepsRsampleFlag, dist.Gamma):
    """A Gamma distribution whose samples are floored at ``floor`` with a straight-through
    gradient (appendix K: ``z⁽ˡ⁾ ≥ T_z``, ``c⁽ˡ⁾ ≥ T_c``).

    Near zero, ``∂ log Gam(z; α, β)/∂z = (α − 1)/z − β`` explodes for small shapes;
    flooring the guide's samples bounds it.  The model scores the floored value with its
    ordinary Gamma density, as the paper does.
    """

    def __init__(self, concentration, rate, floor: float, validate_args=None) -> None:
        self.floor = floor
        super().__init__(concentration, rate, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None) -> FlooredGamma:
        new = self._get_checked_instance(FlooredGamma, _instance)
        new.floor = self.floor
        return super().expand(batch_shape, _instance=new)

    def rsample(self, sample_shape: torch.Size | tuple = ()) -> torch.Tensor:
        return floor_straight_through(super().rsample(sample_shape), self.floor)


class GammaEncoder(nn.Module):
    """One inference network ``u ↦ (shape, rate)`` of a Gamma guide site (``NN_α``,
    ``NN_β`` of section 7.4): a ReLU MLP on ``log(offset + u)``; its outputs pass through
    softplus and are floored at ``min_param`` (straight-through), as in appendix K.

    :param inputs: size of ``u``.
    :param outputs: number of Gamma components.
    :param hidden: hidden layer sizes (``()`` = linear, as in the authors' DEF code).
    :param scalar_rate: one rate per datum shared by all components (appendix K's
        ``NN_βz`` for DLDA, which mimics the Gibbs conditional posterior).
    :param min_param: floor of the shape and rate.
    :param offset: added before the log (``1`` for counts: ``log1p``).
    """

    def __init__(
        self,
        inputs: int,
        outputs: int,
        hidden: Sequence[int] = (),
        *,
        scalar_rate: bool = False,
        min_param: float = 1e-3,
        offset: float = 1.0,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for size in hidden:
            layers += [nn.Linear(inputs, size), nn.ReLU()]
            inputs = size
        self.body = nn.Sequential(*layers)
        self.shape_head = nn.Linear(inputs, outputs)
        self.rate_head = nn.Linear(inputs, 1 if scalar_rate else outputs)
        self.min_param = min_param
        self.offset = offset

    def forward(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(torch.log(u + self.offset))
        shape = floor_straight_through(F.softplus(self.shape_head(h)), self.min_param)
        rate = floor_straight_through(F.softplus(self.rate_head(h)), self.min_param)
        return shape, rate


def _layer_pairs(sizes: Sequence[int]) -> Iterator[tuple[int, int]]:
    """``(K_{l-1}, K_l)`` for each layer ``l`` (``K_0`` = data dimension)."""
    return zip(sizes[:-1], sizes[1:], strict=True)


class _CountModel(nn.Module):
    """What both models share: the data plate, guide-site construction, per-parameter
    learning rates.  Parameters whose name starts with ``global_`` belong to the global
    latents."""

    def __init__(self, name: str, subsample_size: int | None, reparameterized: bool) -> None:
        super().__init__()
        self.name = name
        self.subsample_size = subsample_size
        self.reparameterized = reparameterized

    def _data_plate(self, x: torch.Tensor, num_data: int | None) -> pyro.plate:
        """The data plate: over the rows of ``x`` (subsampled if ``subsample_size`` is
        set), or, when ``x`` is a minibatch of a set of ``num_data`` items, over that
        set, so that local terms are scaled by ``num_data / len(x)``."""
        if num_data is None:
            return pyro.plate("data", x.shape[0], subsample_size=self.subsample_size, dim=-1)
        return pyro.plate("data", num_data, subsample=torch.arange(x.shape[0]), dim=-1)

    def _sample_guide(self, name: str, fn: dist.TorchDistribution, event_dims: int, local: bool):
        """A guide site; with ``reparameterized=False`` its sample is detached (score
        function), and local sites get a decaying-average baseline for
        :class:`~pyro.infer.TraceGraph_ELBO`."""
        infer = {}
        if not self.reparameterized:
            fn.has_rsample_(False)
            if local:
                infer = {"baseline": {"use_decaying_avg_baseline": True}}
        return pyro.sample(name, fn.to_event(event_dims), infer=infer)

    def optim_args(self, local_lr: float = 1e-3, global_lr: float = 1e-2) -> Callable:
        """Per-parameter arguments for :class:`pyro.optim.Adam`: ``global_lr`` for the
        parameters of the global latents (the authors' code also gives them much larger
        steps than the inference networks), ``local_lr`` for everything else."""
        prefix = f"{self.name}.global_"

        def args(param_name: str) -> dict:
            return {"lr": global_lr if param_name.startswith(prefix) else local_lr}

        return args


class PoissonGammaDEF(_CountModel):
    """The Poisson–Gamma deep exponential family of section 7.4 and appendix K::

        x ~ Pois(W⁽¹⁾ z⁽¹⁾),   z⁽ˡ⁾ ~ Gam(α_z, α_z / (W⁽ˡ⁺¹⁾ z⁽ˡ⁺¹⁾)),   z⁽ᴸ⁾ ~ Gam(α_z, α_z),
        W⁽ˡ⁾ ~ Gam(α₀, β₀)

    (``Gam(shape, rate)``, so ``E[z⁽ˡ⁾ | z⁽ˡ⁺¹⁾] = W⁽ˡ⁺¹⁾ z⁽ˡ⁺¹⁾``) with the paper's
    ``α_z = 0.1``, ``α₀ = 0.3``, ``β₀ = 0.1``, and the guide::

        q(z|x): z⁽¹⁾ ~ Gam(NN⁽¹⁾_α(x), NN⁽¹⁾_β(x)),  z⁽ˡ⁾ ~ Gam(NN⁽ˡ⁾_α(z⁽ˡ⁻¹⁾), NN⁽ˡ⁾_β(z⁽ˡ⁻¹⁾)),
        q(W):   W⁽ˡ⁾ ~ Gam(α_W⁽ˡ⁾, β_W⁽ˡ⁾).

    Guide parameters are floored at ``min_param`` (as in the authors' code) and guide
    samples at ``min_value``.  The default ``min_value`` only catches float32 underflow:
    a floor that binds often (the authors' code uses 1e-5) changes the objective, since a
    floored sample is scored with the Gamma density, and the ELBO estimate becomes
    optimistic (an optimiser can then gain by pushing mass onto the floor; see
    :class:`DeepLDA`).  Sites: ``w1 … wL`` (global), ``z1 … zL`` (in the data plate),
    observed ``x``.

    :param pixels: dimension ``V`` of ``x`` (784 for MNIST).
    :param layers: ``K₁, …, K_L`` (the paper's DEF: 128, 64).
    :param hidden: hidden sizes of every inference network.
    :param init_weight: initial mean of ``q(W)`` (its shape starts at 1); the
        variational parameters of ``q(W)`` are log shapes and log rates.
    :param subsample_size: subsample the data plate inside ``model``/``guide``.
    :param reparameterized: ``False`` detaches the guide's samples (score function).
    :param name: the :func:`pyro.module` name of the parameters.
    """

    def __init__(
        self,
        pixels: int = 784,
        layers: Sequence[int] = (128, 64),
        hidden: Sequence[int] = (),
        *,
        alpha_z: float = 0.1,
        alpha_0: float = 0.3,
        beta_0: float = 0.1,
        min_value: float = 1e-30,
        min_param: float = 1e-3,
        init_weight: float = 0.01,
        subsample_size: int | None = None,
        reparameterized: bool = True,
        name: str = "def",
    ) -> None:
        super().__init__(name, subsample_size, reparameterized)
        self.sizes = [pixels, *layers]
        self.alpha_z, self.alpha_0, self.beta_0 = alpha_z, alpha_0, beta_0
        self.min_value, self.min_param = min_value, min_param
        self.encoders = nn.ModuleList(
            GammaEncoder(v, k, hidden, min_param=min_param, offset=1.0 if i == 0 else LATENT_OFFSET)
            for i, (v, k) in enumerate(_layer_pairs(self.sizes))
        )
        # log shape and log rate of q(W⁽ˡ⁾), W⁽ˡ⁾ : [K_l, K_{l-1}]; shape 1, mean init_weight
        self.global_log_shape = nn.ParameterList(
            nn.Parameter(torch.zeros(k, v)) for v, k in _layer_pairs(self.sizes)
        )
        self.global_log_rate = nn.ParameterList(
            nn.Parameter(torch.full((k, v), -math.log(init_weight)))
            for v, k in _layer_pairs(self.sizes)
        )

    def model(self, x: torch.Tensor, num_data: int | None = None) -> None:
        """``p(x, z, W)`` for counts ``x : [N, V]`` (a minibatch of ``num_data`` items if
        given)."""
        pyro.module(self.name, self)
        prior = dist.Gamma(x.new_tensor(self.alpha_0), x.new_tensor(self.beta_0))
        weights = [
            pyro.sample(f"w{layer}", prior.expand([k, v]).to_event(2))
            for layer, (v, k) in enumerate(_layer_pairs(self.sizes), start=1)
        ]
        alpha = x.new_tensor(self.alpha_z)
        with self._data_plate(x, num_data) as index:
            mean = x.new_ones(self.sizes[-1])
            for layer in reversed(range(len(weights))):
                z = pyro.sample(f"z{layer + 1}", dist.Gamma(alpha, alpha / mean).to_event(1))
                mean = z @ weights[layer]
            pyro.sample("x", dist.Poisson(mean).to_event(1), obs=x.index_select(0, index))

    def guide(self, x: torch.Tensor, num_data: int | None = None) -> None:
        """``q(W) q(z|x)``: Gamma sites, the ``z`` chain driven by the inference nets."""
        pyro.module(self.name, self)
        for layer, (shape, rate) in enumerate(self._global_params(), start=1):
            self._sample_guide(f"w{layer}", FlooredGamma(shape, rate, self.min_value), 2, False)
        with self._data_plate(x, num_data) as index:
            u = x.index_select(0, index)
            for layer, encoder in enumerate(self.encoders, start=1):
                fn = FlooredGamma(*encoder(u), self.min_value)
                u = self._sample_guide(f"z{layer}", fn, 1, True)

    def _global_params(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for log_shape, log_rate in zip(self.global_log_shape, self.global_log_rate, strict=True):
            yield (
                floor_straight_through(log_shape.exp(), self.min_param),
                floor_straight_through(log_rate.exp(), self.min_param),
            )

    @torch.no_grad()
    def weights(self) -> list[torch.Tensor]:
        """``E_q[W⁽ˡ⁾]`` for each layer, ``[K_l, K_{l-1}]``."""
        return [shape / rate for shape, rate in self._global_params()]

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Poisson rates ``ẑ⁽¹⁾ @ E_q[W⁽¹⁾]`` with ``ẑ⁽¹⁾ ~ q(z⁽¹⁾|x)`` (one sample)."""
        z1 = dist.Gamma(*self.encoders[0](x)).sample()
        return z1 @ self.weights()[0]


class DeepLDA(_CountModel):
    """Deep latent Dirichlet allocation (the Poisson gamma belief network) of section 7.4
    and eq. 37 of appendix K::

        x ~ Pois(Φ⁽¹⁾ z⁽¹⁾),   z⁽ˡ⁾ ~ Gam(Φ⁽ˡ⁺¹⁾ z⁽ˡ⁺¹⁾, c⁽ˡ⁺¹⁾),   z⁽ᴸ⁾ ~ Gam(r, c⁽ᴸ⁺¹⁾),
        Φ⁽ˡ⁾ ~ Dir(η₀),   c⁽ˡ⁾ ~ Gam(e₀, f₀)

    with the guide of appendix K::

        q(z, c|x): z⁽¹⁾ ~ Gam(NN⁽¹⁾_αz(x), NN⁽¹⁾_βz(x)),
                   z⁽ˡ⁾ ~ Gam(NN⁽ˡ⁾_αz(z⁽ˡ⁻¹⁾), NN⁽ˡ⁾_βz(z⁽ˡ⁻¹⁾)),
                   c⁽ˡ⁺¹⁾ ~ Gam(NN⁽ˡ⁺¹⁾_αc(z⁽ˡ⁾), NN⁽ˡ⁺¹⁾_βc(z⁽ˡ⁾))
        q(Φ):      Φ⁽ˡ⁾ ~ Dir(η⁽ˡ⁾)

    where ``NN_βz`` is one rate per datum (appendix K) and ``c⁽ˡ⁾`` is one scalar per
    datum.  The columns of ``Φ⁽ˡ⁾`` (rows here) are topics on the simplex.
    ``phi="param"`` point-estimates the ``Φ⁽ˡ⁾`` instead (maximum likelihood, no prior
    and no guide site).  Like the authors' released code, ``r`` is fixed (``top_shape``)
    rather than inferred.

    Appendix K's stabilising tricks: ``z⁽ˡ⁾ ≥ T_z = 1e-5`` and ``c⁽ˡ⁾ ≥ T_c = 1e-5``
    (the guide's samples are floored), ``Φ⁽ˡ⁺¹⁾ z⁽ˡ⁺¹⁾ ≥ T_α = 0.2`` (the Gamma shapes in
    the model are floored), all with straight-through gradients; and "a factor to
    compromise the likelihood and prior": ``prior_weight`` scales the terms of the upper
    layers (``z⁽ˡ⁾``, ``l ≥ 2``, every ``c`` and ``Φ⁽ˡ⁾``, ``l ≥ 2``) in model and guide
    (``1`` = the plain ELBO; the authors' code uses 0.1).  Guide parameters are floored
    at ``min_param``.

    The floors change the objective where they bind: a floored sample is scored with the
    Gamma density although its law has an atom at the floor, so the ELBO estimate is
    optimistic by an amount that grows with the fraction of floored samples (after a few
    hundred steps on MNIST, roughly a fifth of ``z⁽¹⁾``), and Pyro's gradient without
    sticking (``Trace_ELBO``) learns to push mass onto the floor.  ``min_value=1e-30``
    turns ``T_z, T_c`` into mere underflow guards.

    Sites: ``phi1 … phiL`` (global, if latent), ``z1 … zL`` and ``c2 … c{L+1}`` (in the
    data plate), observed ``x``.

    :param pixels: dimension ``V`` of ``x``.
    :param layers: ``K₁, …, K_L`` (the paper's DLDA: 128, 64, 32).
    :param hidden: hidden sizes of the ``z`` inference networks.
    :param phi: ``"latent"`` (Dirichlet global latents) or ``"param"`` (point estimates).
    :param subsample_size: subsample the data plate inside ``model``/``guide``.
    :param reparameterized: ``False`` detaches the guide's samples (score function).
    :param name: the :func:`pyro.module` name of the parameters.
    """

    def __init__(
        self,
        pixels: int = 784,
        layers: Sequence[int] = (128, 64, 32),
        hidden: Sequence[int] = (256,),
        *,
        phi: str = "latent",
        eta_0: float = 0.1,
        e_0: float = 1.0,
        f_0: float = 1.0,
        top_shape: float = 0.2,
        min_value: float = 1e-5,
        min_shape: float = 0.2,
        min_param: float = 1e-4,
        prior_weight: float = 1.0,
        subsample_size: int | None = None,
        reparameterized: bool = True,
        name: str = "dlda",
    ) -> None:
        if phi not in ("latent", "param"):
            raise ValueError(f"phi must be 'latent' or 'param', got {phi!r}")
        super().__init__(name, subsample_size, reparameterized)
        self.sizes = [pixels, *layers]
        self.phi = phi
        self.eta_0, self.e_0, self.f_0, self.top_shape = eta_0, e_0, f_0, top_shape
        self.min_value, self.min_shape, self.min_param = min_value, min_shape, min_param
        self.prior_weight = prior_weight
        self.z_encoders = nn.ModuleList(
            GammaEncoder(
                v,
                k,
                hidden,
                scalar_rate=True,
                min_param=min_param,
                offset=1.0 if i == 0 else LATENT_OFFSET,
            )
            for i, (v, k) in enumerate(_layer_pairs(self.sizes))
        )
        self.c_encoders = nn.ModuleList(
            GammaEncoder(k, 1, min_param=min_param, offset=LATENT_OFFSET) for k in layers
        )
        # log Dirichlet concentrations of q(Φ⁽ˡ⁾) (about 1 at first), or logits of the
        # point estimates; Φ⁽ˡ⁾ : [K_l, K_{l-1}], rows on the simplex
        self.global_phi = nn.ParameterList(
            nn.Parameter(0.1 * torch.randn(k, v)) for v, k in _layer_pairs(self.sizes)
        )

    def _upper(self, layer: int):
        """``prior_weight`` scaling for the terms of layer ``layer`` (``c`` and upper
        ``z``/``Φ`` layers), nothing for the first layer's ``z`` and ``Φ``."""
        if layer == 1 or self.prior_weight == 1.0:
            return nullcontext()
        return poutine.scale(scale=self.prior_weight)

    def topics(self) -> list[torch.Tensor]:
        """``E_q[Φ⁽ˡ⁾]`` (or the point estimates) for each layer, ``[K_l, K_{l-1}]``."""
        if self.phi == "param":
            return [torch.softmax(logits, -1) for logits in self.global_phi]
        concentrations = self._concentrations()
        return [eta / eta.sum(-1, keepdim=True) for eta in concentrations]

    def _concentrations(self) -> list[torch.Tensor]:
        return [floor_straight_through(p.exp(), self.min_param) for p in self.global_phi]

    @torch.no_grad()
    def dictionary(self, layer: int) -> torch.Tensor:
        """The layer-``layer`` dictionary atoms projected to the data space,
        ``Φ⁽¹⁾ ⋯ Φ⁽ˡᵃʸᵉʳ⁾`` (paper's layout; here ``[K_layer, V]``, one atom per row), from
        ``E_q[Φ]``, as in Figure 6."""
        atoms = None
        for phi in self.topics()[:layer]:
            atoms = phi if atoms is None else phi @ atoms
        return atoms

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """``x̂ = ẑ⁽¹⁾ @ E_q[Φ⁽¹⁾]`` with ``ẑ⁽¹⁾ ~ q(z⁽¹⁾|x)`` (Figure 12's reconstruction)."""
        shape, rate = self.z_encoders[0](x)
        return dist.Gamma(shape, rate).sample() @ self.topics()[0]

    def model(self, x: torch.Tensor, num_data: int | None = None) -> None:
        """``p(x, z, c, Φ)`` for counts ``x : [N, V]`` (a minibatch of ``num_data``)."""
        pyro.module(self.name, self)
        if self.phi == "param":
            phis = self.topics()
        else:
            phis = []
            for layer, (v, k) in enumerate(_layer_pairs(self.sizes), start=1):
                prior = dist.Dirichlet(x.new_full((v,), self.eta_0)).expand([k])
                with self._upper(layer):
                    phis.append(pyro.sample(f"phi{layer}", prior.to_event(1)))
        c_prior = dist.Gamma(x.new_tensor(self.e_0), x.new_tensor(self.f_0))
        with self._data_plate(x, num_data) as index:
            shape = x.new_full((self.sizes[-1],), self.top_shape)
            for layer in reversed(range(1, len(phis) + 1)):
                with self._upper(layer + 1):
                    c = pyro.sample(f"c{layer + 1}", c_prior)
                with self._upper(layer):
                    z = pyro.sample(f"z{layer}", dist.Gamma(shape, c.unsqueeze(-1)).to_event(1))
                # Φ⁽ˡ⁾ z⁽ˡ⁾: the Gamma shape of z⁽ˡ⁻¹⁾ (floored at T_α), or the Poisson rate
                mean = z @ phis[layer - 1]
                shape = floor_straight_through(mean, self.min_shape)
            pyro.sample("x", dist.Poisson(mean).to_event(1), obs=x.index_select(0, index))

    def guide(self, x: torch.Tensor, num_data: int | None = None) -> None:
        """``q(Φ) q(z, c|x)``: Dirichlet and Gamma sites, the chain driven by the nets."""
        pyro.module(self.name, self)
        if self.phi == "latent":
            for layer, eta in enumerate(self._concentrations(), start=1):
                with self._upper(layer):
                    self._sample_guide(f"phi{layer}", _Dirichlet(eta), 1, False)
        with self._data_plate(x, num_data) as index:
            u = x.index_select(0, index)
            for layer, (z_net, c_net) in enumerate(
                zip(self.z_encoders, self.c_encoders, strict=True), start=1
            ):
                with self._upper(layer):
                    fn = FlooredGamma(*z_net(u), self.min_value)
                    u = self._sample_guide(f"z{layer}", fn, 1, True)
                shape, rate = c_net(u)
                with self._upper(layer + 1):
                    fn = FlooredGamma(shape.squeeze(-1), rate.squeeze(-1), self.min_value)
                    self._sample_guide(f"c{layer + 1}", fn, 0, True)

"""Time per jitted SVI step of the 200-Bernoulli VAE in NumPyro (GO paper, appendix I).

Linear encoder/decoder (``numpyro_go.contrib.DiscreteVAE``), dynamically binarised MNIST,
batch 50, Adam 1e-3, all in one process:

* ``numpyro_go.TraceGO_ELBO`` (generic: ``jax.vmap`` over the 200 flips of every data
  point's latents, batched across the data plate; the decoder's first layer,
  :func:`numpyro_go.nn.Dense`, absorbs the flips) and ``absorb_linear=False``;
* hand-written jitted JAX GO steps (local Bernoulli form eq. 34): the flips stacked with
  ``vmap`` through the decoder (the generic floor), and the flips absorbed by the linear
  decoder as ``h + a_k W_k`` (the GO authors' trick);
* NumPyro's ``Trace_ELBO`` (no gradient for the discrete sites at all: a time
  reference only) and ``TraceGraph_ELBO`` (score function);
* the Pyro backend's ``pyro_go.TraceGO_ELBO`` on the same batches.

Then the encoder-gradient variance of ``TraceGO_ELBO`` and ``TraceGraph_ELBO`` on one
batch.  Run: ``python benchmarks/numpyro_vae_step_time.py [--quick] [--data mnist.npz]``.
"""

from __future__ import annotations

import argparse
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.infer import SVI, Trace_ELBO, TraceGraph_ELBO
from wallclock import median_step_ms

from numpyro_go import TraceGO_ELBO
from numpyro_go.contrib import DiscreteVAE
from pyro_go.datasets import dynamic_binarize, load_mnist

LATENTS, PIXELS = 200, 784


def hand_written_loss(vae: DiscreteVAE, params: dict, key, x, linear_trick: bool):
    """Negative ELBO surrogate of the hand-written GO step in plain JAX (eq. 34): the
    flips stacked through the decoder, or absorbed by its one linear layer."""
    encode, decode = vae.encoder[1], vae.decoder[1]
    logits_q = encode(params["encoder$params"], x)
    probs_q = jax.nn.sigmoid(logits_q)
    z = jax.random.bernoulli(key, jax.lax.stop_gradient(probs_q)).astype(x.dtype)
    prior = dist.Bernoulli(logits=params["prior_logits"])
    guide = dist.Bernoulli(logits=jax.lax.stop_gradient(logits_q))

    def f(latents):
        log_p = dist.Bernoulli(logits=decode(params["decoder$params"], latents)).log_prob(x)
        log_p = log_p.sum(-1) + prior.log_prob(latents).sum(-1)
        return log_p - guide.log_prob(latents).sum(-1)

    f_base = f(z)
    sign = 1 - 2 * z
    if linear_trick:
        ((weight, bias),) = jax.lax.stop_gradient(params["decoder$params"])
        logits = (z @ weight + bias)[:, None, :] + sign[:, :, None] * weight[None]  # [B, L, P]
        likelihood = dist.Bernoulli(logits=logits).log_prob(x[:, None, :]).sum(-1)
        base = dist.Bernoulli(logits=z @ weight + bias).log_prob(x).sum(-1)
        prior_minus_q = sign * (params["prior_logits"] - logits_q)  # z·logit terms flip
        delta = jax.lax.stop_gradient(likelihood - base[:, None] + prior_minus_q)
    else:

        def flipped(index):
            return f(z.at[:, index].set(1 - z[:, index]))

        delta = jax.lax.stop_gradient(jax.vmap(flipped)(jnp.arange(LATENTS)) - f_base).T
    local = sign * delta
    term = jnp.sum(local * probs_q)
    return -(jnp.sum(f_base) + term - jax.lax.stop_gradient(term))


def numpyro_runners(vae, x0, seed: int) -> dict:
    """name -> jitted step callable ``x -> loss`` (state kept inside)."""
    runners = {}
    for name, loss in [
        ("numpyro_go.TraceGO_ELBO", TraceGO_ELBO()),
        ("numpyro_go.TraceGO_ELBO(absorb_linear=False)", TraceGO_ELBO(absorb_linear=False)),
        ("numpyro Trace_ELBO (no discrete gradient)", Trace_ELBO()),
        ("numpyro TraceGraph_ELBO", TraceGraph_ELBO()),
    ]:
        svi = SVI(vae.model, vae.guide, numpyro.optim.Adam(1e-3), loss=loss)
        state = [svi.init(jax.random.PRNGKey(seed), x0)]
        update = jax.jit(svi.update)

        def step(x, state=state, update=update):
            state[0], value = update(state[0], x)
            return value

        runners[name] = step

    svi = SVI(vae.model, vae.guide, numpyro.optim.Adam(1e-3), loss=TraceGO_ELBO())
    params = svi.get_params(svi.init(jax.random.PRNGKey(seed), x0))
    optimizer = numpyro.optim.Adam(1e-3)
    for name, linear_trick in [
        ("hand-written jitted JAX GO, stacked flips", False),
        ("hand-written jitted JAX GO, linear trick", True),
    ]:
        hand = {"state": optimizer.init(params), "key": jax.random.PRNGKey(seed + 1)}

        @partial(jax.jit, static_argnums=3)
        def hand_update(opt_state, key, x, linear_trick):
            key, subkey = jax.random.split(key)
            value, grads = jax.value_and_grad(
                lambda p: hand_written_loss(vae, p, subkey, x, linear_trick)
            )(optimizer.get_params(opt_state))
            return optimizer.update(grads, opt_state), key, value

        def hand_step(x, hand=hand, linear_trick=linear_trick):
            hand["state"], hand["key"], value = hand_update(
                hand["state"], hand["key"], x, linear_trick
            )
            return value

        runners[name] = hand_step
    return runners


def pyro_runner(batch_size: int):
    import pyro
    import torch
    from pyro.infer import SVI as PyroSVI

    import pyro_go
    from pyro_go.contrib import DiscreteVAE as TorchVAE

    pyro.enable_validation(False)
    pyro.clear_param_store()
    vae = TorchVAE()
    svi = PyroSVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), pyro_go.TraceGO_ELBO())
    return lambda x: svi.step(torch.from_numpy(np.array(x)))


def time_steps(runners: dict, batches, steps: int) -> dict[str, float]:
    """Median wall time per step (result blocked on), estimators alternating."""
    return median_step_ms(runners, batches, steps, finish=jax.block_until_ready)


def encoder_gradient_variance(vae, loss, params, x, samples: int) -> float:
    def one(key):
        grads = jax.grad(lambda p: loss.loss(key, p, vae.model, vae.guide, x))(params)
        return jnp.concatenate([jnp.ravel(g) for g in jax.tree.leaves(grads["encoder$params"])])

    keys = jax.random.split(jax.random.PRNGKey(7), samples)
    rows = jax.lax.map(one, keys, batch_size=10)
    return float(jnp.mean(jnp.var(rows, axis=0)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=None, help="mnist.npz (default: bundled subset)")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--variance-samples", type=int, default=100)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.quick:
        args.steps, args.variance_samples = 5, 20
    images = load_mnist(args.data)["x_train"]
    rng = np.random.default_rng(args.seed)

    def batch_stream():
        while True:
            rows = rng.integers(0, images.shape[0], args.batch_size)
            yield jnp.asarray(dynamic_binarize(images[rows], rng))

    batches = batch_stream()
    vae = DiscreteVAE(LATENTS, PIXELS)
    runners = numpyro_runners(vae, next(batches), args.seed)
    runners["pyro_go.TraceGO_ELBO (Pyro backend)"] = pyro_runner(args.batch_size)
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, batch {args.batch_size}")
    times = time_steps(runners, batches, args.steps)
    floor = times["hand-written jitted JAX GO, linear trick"]
    print("\n| estimator | median time per step (ms) | vs hand-written JAX linear trick |")
    print("|---|---|---|")
    for name, ms in times.items():
        print(f"| {name} | {ms:.1f} | {ms / floor:.2f}x |")

    svi = SVI(vae.model, vae.guide, numpyro.optim.Adam(1e-3), loss=TraceGO_ELBO())
    params = svi.get_params(svi.init(jax.random.PRNGKey(args.seed), next(batches)))
    x = next(batches)
    variances = {
        "numpyro_go.TraceGO_ELBO": encoder_gradient_variance(
            vae, TraceGO_ELBO(), params, x, args.variance_samples
        ),
        "numpyro TraceGraph_ELBO": encoder_gradient_variance(
            vae, TraceGraph_ELBO(), params, x, args.variance_samples
        ),
    }
    print(f"\nencoder-gradient variance at initialisation, one batch, {args.variance_samples}")
    print("| estimator | mean variance per coordinate |")
    print("|---|---|")
    for name, value in variances.items():
        print(f"| {name} | {value:.3e} |")


if __name__ == "__main__":
    main()

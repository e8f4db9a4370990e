"""Gradient variance on the GO paper's one-dimensional toys (Figure 2, appendix H), NumPyro.

The toys of ``benchmarks/variance_toys.py`` (``pyro_go.contrib.gradient_toys.TOYS``:
targets ``NB(10, 0.2)``, ``NB(0.5, 0.2)``, ``Gamma(1, 0.5)``, ``Gamma(0.01, 0.5)``; guides
of the same family at a starting point and near the target).  For each, N single-sample
gradients of the loss w.r.t. the unconstrained guide parameters (``log r, logit p`` or
``log α, log β``), jitted and vmapped over keys, with

* ``numpyro_go.TraceGO_ELBO``,
* NumPyro's ``Trace_ELBO`` (pathwise for Gamma; for NB it has *no* score-function term,
  so its mean is wrong: shown to make that visible),
* NumPyro's ``TraceGraph_ELBO`` (score function, no baseline, for NB; pathwise for Gamma),

beside the exact gradient (``exact_kl``, float64).  Runs in float64 (Gamma(0.012)
samples underflow float32).  Run: ``python benchmarks/numpyro_variance_toys.py
[--samples 3000] [--quick]``.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpyro  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
from numpyro.infer import Trace_ELBO, TraceGraph_ELBO  # noqa: E402

from numpyro_go import TraceGO_ELBO  # noqa: E402
from pyro_go.contrib.gradient_toys import TOYS, Toy  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def distribution(toy: Toy, first, second):
    if toy.family == "nb":
        return dist.NegativeBinomialProbs(first, second)
    return dist.Gamma(first, second)


def constrain(toy: Toy, unconstrained: jax.Array) -> dict:
    first = jnp.exp(unconstrained[0])
    second = jax.nn.sigmoid(unconstrained[1]) if toy.family == "nb" else jnp.exp(unconstrained[1])
    return {"first": first, "second": second}


def unconstrain(toy: Toy, values) -> jax.Array:
    first, second = values
    second_u = math.log(second / (1 - second)) if toy.family == "nb" else math.log(second)
    return jnp.array([math.log(first), second_u])


def model_and_guide(toy: Toy):
    def model():
        numpyro.sample("z", distribution(toy, *toy.target))

    def guide():
        first = numpyro.param("first", 1.0)
        second = numpyro.param("second", 0.5)
        numpyro.sample("z", distribution(toy, first, second))

    return model, guide


def draw(elbo, toy: Toy, unconstrained, samples: int, seed: int) -> jax.Array:
    model, guide = model_and_guide(toy)

    def one(key):
        return jax.grad(lambda u: elbo.loss(key, constrain(toy, u), model, guide))(unconstrained)

    keys = jax.random.split(jax.random.PRNGKey(seed), samples)
    return jax.jit(jax.vmap(one))(keys)


def exact_gradient(toy: Toy, unconstrained) -> jax.Array:
    def kl(u):
        params = constrain(toy, u)
        q = distribution(toy, params["first"], params["second"])
        p = distribution(toy, *toy.target)
        if toy.family == "gamma":
            return numpyro.distributions.kl.kl_divergence(q, p)
        k = jnp.arange(0, 200000.0)
        log_q, log_p = q.log_prob(k), p.log_prob(k)
        return jnp.sum(jnp.exp(log_q) * (log_q - log_p))

    return jax.grad(kl)(unconstrained)


def run_toy(toy: Toy, samples: int, seed: int) -> list[str]:
    rows = []
    names = ["log r", "logit p"] if toy.family == "nb" else ["log alpha", "log beta"]
    estimators = {
        "numpyro_go.TraceGO_ELBO": TraceGO_ELBO(),
        "Trace_ELBO": Trace_ELBO(),
        "TraceGraph_ELBO": TraceGraph_ELBO(),
    }
    for setting, values in toy.settings.items():
        unconstrained = unconstrain(toy, values)
        exact = exact_gradient(toy, unconstrained)
        results = {n: draw(e, toy, unconstrained, samples, seed) for n, e in estimators.items()}
        go = results["numpyro_go.TraceGO_ELBO"]
        for index, param in enumerate(names):
            go_var = float(jnp.var(go[:, index]))
            for name, grads in results.items():
                column = grads[:, index]
                stderr = float(jnp.std(column)) / math.sqrt(samples)
                variance = float(jnp.var(column))
                rows.append(
                    f"| {toy.name} | {setting} {values} | {param} | {name} | "
                    f"{float(jnp.mean(column)):+.4f} ± {stderr:.4f} | {variance:.4g} | "
                    f"{variance / go_var:.3g}x |"
                )
            rows.append(
                f"| {toy.name} | {setting} {values} | {param} | exact | "
                f"{float(exact[index]):+.4f} | 0 | |"
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="300 samples, nothing saved")
    args = parser.parse_args()
    samples = 300 if args.quick else args.samples
    start = time.perf_counter()
    lines = [
        f"Single-sample gradient of the loss w.r.t. unconstrained guide parameters, "
        f"{samples} samples per estimator, float64, NumPyro. Last column: variance / "
        "numpyro_go.TraceGO_ELBO's variance.",
        "",
        "| toy | guide (setting, params) | parameter | estimator | mean ± stderr | variance "
        "| variance ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for toy in TOYS:
        lines += run_toy(toy, samples, args.seed)
    lines.append(f"\n({time.perf_counter() - start:.0f} s)")
    print("\n".join(lines))
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "numpyro_variance_toys.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

"""GO against today's peers (DisARM, RLOO, NVIL, RELAX, TraceGraph_ELBO) per CPU second.

Issue 22's budget table: each estimator trains a 200-Bernoulli VAE for the same number
of CPU seconds of this process (``time.process_time``, one thread: the numbers do not
depend on what else the machine runs), then reports the one-sample ELBO on the
validation and test splits and the variance of its encoder gradient (the trace of the
covariance of 20 estimates of the gradient of the mean ELBO per image on one fixed
validation batch, at the row's final parameters; NVIL's is of its own update, whose
learning signal is divided by a running standard deviation).  Two protocols:

* ``linear``: the GO paper's (appendix I): linear encoder and decoder, the fixed
  binarisation of MNIST (``binarized_mnist.npz``), batch 24;
* ``nonlinear``: DisARM's: two 200-unit tanh layers each way, dynamically binarised
  MNIST (``mnist.npz``), batch 100.

Rows: ``pyro_go.TraceGO_ELBO`` and ``numpyro_go.TraceGO_ELBO`` with default settings,
``TraceDisARM_ELBO`` and ``TraceRLOO_ELBO(num_particles=2)`` in both backends (Pyro's
vectorised over the pair, NumPyro's ``vmap``-ed), NVIL (hand-written PyTorch, from
``vae_budget_table.py``), ``pyro_go.TraceRELAX_ELBO(RELAX(rebar=True))`` and Pyro's own
``TraceGraph_ELBO`` with its decaying-average baseline.  Adam 1e-3 everywhere; one
warm-up step per row off the clock (it holds JAX's compilation).

Full table (3 seeds, 10 CPU-minutes per row)::

    python benchmarks/peers_budget_table.py --protocol linear \\
        --data-dir /path/to/data --budget 600 --seeds 0 1 2
    python benchmarks/peers_budget_table.py --protocol nonlinear \\
        --data-dir /path/to/data --budget 600 --seeds 0 1 2

``--quick`` is a smoke run on the bundled subset.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from vae_budget_table import ScoreFunction, evaluate_split, torch_elbo
from wallclock import RESULTS, Curve, cpu_name, plot_curves, train_for_budget

from pyro_go.contrib import DiscreteVAE
from pyro_go.datasets import dynamic_binarize, load_mnist, minibatches

PIXELS = 784
PROTOCOLS = {
    "linear": {"hidden": (), "batch_size": 24, "data": "binarized_mnist.npz"},
    "nonlinear": {"hidden": (200, 200), "batch_size": 100, "data": "mnist.npz"},
}
VARIANCE_DRAWS = 20

#: a runner returns ``step(x)``, ``evaluate(images) -> mean ELBO`` and
#: ``encoder_gradient(x) -> flat numpy vector`` (one estimate)
Runner = tuple[Callable, Callable, Callable]


# ------------------------------------------------------------------------- PyTorch


def _flat(grads) -> np.ndarray:
    return torch.cat([g.reshape(-1) for g in grads]).numpy()


def nvil_runner(args, hidden) -> Runner:
    torch.manual_seed(args.seed)
    vae = DiscreteVAE(hidden=hidden)
    estimator = ScoreFunction(vae, nvil=True)
    optimizer = torch.optim.Adam(estimator.parameters(), lr=args.lr)

    def step(x):
        optimizer.zero_grad()
        estimator.loss(torch.from_numpy(x)).backward()
        optimizer.step()

    def encoder_gradient(x):
        mean, var = estimator.mean, estimator.var  # measuring must not move them
        loss = estimator.loss(torch.from_numpy(x))
        estimator.mean, estimator.var = mean, var
        return _flat(torch.autograd.grad(loss, list(vae.encoder.parameters())))

    return step, _torch_evaluate(vae), encoder_gradient


def _torch_evaluate(vae: DiscreteVAE) -> Callable:
    def evaluate(images: np.ndarray) -> float:
        with torch.no_grad():
            return float(torch_elbo(vae, torch.from_numpy(images)).mean())

    return evaluate


def pyro_runner(make_elbo: Callable, decaying_baseline: bool = False) -> Callable:
    def runner(args, hidden) -> Runner:
        import pyro
        from pyro import poutine
        from pyro.infer import SVI

        pyro.clear_param_store()
        pyro.set_rng_seed(args.seed)
        pyro.enable_validation(False)
        vae = DiscreteVAE(hidden=hidden)
        elbo = make_elbo()
        guide = vae.guide
        if decaying_baseline:
            config = {"baseline": {"use_decaying_avg_baseline": True}}
            guide = poutine.infer_config(vae.guide, lambda msg: config)
        svi = SVI(vae.model, guide, pyro.optim.Adam({"lr": args.lr}), elbo)

        def encoder_gradient(x):
            x = torch.from_numpy(x)
            if hasattr(elbo, "_loss_and_surrogate_loss"):  # Pyro's TraceGraph_ELBO
                loss = elbo._loss_and_surrogate_loss(vae.model, guide, (x,), {})[1]
            else:
                loss = elbo.differentiable_loss(vae.model, guide, x)
            grads = torch.autograd.grad(loss, list(vae.encoder.parameters()))
            return _flat(grads) / len(x)  # SVI's loss sums over the batch

        return lambda x: svi.step(torch.from_numpy(x)), _torch_evaluate(vae), encoder_gradient

    return runner


# ------------------------------------------------------------------------- NumPyro


def numpyro_runner(make_elbo: Callable) -> Callable:
    def runner(args, hidden) -> Runner:
        import jax
        import numpyro
        from jax.flatten_util import ravel_pytree
        from numpyro.infer import SVI, Trace_ELBO

        from numpyro_go.contrib import DiscreteVAE as JaxVAE

        vae = JaxVAE(hidden=hidden)
        elbo = make_elbo()
        svi = SVI(vae.model, vae.guide, numpyro.optim.Adam(args.lr), loss=elbo)
        state = [svi.init(jax.random.PRNGKey(args.seed), np.zeros((args.batch_size, PIXELS)))]
        update = jax.jit(svi.update)
        evaluation = jax.jit(
            lambda key, params, x: -Trace_ELBO().loss(key, params, vae.model, vae.guide, x)
        )

        @jax.jit
        def gradient(key, params, x):
            grads = jax.grad(lambda p: elbo.loss(key, p, vae.model, vae.guide, x))(params)
            return ravel_pytree(grads["encoder$params"])[0]

        keys = iter(jax.random.split(jax.random.PRNGKey(args.seed + 1), 10**6))

        def step(x):
            state[0], loss = update(state[0], x)
            loss.block_until_ready()

        def evaluate(images: np.ndarray) -> float:
            params = svi.get_params(state[0])
            return float(evaluation(next(keys), params, images)) / len(images)

        def encoder_gradient(x):
            # SVI's loss sums over the batch
            return np.asarray(gradient(next(keys), svi.get_params(state[0]), x)) / len(x)

        return step, evaluate, encoder_gradient

    return runner


def _pyro_go():
    from pyro_go import TraceGO_ELBO

    return TraceGO_ELBO()


def _pyro_disarm():
    from pyro_go import TraceDisARM_ELBO

    return TraceDisARM_ELBO(vectorize_particles=True, max_plate_nesting=1)


def _pyro_rloo():
    from pyro_go import TraceRLOO_ELBO

    return TraceRLOO_ELBO(num_particles=2, vectorize_particles=True, max_plate_nesting=1)


def _pyro_relax():
    from pyro_go import RELAX, TraceRELAX_ELBO

    return TraceRELAX_ELBO(RELAX(rebar=True))


def _pyro_tracegraph():
    from pyro.infer import TraceGraph_ELBO

    return TraceGraph_ELBO()


def _numpyro(name: str, **options) -> Callable:
    def make():
        import numpyro_go

        return getattr(numpyro_go, name)(**options)

    return make


ROWS = {
    "pyro_go.TraceGO_ELBO": pyro_runner(_pyro_go),
    "numpyro_go.TraceGO_ELBO": numpyro_runner(_numpyro("TraceGO_ELBO")),
    "pyro_go.TraceDisARM_ELBO": pyro_runner(_pyro_disarm),
    "numpyro_go.TraceDisARM_ELBO": numpyro_runner(_numpyro("TraceDisARM_ELBO")),
    "pyro_go.TraceRLOO_ELBO(2)": pyro_runner(_pyro_rloo),
    "numpyro_go.TraceRLOO_ELBO(2)": numpyro_runner(_numpyro("TraceRLOO_ELBO", num_particles=2)),
    "NVIL (hand-written PyTorch)": nvil_runner,
    "pyro_go.TraceRELAX_ELBO(RELAX(rebar=True))": pyro_runner(_pyro_relax),
    "pyro.infer.TraceGraph_ELBO (decaying-average baseline)": pyro_runner(
        _pyro_tracegraph, decaying_baseline=True
    ),
}


# ------------------------------------------------------------------------- the table


def load(protocol: str, data_dir: str | None) -> dict[str, np.ndarray]:
    """The protocol's images as float32 in [0, 1] (already binary for ``linear``, whose
    binarisation is fixed: :func:`dynamic_binarize` leaves 0/1 images unchanged)."""
    if data_dir is None:
        data = load_mnist()
    else:
        data = load_mnist(Path(data_dir) / PROTOCOLS[protocol]["data"])
    if protocol == "linear":
        if data_dir is None:  # bundled grayscale subset: binarise it once, fixed
            rng = np.random.default_rng(1234)
            return {key: dynamic_binarize(value, rng) for key, value in data.items()}
        return {key: value.astype(np.float32) for key, value in data.items()}
    return data


def gradient_variance(encoder_gradient: Callable, x: np.ndarray) -> float:
    """``tr Cov`` of :data:`VARIANCE_DRAWS` encoder-gradient estimates on batch ``x``."""
    draws = np.stack([encoder_gradient(x) for _ in range(VARIANCE_DRAWS)])
    return float(draws.var(0, ddof=1).sum())


def run_row(name: str, args, data, hidden) -> tuple[Curve, dict[str, float]]:
    step, evaluate, encoder_gradient = ROWS[name](args, hidden)
    rng, eval_rng = np.random.default_rng(args.seed), np.random.default_rng(args.seed + 1)
    batches = (dynamic_binarize(x, rng) for x in minibatches(data["x_train"], args.batch_size, rng))
    step(next(batches))  # warm-up, off the clock: JAX compiles here

    def monitor(evaluate=evaluate, rng=eval_rng) -> dict[str, float]:
        return {"valid (1k)": evaluate_split(evaluate, data["x_valid"][:1000], rng)}

    curve = train_for_budget(
        name, step, batches, args.budget, monitor, args.eval_every, clock=time.process_time
    )
    count = args.eval_images
    final = {
        split: evaluate_split(evaluate, data[f"x_{split}"][:count], eval_rng)
        for split in ("valid", "test")
    }
    fixed = dynamic_binarize(data["x_valid"][: args.batch_size], np.random.default_rng(7))
    final["variance"] = gradient_variance(encoder_gradient, fixed)
    print(table_row(args.seed, curve, final), flush=True)
    return curve, final


def table_row(seed: int, curve: Curve, final: dict[str, float]) -> str:
    return (
        f"| {curve.name} | {seed} | {curve.ms_per_step:.1f} | {curve.steps[-1]} | "
        f"{final['valid']:.1f} | {final['test']:.1f} | {final['variance']:.3g} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--protocol", choices=list(PROTOCOLS), default="linear")
    parser.add_argument("--data-dir", default=None, help="folder of mnist.npz etc.")
    parser.add_argument("--budget", type=float, default=600.0, help="CPU seconds per row")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval-every", type=float, default=60.0)
    parser.add_argument("--eval-images", type=int, default=None, help="default: whole splits")
    parser.add_argument("--rows", nargs="*", default=list(ROWS))
    parser.add_argument("--seeds", type=int, nargs="*", default=[0])
    parser.add_argument("--core", type=int, default=0, help="the CPU core to pin to")
    parser.add_argument("--quick", action="store_true", help="3 s each, bundled subset")
    parser.add_argument("--tag", default="", help="appended to the results files' names")
    args = parser.parse_args()
    # one thread and one core for every row (XLA runs work on its own threads whatever
    # its flags say: only pinning the process makes "one thread" mean one core)
    os.sched_setaffinity(0, [sorted(os.sched_getaffinity(0))[args.core]])
    torch.set_num_threads(1)
    os.environ["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    if args.quick:
        args.budget, args.eval_every, args.data_dir, args.eval_images = 3.0, 3.0, None, 200
    protocol = PROTOCOLS[args.protocol]
    args.batch_size = protocol["batch_size"]
    data = load(args.protocol, args.data_dir)
    results: list[tuple[int, Curve, dict]] = []
    for seed in args.seeds:
        args.seed = seed
        for name in args.rows:
            curve, final = run_row(name, args, data, protocol["hidden"])
            results.append((seed, curve, final))
    layers = "linear" if not protocol["hidden"] else "two 200-unit tanh layers each way"
    binarisation = "fixed" if args.protocol == "linear" else "dynamic"
    evaluated = f"first {args.eval_images}" if args.eval_images else "all"
    lines = [
        f"200-Bernoulli VAE, {layers}, {binarisation} binarisation of MNIST "
        f"({len(data['x_train'])} train images), batch {args.batch_size}, Adam {args.lr}, "
        f"{args.budget:.0f} CPU seconds of training per row (time.process_time, one thread "
        f"of {cpu_name()}), seeds {args.seeds}. One-sample ELBO on the {evaluated} "
        "validation and test images; encoder-gradient variance: tr Cov of "
        f"{VARIANCE_DRAWS} estimates of the gradient of the mean ELBO per image on one "
        "validation batch at the row's final parameters (NVIL: of its update, whose "
        "learning signal is divided by a running standard deviation).",
        "",
        "| estimator | seed | CPU ms per step | steps | valid ELBO | test ELBO "
        "| encoder grad variance |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [table_row(seed, curve, final) for seed, curve, final in results]
    print("\n".join(lines))
    if not args.quick:
        stem = f"peers_budget_{args.protocol}" + (f"_{args.tag}" if args.tag else "")
        (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
        plot_curves(
            [curve for seed, curve, _ in results if seed == args.seeds[0]],
            {"valid (1k)": "-"},
            f"{args.protocol} VAE, batch {args.batch_size}: validation ELBO (1k images), "
            f"seed {args.seeds[0]}",
            RESULTS / f"{stem}.png",
        )


if __name__ == "__main__":
    main()

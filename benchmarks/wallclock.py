"""Shared by the wall-clock benchmarks (``vae_wallclock.py``, ``def_wallclock.py``,
``vae_budget_table.py``): train for a fixed budget of seconds with evaluations off the
clock, report the curves as a PNG plot, and name the CPU the numbers came from."""

from __future__ import annotations

import platform
import statistics
import sys
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

RESULTS = Path(__file__).parent / "results"


def cpu_name() -> str:
    """The CPU's model name, family and model (from ``/proc/cpuinfo`` on Linux), for
    tables' headers: the ranking of GO against the score function per second depends on
    it (a transcendental-heavy flipped likelihood against matmul-heavy score-function
    steps), and a virtual machine's model name alone can be as vague as "AMD EPYC"."""
    try:
        lines = Path("/proc/cpuinfo").read_text().split("\n\n", 1)[0].splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    pairs = (line.split(":", 1) for line in lines if ":" in line)
    fields = {key.strip(): value.strip() for key, value in pairs}
    name = fields.get("model name", platform.machine())
    return f"{name} (family {fields.get('cpu family', '?')}, model {fields.get('model', '?')})"


@dataclass
class Curve:
    """Evaluations of one estimator's run against seconds of training and steps."""

    name: str
    seconds: list[float] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    values: list[dict[str, float]] = field(default_factory=list)

    @property
    def ms_per_step(self) -> float:
        return 1e3 * self.seconds[-1] / max(self.steps[-1], 1)

    def value_at(self, seconds: float, key: str) -> float:
        """The last evaluation at or before ``seconds`` of training."""
        index = max(i for i, s in enumerate(self.seconds) if s <= seconds + 1e-9)
        return self.values[index][key]

    def value_at_step(self, step: int, key: str) -> float | None:
        """The evaluation after exactly ``step`` steps, if there was one."""
        for seen, value in zip(self.steps, self.values, strict=True):
            if seen == step:
                return value[key]
        return None


def median_step_ms(
    runners: dict[str, Callable],
    batches: Iterator,
    steps: int,
    warmup: int = 3,
    finish: Callable = lambda out: out,
) -> dict[str, float]:
    """Median wall time (ms) of ``finish(run(batch))`` per runner over ``steps`` steps
    after ``warmup`` (compilation included there), runners alternating step by step on
    fresh batches; ``finish`` waits for asynchronous results (``jax.block_until_ready``)."""
    timings: dict[str, list[float]] = {name: [] for name in runners}
    for step in tqdm(range(warmup + steps), desc="timing", disable=not sys.stderr.isatty()):
        for name, run in runners.items():
            x = next(batches)
            start = time.perf_counter()
            finish(run(x))
            if step >= warmup:
                timings[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(values) for name, values in timings.items()}


def train_for_budget(
    name: str,
    step: Callable,
    batches: Iterator,
    budget: float,
    evaluate: Callable[[], dict[str, float]],
    eval_every: float,
    eval_steps: Collection[int] = (),
    clock: Callable[[], float] = time.perf_counter,
) -> Curve:
    """Call ``step(next(batches))`` until ``budget`` seconds have been spent inside
    ``step``; ``evaluate()`` runs at the start, every ``eval_every`` seconds of training,
    after each number of steps in ``eval_steps`` (e.g. another run's evaluation points,
    to compare at equal iterations) and at the end, off the clock (so are the
    batches).  ``clock`` reads the seconds: wall time by default, ``time.process_time``
    for CPU seconds of this process (fair on a machine shared with other work)."""
    curve = Curve(name)
    spent, steps, next_eval = 0.0, 0, 0.0
    progress = "{l_bar}{bar}| {n:.0f}/{total:.0f} s"
    with tqdm(total=budget, desc=name, bar_format=progress, disable=not sys.stderr.isatty()) as bar:
        while spent < budget:
            if spent >= next_eval or steps in eval_steps:
                curve.seconds.append(spent)
                curve.steps.append(steps)
                curve.values.append(evaluate())
                next_eval = max(next_eval, spent // eval_every * eval_every + eval_every)
            batch = next(batches)
            start = clock()
            step(batch)
            elapsed = clock() - start
            spent, steps = spent + elapsed, steps + 1
            bar.update(min(elapsed, bar.total - bar.n))
    curve.seconds.append(spent)
    curve.steps.append(steps)
    curve.values.append(evaluate())
    return curve


def plot_curves(
    curves: list[Curve], keys: dict[str, str], title: str, path: Path, log_scale: bool = False
) -> None:
    """ELBO against seconds of training and against iterations (log scale), one line per
    (curve, key); ``keys`` maps an evaluation key to its line style.  ``log_scale``
    plots the negative ELBO on a log axis, for curves that span orders of magnitude."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    sign = -1.0 if log_scale else 1.0
    fig, axes = plt.subplots(1, 2, figsize=(9.6, 3.8), dpi=90, sharey=True)
    for index, curve in enumerate(curves):
        for key, style in keys.items():
            values = [sign * value[key] for value in curve.values]
            label = f"{curve.name} ({key})"
            axes[0].plot(curve.seconds, values, style, color=f"C{index}", label=label)
            axes[1].semilogx(curve.steps[1:], values[1:], style, color=f"C{index}", label=label)
    if log_scale:
        axes[0].set_yscale("log")
        axes[0].set_ylabel("−ELBO per image (log scale)")
    else:
        later = [value[key] for curve in curves for value in curve.values[1:] for key in keys]
        axes[0].set_ylim(min(later) - 0.1 * (max(later) - min(later)) - 1, max(later) + 1)
        axes[0].set_ylabel("ELBO per image")
    axes[0].set_xlabel("seconds of training (evaluations off the clock)")
    axes[1].set_xlabel("iterations")
    axes[1].xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    handles, labels = axes[1].get_legend_handles_labels()
    if len(labels) <= 4:
        axes[1].legend(fontsize=7)
        fig.tight_layout()
    else:  # below both panels, where it hides no curve
        rows = (len(labels) + 1) // 2
        fig.set_figheight(fig.get_figheight() + 0.17 * rows)
        fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=7, frameon=False)
        fig.tight_layout(rect=(0, 0.17 * rows / fig.get_figheight(), 1, 1))
    path.parent.mkdir(exist_ok=True)
    fig.savefig(path)
    plt.close(fig)

"""The README's demo and the benchmark scripts run end to end (tiny settings)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_demo_prints_elbo_as_it_trains():
    out = run("examples/discrete_vae.py", "--steps", "6", "--log-every", "2", "--batch-size", "20")
    lines = [line for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert len(lines) == 3, out
    assert "validation ELBO per image" in out


@pytest.mark.slow
def test_vae_step_time_benchmark_quick():
    out = run("benchmarks/vae_step_time.py", "--quick")
    assert "TraceGO_ELBO" in out and "hand-written" in out


@pytest.mark.slow
def test_variance_toys_benchmark_reaches_the_go_floor():
    out = run("benchmarks/variance_toys.py", "--quick")
    mismatches = [
        float(line.split("max abs diff vs TraceGO_ELBO ")[1].split()[0])
        for line in out.splitlines()
        if "max abs diff vs TraceGO_ELBO" in line
    ]
    assert len(mismatches) == 16 and max(mismatches) < 1e-9, out


@pytest.mark.slow
def test_wallclock_benchmarks_quick():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from wallclock import cpu_name

    outputs = {
        "benchmarks/vae_wallclock.py": "TraceGO_ELBO",
        "benchmarks/def_wallclock.py": "TraceGO_ELBO",
        "benchmarks/vae_budget_table.py": "numpyro_go.TraceGO_ELBO",
        "benchmarks/peers_budget_table.py": "numpyro_go.TraceDisARM_ELBO",
    }
    for script, estimator in outputs.items():
        out = run(script, "--quick")
        assert estimator in out
        # the ranking per second depends on the CPU: every table names it
        assert f"of {cpu_name()}" in out, script


@pytest.mark.slow
def test_numpyro_benchmarks_quick():
    assert "numpyro_go.TraceGO_ELBO" in run("benchmarks/numpyro_vae_step_time.py", "--quick")
    assert "numpyro_go.TraceGO_ELBO" in run("benchmarks/numpyro_variance_toys.py", "--quick")


def test_distributed_demo_runs_as_one_process():
    out = run(
        "examples/distributed_discrete_vae.py",
        "--steps",
        "4",
        "--log-every",
        "2",
        "--batch-size",
        "10",
    )
    assert "1 rank(s)" in out and "validation ELBO per image" in out


def _torchrun(*args: str) -> str:
    pytest.importorskip("torch.distributed")
    from distributed.spawn import free_port, require_gloo

    require_gloo()
    launcher = ("-m", "torch.distributed.run", "--nproc_per_node=2")
    address = ("--master_addr=127.0.0.1", f"--master_port={free_port()}")
    return run(*launcher, *address, "examples/distributed_discrete_vae.py", *args)


def test_distributed_demo_runs_on_two_ranks_with_torchrun():
    out = _torchrun("--steps", "2", "--log-every", "1", "--batch-size", "10")
    assert "2 rank(s) x 10 images" in out and "validation ELBO per image" in out


@pytest.mark.slow
def test_distributed_demo_relax_under_lightning_and_svi():
    pytest.importorskip("lightning")
    for pattern in ("lightning", "svi"):
        out = _torchrun(
            "--steps", "2", "--batch-size", "10", "--estimator", "relax", "--pattern", pattern
        )
        assert "validation ELBO per image" in out, pattern


def test_sharded_numpyro_demo_runs_on_two_host_devices():
    pytest.importorskip("numpyro")
    out = run(
        "examples/sharded_numpyro_vae.py",
        "--devices",
        "2",
        "--steps",
        "2",
        "--log-every",
        "1",
        "--batch-size",
        "10",
        "--shard-perturbations",
    )
    assert "over 2 device(s) in 1 process(es)" in out and "validation ELBO per image" in out


@pytest.mark.slow
def test_sharded_numpyro_demo_runs_as_two_processes_over_loopback():
    pytest.importorskip("numpyro")
    from distributed.spawn import free_port

    address = f"127.0.0.1:{free_port()}"
    command = [sys.executable, "examples/sharded_numpyro_vae.py", "--coordinator", address]
    command += ["--num-processes", "2", "--steps", "2", "--batch-size", "10"]
    processes = [
        subprocess.Popen(
            [*command, "--process-id", str(index)], cwd=ROOT, stdout=subprocess.PIPE, text=True
        )
        for index in range(2)
    ]
    outputs = [process.communicate(timeout=600)[0] for process in processes]
    assert all(process.returncode == 0 for process in processes), outputs
    assert "over 2 device(s) in 2 process(es)" in outputs[0], outputs[0]


@pytest.mark.slow
def test_scaling_benchmark_quick():
    out = run("benchmarks/scaling.py", "--steps", "2", "--batch-size", "10")
    assert "| Pyro DDP (gloo) | 2 |" in out and "| NumPyro sharded | 2 |" in out

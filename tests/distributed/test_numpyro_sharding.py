"""NumPyro on two host devices matches one device: the batch sharded over devices
(TraceGO_ELBO, and TraceRELAX_ELBO with its control variate identical on every device),
and TraceGO_ELBO's perturbation stacks split over devices
(:class:`~numpyro_go.sharding.ShardedPerturbations`).  A subprocess, since the device
count is fixed when JAX starts."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_devices(*args: str) -> dict:
    pytest.importorskip("numpyro")
    script = Path(__file__).with_name("numpyro_devices.py")
    result = subprocess.run(
        [sys.executable, str(script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_sharded_batch_and_perturbations_match_one_device():
    report = run_devices()
    assert report["go_batch_sharded"] < 1e-5 and report["go_perturbations_sharded"] < 1e-5
    assert report["go_spread_over_devices"] == 0.0


@pytest.mark.slow
def test_relax_sharded_batch_matches_one_device_and_stays_replicated():
    report = run_devices("--full")
    assert report["relax_batch_sharded"] < 1e-5, report
    assert report["relax_spread_over_devices"] == 0.0, report

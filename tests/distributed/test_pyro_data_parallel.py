"""Data-parallel SVI on two gloo ranks (127.0.0.1) matches one process on the union
batch: :class:`~torch.nn.parallel.DistributedDataParallel` around
``differentiable_loss`` (the Lightning pattern) and SVI with
:class:`~pyro_go.distributed.DistributedOptim`, for TraceGO_ELBO and TraceRELAX_ELBO
(whose control-variate parameters end identical on every rank)."""

import json

from spawn import free_port, require_gloo, spawn


def test_two_ranks_match_the_union_batch(tmp_path):
    require_gloo()
    import pyro_ranks

    out = tmp_path / "report.json"
    # one pair of processes for both estimators: starting them costs more than the checks
    spawn(pyro_ranks.worker, (("go", "relax"), free_port(), str(out)), nprocs=2, timeout=240)
    reports = json.loads(out.read_text())
    for kind, report in reports.items():
        # the first gradient and the losses are the union's up to float64 rounding
        assert report["first_gradient"] < 1e-10 and report["first_loss"] < 1e-10, (kind, report)
        assert report["ddp_ranks_differ"] == 0.0, (kind, report)
        assert report["svi_ranks_differ"] == 0.0, (kind, report)
    # GO's whole trajectory is the union's; RELAX's up to Adam's epsilon on REBAR's η, λ
    assert reports["go"]["main_parameters"] < 1e-10 and reports["go"]["svi_vs_union"] < 1e-10
    assert reports["go"]["loss"] < 1e-10
    assert reports["relax"]["main_parameters"] < 1e-6 and reports["relax"]["loss"] < 1e-6

"""Resource requests: refused at once when the cluster can never meet them, waited on (boundedly) otherwise."""

import pytest

from raytt import config
from raytt.resources import Ask, Capacity, Request, ResourceError, check, wait_until_free
from raytt.training.config import TrainConfig
from raytt.training.driver import resource_request

NODE = {"CPU": 4.0, "GPU": 0.0}


def _fixed(*nodes: dict) -> Capacity:
    keys = {"CPU", "GPU"} | {k for n in nodes for k in n}
    return Capacity(tuple(nodes), {k: sum(n.get(k, 0) for n in nodes) for k in keys}, "a fixed cluster")


def test_request_counts_workers_miners_encoder_and_ray_data():
    cfg = config.load(
        TrainConfig,
        None,
        [
            "workers=2",
            "threads_per_worker=2",
            "mining.schedule=0-5:8@0.5-0.9",
            "mining.actors=2",
            "mining.actor_cpus=1.5",
            "tower.doc=mlp",
        ],
    )
    request = resource_request(cfg)
    assert request.total("CPU") == 2 * 2 + 2 * 1.5 + 1 + 1 and request.total("GPU") == 0
    assert resource_request(cfg, trials=3).total("CPU") == 3 * 2 * 2 + 2 * 1.5 + 1 + 1
    assert "2 training worker(s) x 2 CPU" in request.describe()
    gpu = config.load(TrainConfig, None, ["workers=4", "use_gpu=true"])
    assert resource_request(gpu).total("GPU") == 4 and resource_request(gpu).total("CPU") == 5
    cached = config.load(TrainConfig, None, ["workers=4", "data.cache=true"])
    assert resource_request(cached).total("CPU") == 4, "a materialized train split is read before the workers start"


def test_custom_resources_pin_bundles_to_the_nodes_that_offer_them():
    cfg = config.load(
        TrainConfig,
        None,
        ["workers=2", "worker_resources.trainer=1", "mining.schedule=0-5:8@0.5-0.9", "mining.resources.miner=0.5"],
    )
    request = resource_request(cfg)
    assert request.total("trainer") == 2 and request.total("miner") == 0.5
    assert "2 training worker(s) x 1 CPU + 1 trainer" in request.describe()
    trainer, miner = {"CPU": 2.0, "trainer": 2.0}, {"CPU": 1.0, "miner": 1.0}
    check(request, _fixed(trainer, miner, {"CPU": 1.0}))
    with pytest.raises(ResourceError, match=r"has the custom resource\(s\) \['miner'\] one miner\(s\) needs"):
        check(request, _fixed(trainer, trainer, {"CPU": 1.0}))
    with pytest.raises(ResourceError, match="at most 7 CPU and 0 GPU and 2 trainer"):
        check(resource_request(cfg, trials=2), _fixed(trainer, miner, {"CPU": 4.0}))


def test_custom_resources_are_named_positive_amounts():
    for bad, problem in [("worker_resources.GPU=1", "'GPU' has its own setting"), ("mining.resources.miner=0", "> 0")]:
        with pytest.raises(config.ConfigError, match=problem):
            config.load(TrainConfig, None, [bad])


def test_a_gpu_on_a_cluster_without_one_is_refused_naming_both_sides():
    request = Request((Ask("training worker(s)", 2, 1, 1), Ask("Ray Data reader", 1, 1)))
    with pytest.raises(
        ResourceError,
        match=r"no node can hold one training worker\(s\) \(1 CPU, 1 GPU\).*largest "
        r"node of a fixed cluster has 4 CPU and 0 GPU.*use_gpu: false",
    ):
        check(request, _fixed(NODE, NODE))


def test_a_worker_larger_than_any_node_is_refused_even_when_the_total_fits():
    request = Request((Ask("training worker(s)", 1, 6), Ask("Ray Data reader", 1, 1)))
    with pytest.raises(ResourceError, match="no node can hold one training worker"):
        check(request, _fixed(NODE, NODE))


def test_more_cpus_than_a_fixed_cluster_holds_is_refused():
    request = Request((Ask("training worker(s)", 8, 1), Ask("Ray Data reader", 1, 1)))
    with pytest.raises(ResourceError, match=r"in all 9 CPU, 0 GPU.*at most 8 CPU"):
        check(request, _fixed(NODE, NODE))
    check(Request((Ask("training worker(s)", 7, 1), Ask("Ray Data reader", 1, 1))), _fixed(NODE, NODE))


def test_an_autoscaling_cluster_is_judged_by_what_it_may_grow_to():
    grows = Capacity(
        ({"CPU": 2.0}, {"CPU": 8.0, "GPU": 1.0}), {"CPU": 66.0, "GPU": 8.0}, "this Ray cluster (autoscaling)"
    )
    check(Request((Ask("training worker(s)", 8, 4, 1), Ask("Ray Data reader", 1, 1))), grows)
    with pytest.raises(ResourceError, match="at most 66 CPU and 8 GPU"):
        check(Request((Ask("training worker(s)", 9, 4, 1),)), grows)


def test_waiting_for_a_busy_cluster_is_bounded_and_says_what_is_pending():
    request = Request((Ask("training worker(s)", 2, 1), Ask("Ray Data reader", 1, 1)))
    said = []
    with pytest.raises(
        ResourceError,
        match=r"after 0s the cluster still lacks 2 more CPU \(free: 1 CPU, 0 GPU\).*"
        r"resource_timeout_s",
    ):
        wait_until_free(request, 0.0, said.append, free_now=lambda: {"CPU": 1.0, "GPU": 0.0})
    frees = iter([{"CPU": 1.0, "GPU": 0.0}, {"CPU": 3.0, "GPU": 0.0}])
    wait_until_free(request, 60.0, said.append, free_now=lambda: next(frees))
    assert said and "waiting for 2 more CPU" in said[0]


def test_dry_run_prints_the_plan_against_the_cluster_and_starts_nothing(
    ray_local, synth_bank, synth_shards, tmp_path, capsys
):
    from raytt.cli import main

    sets = [f"data.bank={synth_bank}", f"data.shards={synth_shards}", f"storage={tmp_path / 'runs'}"]
    sets += ["workers=1", "placement=spread", "mining.schedule=0-5:8@0.5-0.9"]
    with pytest.raises(SystemExit) as ended:
        main(["train", "--dry-run", *[x for s in sets for x in ("--set", s)]])
    assert ended.value.code == 0
    out = capsys.readouterr().out
    for line in (
        "plan: training worker(s) 1 CPU",
        "plan: miner(s) 1 CPU",
        "plan: workers placed spread (one per node where the cluster allows",
        "plan: in all 3 CPU, 0 GPU; this Ray cluster has at most 3 CPU",
        "plan: run 'run' fits; nothing was started (--dry-run)",
    ):
        assert line in out, f"{line!r} not in:\n{out}"
    assert not (tmp_path / "runs").exists()

"""cluster/: the launcher YAML against the schema shipped in the ray package, and the KubeRay manifests' fields."""

import json
import shlex
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

from raytt import config
from raytt.training.config import TrainConfig
from raytt.tuning import SearchConfig

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
RAY_MINOR = ".".join(ray.__version__.split(".")[:2])


def _launcher() -> dict:
    return yaml.safe_load((CLUSTER / "gpu-aws.yaml").read_text())


def _schema() -> dict:
    return json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())


def test_launcher_yaml_matches_rays_own_schema():
    cfg = _launcher()
    jsonschema.validate(cfg, _schema())
    broken = _launcher()
    broken["available_node_types"]["gpu_worker"]["max_workerz"] = 8
    with pytest.raises(jsonschema.ValidationError, match="max_workerz"):
        jsonschema.validate(broken, _schema())


def test_launcher_installs_raytt_gpu_and_keeps_the_cluster_closed():
    cfg = _launcher()
    setup = "\n".join(cfg["setup_commands"])
    assert setup.index("torch==2.13.0") < setup.index("[gpu,ingest]"), "torch pinned, installed before raytt[gpu]"
    head, workers = " ".join(cfg["head_start_ray_commands"]), " ".join(cfg["worker_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    assert "RAY_AUTH_MODE=token" in head and "RAY_AUTH_MODE=token" in workers
    assert "~/.ray/auth_token" in cfg["file_mounts"]
    head_type = cfg["available_node_types"][cfg["head_node_type"]]
    assert head_type["resources"].get("CPU") == 0, "the head runs drivers, not training"
    gpu = cfg["available_node_types"]["gpu_worker"]
    assert gpu["min_workers"] == 0 and gpu["max_workers"] >= 4, "GPU workers autoscale from zero"


def _cluster_specs(doc: dict) -> dict:
    return doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]


def _check_cluster_spec(spec: dict, where: str) -> None:
    assert spec["rayVersion"].startswith(RAY_MINOR), (
        f"{where}: rayVersion {spec['rayVersion']} vs ray {ray.__version__}"
    )
    assert spec["authOptions"]["mode"] == "token", f"{where}: token auth"
    head = spec["headGroupSpec"]
    assert head["serviceType"] == "ClusterIP", f"{where}: the head service is never exposed"
    assert head["rayStartParams"]["num-cpus"] == "0"
    for group in [head, *spec["workerGroupSpecs"]]:
        container = group["template"]["spec"]["containers"][0]
        assert container["image"] and container["resources"]["limits"] and container["resources"]["requests"]
        mounts = {m["name"] for m in container["volumeMounts"]}
        assert mounts <= {v["name"] for v in group["template"]["spec"]["volumes"]}, (
            f"{where}: mounts a volume it declares"
        )
    for group in spec["workerGroupSpecs"]:
        assert group["groupName"] and group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob.yaml"])
def test_kuberay_manifests_have_their_required_fields(name):
    doc = yaml.safe_load((CLUSTER / "kuberay" / name).read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] in ("RayCluster", "RayJob") and doc["metadata"]["name"]
    _check_cluster_spec(_cluster_specs(doc), name)
    if doc["kind"] == "RayJob":
        assert doc["spec"]["shutdownAfterJobFinishes"] is True and doc["spec"]["submissionMode"]
        assert isinstance(yaml.safe_load(doc["spec"]["runtimeEnvYAML"])["env_vars"], dict)
        _check_entrypoint(doc["spec"]["entrypoint"])


def _check_entrypoint(command: str) -> None:
    """The entrypoint names a jobs/ script and a shipped config that exist and load (image paths -> the repo)."""
    argv = shlex.split(command.replace("/home/ray/raytt/", ""))
    assert argv[0] == "python" and (REPO / argv[1]).is_file() and argv[1].startswith("jobs/")
    cfg = REPO / argv[argv.index("--config") + 1]
    config.load(SearchConfig if "tune" in argv[1] else TrainConfig, cfg)


def test_launcher_and_manifest_examples_name_real_entrypoints():
    text = (CLUSTER / "gpu-aws.yaml").read_text() + (CLUSTER / "kuberay" / "raycluster.yaml").read_text()
    for script in ("jobs/train.py", "jobs/tune.py"):
        assert script in text or script.replace("jobs/", "/home/ray/raytt/jobs/") in text
        assert (REPO / script).is_file()


def test_the_rayservice_serves_raytts_application_behind_a_token():
    import importlib

    from raytt.serving import ServeConfig

    doc = yaml.safe_load((CLUSTER / "kuberay" / "rayservice.yaml").read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayService"
    spec = doc["spec"]["rayClusterConfig"]
    assert spec["authOptions"]["mode"] == "token" and spec["headGroupSpec"]["serviceType"] == "ClusterIP"
    (application,) = yaml.safe_load(doc["spec"]["serveConfigV2"])["applications"]
    module, name = application["import_path"].split(":")
    assert callable(getattr(importlib.import_module(module), name))
    args = dict(application["args"])
    assert args.pop("folder") and args["token_file"]
    config.from_dict(ServeConfig, args)  # every other arg is a ServeConfig field
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        pod = group["template"]["spec"]
        assert {m["name"] for m in pod["containers"][0]["volumeMounts"]} <= {v["name"] for v in pod["volumes"]}

"""`raytt serve`: the exported tower over HTTP on loopback, batched, token-checked, with named refusals."""

import json
import socket
import threading
import urllib.error
import urllib.request

import pytest
from helpers import QUIET

from raytt import config
from raytt.decoding import DECISIONS
from raytt.errors import ConfigError
from raytt.resources import ResourceError
from raytt.retriever import Retriever
from raytt.serving import ServeConfig, serve

TOKEN = "a-test-token-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(url: str, body: dict | None = None, token: str = TOKEN) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data, {"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_raytt_serve_answers_over_loopback(exported, ray_local, tmp_path):
    from ray import serve as ray_serve

    (tmp_path / "token").write_text(TOKEN)
    cfg = ServeConfig(
        port=free_port(), num_cpus=0.5, max_batch_size=8, batch_wait_ms=20, token_file=str(tmp_path / "token")
    )
    url = serve(exported[1], None, cfg, progress=QUIET, block=False)
    try:
        assert call(f"{url}/health")[0] == 200
        assert call(f"{url}/health", token="")[0] == 401
        retriever = Retriever.load(exported[1])
        contexts = [[int(i), int(i) + 1, int(i) + 2] for i in range(0, 160, 10)]
        answers: dict[int, tuple] = {}

        def ask(i: int) -> None:
            answers[i] = call(f"{url}/search", {"context": contexts[i], "k": 5, "exact": i % 2 == 0})

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(contexts))]
        [t.start() for t in threads]
        [t.join() for t in threads]
        for i, context in enumerate(contexts):
            status, body = answers[i]
            assert status == 200, body
            want = retriever.search([context], 5, exact=i % 2 == 0).keys[0].tolist()
            assert [hit["key"] for hit in body["results"][0]] == want
            assert {"score", "article_id", "position"} <= set(body["results"][0][0])
        status, body = call(f"{url}/search", {"context": [[1, 2, 3, 4, 5]], "k": 5})
        assert status == 400 and "the tower reads 1 to 4" in body["error"]
        status, body = call(f"{url}/search", {"context": [1, 2], "k": 0})
        assert status == 400 and '"k" must be an integer' in body["error"]
        status, body = call(f"{url}/rollout", {"context": [1, 2, 3], "steps": 3})
        assert status == 200 and [s["decision"] in DECISIONS for s in body["steps"][0]] == [True] * 3
        assert len(body["steps"][0][0]["vector"]) == retriever.dim
    finally:
        ray_serve.shutdown()


def test_serve_refuses_an_open_address_without_a_token_and_what_the_cluster_lacks(exported, ray_local, tmp_path):
    with pytest.raises(ConfigError, match="reachable beyond this machine"):
        config.from_dict(ServeConfig, {"host": "0.0.0.0"})
    (tmp_path / "short").write_text("abc")
    with pytest.raises(ConfigError, match="at least 16 characters"):
        ServeConfig(token_file=str(tmp_path / "short")).token()
    with pytest.raises(ResourceError, match="serve replica"):
        serve(exported[1], None, ServeConfig(num_cpus=64, port=free_port()), progress=QUIET, block=False)

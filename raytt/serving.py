"""`raytt serve DIR`: an exported tower behind Ray Serve, answering HTTP JSON.

Routes: `POST /search` {"context": keys | vectors | texts, "k": 10, "exact": false} -> {"hits": [...]};
`POST /rollout` {"context": ..., "steps": 8} -> the decoded steps; `GET /health`. Requests are parsed and
checked one by one (a bad one gets HTTP 400 naming the problem), then `@serve.batch` gathers concurrent
ones into a single query-tower pass and a single index search. Like the dashboard, the server listens on
127.0.0.1 unless told otherwise, and a wider address needs a bearer token (`--token-file`).
"""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from raytt.config import doc
from raytt.errors import ConfigError, RayttError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class ServeConfig:
    """How the tower is served: replicas and their resources, batching, where it listens."""

    replicas: int = field(default=1, metadata=doc("replicas of the retriever"))
    num_cpus: float = field(default=1.0, metadata=doc("CPUs per replica"))
    num_gpus: float = field(default=0.0, metadata=doc("GPUs per replica"))
    max_batch_size: int = field(default=32, metadata=doc("requests one batched tower pass and index search serve"))
    batch_wait_ms: float = field(default=5.0, metadata=doc("how long a batch waits to fill"))
    host: str = field(default="127.0.0.1", metadata=doc("address to listen on (beyond loopback needs token_file)"))
    port: int = field(default=8000, metadata=doc("HTTP port"))
    token_file: str = field(default="", metadata=doc("file holding the bearer token requests must carry"))
    max_k: int = field(default=1000, metadata=doc("largest k a request may ask for"))
    access_log: bool = field(default=False, metadata=doc("log every request (Ray Serve's access log)"))

    def __post_init__(self) -> None:
        if self.replicas < 1 or self.max_batch_size < 1 or self.max_k < 1:
            raise ValueError("serve: replicas, max_batch_size and max_k must be >= 1")
        if self.num_cpus < 0 or self.num_gpus < 0 or self.batch_wait_ms < 0:
            raise ValueError("serve: num_cpus, num_gpus and batch_wait_ms must be >= 0")
        if not 0 < self.port < 65536:
            raise ValueError(f"serve: port must be in 1..65535, got {self.port}")
        if not self.token_file and not _loopback(self.host):
            raise ValueError(
                f"serve: host {self.host!r} is reachable beyond this machine: give token_file (a file holding the "
                "token requests must send as 'Authorization: Bearer TOKEN'), or listen on 127.0.0.1"
            )

    def token(self) -> str:
        """The bearer token, or '' when none is required."""
        if not self.token_file:
            return ""
        try:
            token = Path(self.token_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"serve: token_file {self.token_file}: {exc.strerror or exc}") from None
        if len(token) < 16:
            raise ConfigError(f"serve: token_file {self.token_file}: the token must be at least 16 characters")
        return token


def _loopback(host: str) -> bool:
    if host in LOOPBACK:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class RequestError(RayttError):
    """A request the server answers with HTTP 400."""


def parse_search(body, max_k: int) -> tuple[object, int, bool]:
    """(context, k, exact) of a /search body, refused by field."""
    if not isinstance(body, dict) or "context" not in body:
        raise RequestError('the body must be a JSON object with "context" (bank keys, vectors or texts)')
    k, exact = body.get("k", 10), body.get("exact", False)
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= max_k:
        raise RequestError(f'"k" must be an integer in 1..{max_k}, got {k!r}')
    if not isinstance(exact, bool):
        raise RequestError(f'"exact" must be true or false, got {exact!r}')
    return body["context"], k, exact


def deployment(folder: str, bank: str | None, cfg: ServeConfig):
    """The Serve application: one `Retriever` per replica behind `@serve.batch`."""
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    token = cfg.token()

    @serve.deployment(
        num_replicas=cfg.replicas,
        ray_actor_options={"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus},
        max_ongoing_requests=max(2 * cfg.max_batch_size, 8),
        logging_config={"enable_access_log": cfg.access_log},
    )
    class RetrieverService:
        def __init__(self) -> None:
            from raytt.retriever import Retriever

            self.retriever = Retriever.load(folder, bank)

        @serve.batch(max_batch_size=cfg.max_batch_size, batch_wait_timeout_s=cfg.batch_wait_ms / 1000)
        async def search_batch(self, items: list[tuple[np.ndarray, np.ndarray, int, bool]]) -> list[dict]:
            """One tower pass and one index search (per exact/ANN) for every request of the batch."""
            return batched_search(self.retriever, items)

        async def __call__(self, request: Request):
            if token and not hmac.compare_digest(request.headers.get("authorization", ""), f"Bearer {token}"):
                return JSONResponse({"error": "missing or wrong bearer token"}, status_code=401)
            route = request.url.path.rstrip("/").rsplit("/", 1)[-1]
            try:
                if route == "health":
                    return {"status": "ok", "bank": self.retriever.config["bank"], "dim": self.retriever.dim}
                body = await request.json()
                if route == "search":
                    context, k, exact = parse_search(body, cfg.max_k)
                    vectors, lengths = self.retriever.contexts(context)
                    return {"results": await self.search_batch((vectors, lengths, k, exact))}
                if route == "rollout":
                    return rollout_json(self.retriever, body)
                return JSONResponse({"error": f"no route {request.url.path}: /search, /rollout, /health"}, 404)
            except (RayttError, ValueError) as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)

    return RetrieverService.bind()


def app(args: dict):
    """Ray Serve application builder (`import_path: raytt.serving:app`, as KubeRay's RayService and `serve run`
    use it): `folder`, optional `bank`, and any `ServeConfig` field."""
    from raytt import config

    args = dict(args)
    if "folder" not in args:
        raise ConfigError("raytt.serving:app needs args.folder (an export folder)")
    folder, bank = args.pop("folder"), args.pop("bank", None)
    return deployment(folder, bank, config.from_dict(ServeConfig, args, "serve application args"))


def batched_search(retriever, items: list[tuple[np.ndarray, np.ndarray, int, bool]]) -> list[list[list[dict]]]:
    """Each request's hits, from one query-tower pass over all contexts and one search per mode."""
    vectors = np.concatenate([v for v, _, _, _ in items])
    lengths = np.concatenate([n for _, n, _, _ in items])
    queries = retriever.encode_vectors(vectors, lengths)
    bounds = np.cumsum([0] + [len(n) for _, n, _, _ in items])
    results: list = [None] * len(items)
    for exact in (False, True):
        chosen = [i for i, item in enumerate(items) if item[3] == exact]
        if not chosen:
            continue
        rows = np.concatenate([np.arange(bounds[i], bounds[i + 1]) for i in chosen])
        k = max(items[i][2] for i in chosen)
        scores, keys = retriever.search_vectors(queries[rows], k, exact)
        hits = retriever.hits(keys, scores)
        at = 0
        for i in chosen:
            size, want = bounds[i + 1] - bounds[i], items[i][2]
            results[i] = [hits.rows(at + j)[:want] for j in range(size)]
            at += size
    return results


def rollout_json(retriever, body) -> dict:
    """A /rollout body {"context", "steps"} decoded with the export's default lane."""
    if not isinstance(body, dict) or "context" not in body:
        raise RequestError('the body must be a JSON object with "context" and "steps"')
    steps = body.get("steps", 8)
    if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= 256:
        raise RequestError(f'"steps" must be an integer in 1..256, got {steps!r}')
    return {"steps": retriever.rollout(body["context"], steps)}


def serve(folder: str | Path, bank: str | Path | None, cfg: ServeConfig, progress=print, block: bool = True) -> str:
    """Start the application on the joined (or a private) Ray; returns its URL. Blocks until Ctrl-C if `block`."""
    import time

    from ray import serve as ray_serve

    from raytt.resources import Ask, Request, check, cluster_capacity
    from raytt.retriever import read_export_config
    from raytt.session import start_ray

    read_export_config(Path(folder))
    start_ray(cfg.replicas * cfg.num_cpus + 1)
    check(Request((Ask("serve replica", cfg.replicas, cfg.num_cpus, cfg.num_gpus),)), cluster_capacity())
    ray_serve.start(http_options={"host": cfg.host, "port": cfg.port})
    app = deployment(str(Path(folder).resolve()), str(bank) if bank else None, cfg)
    ray_serve.run(app, name="raytt", route_prefix="/")
    url = f"http://{cfg.host}:{cfg.port}"
    progress(f"serve: {folder} at {url} (/search, /rollout, /health), {cfg.replicas} replica(s); Ctrl-C stops it")
    try:
        while block:
            time.sleep(3600)
    except KeyboardInterrupt:
        ray_serve.shutdown()
        progress("serve: stopped")
    return url

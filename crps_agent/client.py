"""`MemoryClient`: `Memory`'s recall / record / remember / list / get over HTTP, against a
`crps-agent serve` service. Code switches between embedded and shared memory by one line:

    memory = Memory("./store")                             # embedded, this process owns it
    memory = MemoryClient("http://10.0.0.5:8765", api_key=os.environ["CRPS_API_KEY"])

    hits = memory.recall("task text", namespace="default", domain="math")
    memory.record([h.insight.id for h in hits], correct=True)

Results are the same types as `Memory`'s (`RecalledInsight`, `Insight`, `AddOutcome`);
errors are `CrpsError`s: `NotFoundError` (404), `InvalidRequestError` (4xx, with the
service's explanation), `StoreError` (service unreachable, 401, 5xx).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import httpx

from crps_agent.errors import NotFoundError, StoreError
from crps_agent.integrations.ops import InvalidRequestError
from crps_agent.namespaces import Namespace, validate_namespace
from crps_agent.types import Insight

if TYPE_CHECKING:
    from crps_agent.memory.ingest import AddOutcome
    from crps_agent.memory.recall import RecalledInsight

__all__ = ["MemoryClient"]


class MemoryClient:
    """A client of the memory service at `url` (e.g. `http://127.0.0.1:8765`)."""

    def __init__(self, url: str, api_key: str | None = None, *, timeout: float = 30.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout,
                                  transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> MemoryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MemoryClient({self.url!r})"

    # ---------------------------------------------------------------- transport

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise StoreError(f"cannot reach the memory service at {self.url} ({exc}); "
                             "start it with `crps-agent serve`") from None
        if response.is_success:
            return response.json()
        try:
            detail: Any = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        if isinstance(detail, list):  # FastAPI's validation errors: name the fields
            detail = "; ".join(f"{'.'.join(str(p) for p in d.get('loc', [])[1:])}: "
                               f"{d.get('msg')}" for d in detail)
        code = response.status_code
        if code == 404:
            raise NotFoundError(str(detail))
        if code == 401:
            raise StoreError(f"the memory service at {self.url} refused the API key: "
                             f"{detail}")
        if 400 <= code < 500:
            raise InvalidRequestError(f"{detail} (HTTP {code})")
        raise StoreError(f"the memory service at {self.url} failed (HTTP {code}): {detail}")

    # ---------------------------------------------------------------- Memory's API

    def recall(self, query: str, *, namespace: Namespace = "default",
               domain: str | None = None, k: int | None = None) -> list[RecalledInsight]:
        from crps_agent.memory.recall import RecalledInsight

        body: dict[str, Any] = {"query": query, "namespace": validate_namespace(namespace),
                                "domain": domain}
        if k is not None:
            body["k"] = k
        out = []
        for hit in self._call("POST", "/v1/recall", json=body)["insights"]:
            item = RecalledInsight(Insight.from_dict(hit["insight"]), hit["similarity"],
                                   hit["score"])
            if "explain" in hit:
                # `explain` may be computed by RecalledInsight itself (read-only there)
                with contextlib.suppress(AttributeError):
                    item.explain = hit["explain"]  # type: ignore[attr-defined]
            out.append(item)
        return out

    def record(self, insight_ids: Sequence[str], correct: bool, *,
               event_id: str | None = None) -> list[dict[str, Any]]:
        """Credit a verdict; returns the insights whose status changed (id, status,
        promoted)."""
        body: dict[str, Any] = {"insight_ids": list(insight_ids), "success": correct}
        if event_id is not None:
            body["event_id"] = event_id
        if not body["insight_ids"]:
            return []
        return list(self._call("POST", "/v1/outcomes", json=body)["changed"])

    def add(self, text: str, *, kind: str = "strategy", domain: str = "",
            namespace: Namespace = "default", tags: Sequence[str] = ()) -> AddOutcome:
        """Add one insight (validated and deduplicated by the service)."""
        from crps_agent.memory.ingest import AddOutcome

        out = self._call("POST", "/v1/insights", json={
            "text": text, "kind": kind, "domain": domain,
            "namespace": validate_namespace(namespace), "tags": list(tags)})
        return AddOutcome(_insight(out["insight"]), bool(out["merged"]))

    def remember(self, insights: Sequence[Insight]) -> list[AddOutcome]:
        """`Memory.remember` for insights built in Python (their text, kind, domain,
        namespace and tags are sent; the service sets status and counters)."""
        return [self.add(i.text, kind=i.kind, domain=i.domain, namespace=i.namespace,
                         tags=i.tags) for i in insights]

    def list(self, namespace: Namespace = "default", *, status: str | None = None,
             domain: str | None = None, limit: int = 50, offset: int = 0) -> list[Insight]:
        params: dict[str, Any] = {"namespace": validate_namespace(namespace),
                                  "limit": limit, "offset": offset}
        params.update({k: v for k, v in {"status": status, "domain": domain}.items() if v})
        return [_insight(d) for d in self._call("GET", "/v1/insights",
                                                params=params)["insights"]]

    def get(self, insight_id: str) -> Insight:
        return _insight(self._call("GET", f"/v1/insights/{_path(insight_id)}"))

    def update(self, insight_id: str, **fields: Any) -> Insight:
        """Change text, kind, status or tags of an insight."""
        return _insight(self._call("PATCH", f"/v1/insights/{_path(insight_id)}",
                                   json=fields))

    def retire(self, insight_id: str) -> Insight:
        return self.update(insight_id, status="retired")

    def delete(self, insight_id: str) -> None:
        self._call("DELETE", f"/v1/insights/{_path(insight_id)}")

    def stats(self, namespace: Namespace = "default") -> dict[str, Any]:
        return dict(self._call("GET", "/v1/stats",
                               params={"namespace": validate_namespace(namespace)}))

    def healthy(self) -> bool:
        try:
            return bool(self._http.get("/healthz").is_success)
        except httpx.HTTPError:
            return False


def _path(insight_id: str) -> str:
    from urllib.parse import quote

    return quote(insight_id, safe="")


def _insight(data: dict[str, Any]) -> Insight:
    return Insight.from_dict({k: v for k, v in data.items() if k != "utility"})

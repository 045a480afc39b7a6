"""The backend protocol: one batched `generate` call, requests in, completions out."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from crps_agent.config import Settings


@dataclass
class GenerationRequest:
    """One prompt (plain text or chat messages) and how to sample from it.

    `purpose` ("solve", "reflect", "repair", ...) and `meta` describe why the call is made;
    real backends ignore them, the scripted backend can match rules on them.
    """

    prompt: str | None = None
    messages: list[dict[str, str]] | None = None
    n: int = 1
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 512
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    json_schema: dict[str, Any] | None = None
    logprobs: bool = False
    purpose: str = "solve"
    meta: dict[str, Any] = field(default_factory=dict)
    # Assistant text already written (an MCTS node's step prefix): the completion continues
    # it and does not repeat it. With chat messages it follows the generation prompt.
    prefix: str | None = None
    adapter: str | None = None  # a LoRA adapter name/path, where the backend supports it

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("a GenerationRequest needs exactly one of prompt or messages")
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")

    def text(self) -> str:
        """The request flattened to text (for rule matching, token estimates and logs)."""
        if self.prompt is not None:
            return self.prompt
        return "\n\n".join(f"{m['role']}: {m['content']}" for m in self.messages or [])


@dataclass
class Completion:
    text: str
    finish_reason: str = "stop"  # "stop" | "length"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cumulative_logprob: float | None = None


@dataclass
class Capabilities:
    structured_output: bool = False
    logprobs: bool = False
    prefix_caching: bool = False
    lora: bool = False
    # Concurrent `generate` calls share the backend's running batch by themselves (vLLM's
    # engine loop, an HTTP client with one shared in-flight cap): the coalescer passes each
    # caller's call straight through instead of merging calls.
    continuous_batching: bool = False


@runtime_checkable
class Backend(Protocol):
    name: str

    @property
    def capabilities(self) -> Capabilities:
        """What the backend can do (an attribute or a property)."""
        ...

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        """One list of `request.n` completions per request, in request order."""
        ...


BackendFactory = Callable[["Settings"], Backend]


def prompt_token_ids(tokenizer: Any, request: GenerationRequest, model_name: str) -> list[int]:
    """The token ids a local model sees for `request`: a plain prompt, or chat messages through
    the tokenizer's chat template with the generation prompt; then `request.prefix` as raw
    text (shared by the hf and vllm backends, so both continue a prefix identically)."""
    prefix = request.prefix or ""
    if request.messages is None:
        return list(tokenizer((request.prompt or "") + prefix)["input_ids"])
    if not getattr(tokenizer, "chat_template", None):
        from crps_agent.errors import BackendError

        raise BackendError(f"model {model_name} has no chat template: send a plain "
                           "prompt, or use an instruction-tuned model")
    text = tokenizer.apply_chat_template(request.messages, add_generation_prompt=True,
                                         tokenize=False)
    return list(tokenizer(text + prefix, add_special_tokens=False)["input_ids"])


def apply_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut `text` at the first stop string; returns (text, stopped)."""
    cut = len(text)
    for s in stop:
        if s and (i := text.find(s)) != -1:
            cut = min(cut, i)
    return text[:cut], cut < len(text)


def estimate_tokens(text: str) -> int:
    """A cheap token estimate (~4 characters per token) where no tokenizer is at hand."""
    return max(1, (len(text) + 3) // 4) if text else 0

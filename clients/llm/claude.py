"""Anthropic's Messages API through the ``anthropic`` SDK, set up the way every agent step needs it.

- The fixed system prompt and the tool definitions carry ``cache_control`` so repeated turns and
  runs read them from the prompt cache; so does the newest message of a tool-use conversation,
  so each turn reads the turns before it from the cache instead of paying for them again.
- The SDK retries 408/409/429/5xx/529 with backoff (``max_retries``), except a 429 that means a
  spend limit was reached: retrying cannot help, so :class:`StopOnSpendLimit` ends the call at
  once with :class:`SpendLimitReached`.
- A reply that stops with ``stop_reason: "refusal"`` raises :class:`ModelRefused` at once, naming
  the step it refused and the way on (rephrase, or the offline planner): turning the conversation
  again would only spend tokens on the same refusal.
- Request bodies (the question, documents, tool results) never reach a log, even at DEBUG.
- The ``anthropic`` SDK (seconds of imports) is imported when a client is made, not with this
  module, so a run without a key never pays for it.

Usage::

    client = ClaudeClient(get_settings().agent, api_key=os.environ["ANTHROPIC_API_KEY"])
    reply = client.create(system="...", messages=[{"role": "user", "content": "..."}])
    print(client.usage.line())
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from clients.llm.settings import AgentSettings
from clients.llm.usage import AgentUsage

if TYPE_CHECKING:
    from anthropic.types import Message

# error.details.error_code values that mean "no more spending until someone acts".
SPEND_LIMIT_CODES = frozenset(
    {"enforced_spend_limit_reached", "contract_spend_limit_reached", "linked_organization_spend_limit_reached"}
)
# 400 messages Anthropic sends for limits a user set and for an empty balance.
SPEND_LIMIT_MESSAGES = ("reached your specified", "credit balance is too low")
_CACHED = {"type": "ephemeral"}


class SpendLimitReached(RuntimeError):
    """The Anthropic account may not spend more now; retrying will not help."""


class ModelRefused(RuntimeError):
    """The model declined the step (``stop_reason: "refusal"``); asking again the same way will not help."""

    def __init__(self, model: str, purpose: str, category: str | None = None, explanation: str | None = None) -> None:
        self.model = model
        self.purpose = purpose
        self.category = category
        self.explanation = explanation
        why = ", ".join(part for part in (f"category {category}" if category else "", explanation or "") if part)
        super().__init__(
            f"{model} refused {purpose} (stop_reason 'refusal'{f': {why}' if why else ''}). Asking again the same "
            "way will not help: rephrase the question (and check the documents for text that reads as a harmful "
            "request), or unset ANTHROPIC_API_KEY so the offline planner and summary do this step."
        )


class StopOnSpendLimit:
    """Turn a spend-limit reply into :class:`SpendLimitReached` before the SDK's retry loop sees it.

    The SDK retries every 429; an exception raised here that is not an API error is not retried. A
    plain callable middleware (``(request, call_next) -> response``), so this module needs no SDK import.
    """

    def __call__(self, request: Any, call_next: Any) -> Any:
        response = call_next(request)
        if response.status_code in (400, 402, 429):
            error = _error_of(response)
            code = (error.get("details") or {}).get("error_code")
            message = str(error.get("message") or "")
            if code in SPEND_LIMIT_CODES or any(m in message.lower() for m in SPEND_LIMIT_MESSAGES):
                raise SpendLimitReached(
                    f"Anthropic refused the request: spend limit reached ({code or message[:200]}). "
                    "Retrying will not help: raise the limit or add credit in the Claude Console, or unset "
                    "ANTHROPIC_API_KEY to plan with the offline planner."
                )
        return response


class _DropRequestBodies(logging.Filter):
    """The SDK logs whole request options (messages included) at DEBUG; those records are dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Request options")


_SDK_LOGGER = logging.getLogger("anthropic._base_client")
if not any(isinstance(f, _DropRequestBodies) for f in _SDK_LOGGER.filters):
    _SDK_LOGGER.addFilter(_DropRequestBodies())


class ClaudeClient:
    """One agent step's connection: the SDK client, its settings and the tokens it has used."""

    def __init__(self, settings: AgentSettings, *, api_key: str) -> None:
        import anthropic  # here, not at module level: only a run with a key pays for the SDK's imports

        self.settings = settings
        self.usage = AgentUsage(model=settings.model)
        self._sdk = anthropic.Anthropic(
            api_key=api_key,
            base_url=settings.base_url,
            max_retries=settings.max_retries,
            timeout=settings.timeout_s,
            middleware=[StopOnSpendLimit()],
        )

    def create(
        self,
        *,
        system: str,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        purpose: str = "the request",
    ) -> Message:
        """One Messages API call with the system prompt and tools marked for prompt caching.

        ``purpose`` names the step in a :class:`ModelRefused` ("planning the run").
        """
        options: dict[str, Any] = {}
        if tools:
            options["tools"] = [*tools[:-1], {**tools[-1], "cache_control": _CACHED}]
            messages = _cache_up_to_last(messages)
        if self.settings.temperature is not None:
            options["temperature"] = self.settings.temperature
        reply = self._sdk.messages.create(
            model=self.settings.model,
            max_tokens=self.settings.max_tokens,
            system=[{"type": "text", "text": system, "cache_control": _CACHED}],
            messages=messages,
            **options,
        )
        self.usage.add_reply(reply.usage, self.settings)
        if reply.stop_reason == "refusal":
            details = getattr(reply, "stop_details", None)
            raise ModelRefused(
                self.settings.model,
                purpose,
                category=getattr(details, "category", None),
                explanation=getattr(details, "explanation", None),
            )
        return reply

    def close(self) -> None:
        self._sdk.close()

    def __enter__(self) -> ClaudeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _cache_up_to_last(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A copy whose last message ends with a cache breakpoint (the caller's list is not changed)."""
    *earlier, last = messages
    content = last["content"]
    blocks = [{"type": "text", "text": content}] if isinstance(content, str) else [dict(b) for b in content]
    blocks[-1] = {**blocks[-1], "cache_control": _CACHED}
    return [*earlier, {**last, "content": blocks}]


def _error_of(response: Any) -> dict[str, Any]:
    """The ``error`` object of an API error reply, or {} if the body is not the documented shape."""
    try:
        response.http_response.read()
        body = response.http_response.json()
    except Exception:  # a non-JSON error page: nothing to classify
        return {}
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else {}

"""Which judge a round uses and how it may spend requests; nested in the run config as `judge:`."""

from __future__ import annotations

from dataclasses import dataclass

from strokes.errors import InputError

KINDS = ("oracle", "gpt", "self")


@dataclass
class JudgeConfig:
    """How steps are judged.

    kind: "oracle" (exact, from the ShapeWorld checker), "gpt" (any OpenAI-compatible endpoint,
        our own `selfplay judge-serve` included) or "self" (the current policy's own Inspect).
    base_url: the endpoint for kind "gpt", e.g. "http://127.0.0.1:8000/v1"; None is api.openai.com.
    model: the model name sent with every request.
    api_key_env: name of the environment variable that holds the API key (the key itself never
        goes into a config file). Unset is allowed for a keyless endpoint named by `base_url`.
    concurrency: requests in flight at once.
    max_retries: retries per request after a timeout, a dropped connection or HTTP 408/409/429/5xx.
    backoff: first retry delay in seconds; each further retry doubles it (a Retry-After header wins).
    timeout_s: per-request timeout in seconds.
    budget_requests: HTTP requests (retries included) one round may send; 0 = unlimited.
    budget_tokens: total tokens (prompt + completion, as the endpoint reports them) one round may
        spend; 0 = unlimited. Requests already in flight when it runs out still complete.
    cache_dir: folder of cached answers keyed by a hash of the full request; "" disables the cache.
    prompts_file: the judge prompts (YAML); "" is the built-in `judges/prompts.yaml`.
    """

    kind: str = "oracle"
    base_url: str | None = None
    model: str = "gpt-4.1-mini"
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 8
    max_retries: int = 4
    backoff: float = 0.5
    timeout_s: float = 60.0
    budget_requests: int = 0
    budget_tokens: int = 0
    cache_dir: str = ""
    prompts_file: str = ""

    def validate(self, where: str = "judge") -> "JudgeConfig":
        """Raise a one-line InputError naming the first bad field; return self."""
        if self.kind not in KINDS:
            raise InputError(f"config field '{where}.kind' must be one of {', '.join(KINDS)}, got {self.kind!r}")
        for name in ("concurrency",):
            if getattr(self, name) < 1:
                raise InputError(f"config field '{where}.{name}' must be at least 1, got {getattr(self, name)}")
        for name in ("max_retries", "budget_requests", "budget_tokens"):
            if getattr(self, name) < 0:
                raise InputError(f"config field '{where}.{name}' must be >= 0, got {getattr(self, name)}")
        for name in ("backoff", "timeout_s"):
            if not getattr(self, name) > 0:
                raise InputError(f"config field '{where}.{name}' must be > 0, got {getattr(self, name)}")
        if not self.model:
            raise InputError(f"config field '{where}.model' must not be empty")
        return self

"""Which judge a round uses and how it may spend requests; nested in the run config as `judge:`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from strokes.config_loader import require
from strokes.errors import InputError

KINDS = ("oracle", "gpt", "self", "vlm")
SERVABLE = ("", "oracle", "self", "vlm")  # judges a run can serve to itself (`JudgeConfig.serve`)
FINAL_REWARDS = ("auto", "holistic", "questions", "likelihood")


@dataclass
class JudgeConfig:
    """How steps are judged."""

    SECTION: ClassVar[str] = "judge"

    kind: str = "oracle"
    """"oracle" (exact, from the ShapeWorld checker), "gpt" (any OpenAI-compatible endpoint, our own
    `selfplay judge-serve` included), "self" (the current policy's own Inspect) or "vlm" (the stand-in
    VLM judge: the exact one with `profile`'s mistakes, judges/vlm.py)."""
    base_url: str | None = None
    """The endpoint for kind "gpt", e.g. "http://127.0.0.1:8000/v1"; None is api.openai.com."""
    model: str = "gpt-4.1-mini"
    """The model name sent with every request."""
    api_key_env: str = "OPENAI_API_KEY"
    """Name of the environment variable that holds the API key (the key itself never goes into a
    config file). Unset is allowed for a keyless endpoint named by `base_url`."""
    concurrency: int = 8
    """Requests in flight at once."""
    max_retries: int = 4
    """Retries per request after a timeout, a dropped connection or HTTP 408/409/429/5xx."""
    backoff: float = 0.5
    """First retry delay in seconds; each further retry doubles it (a Retry-After header wins)."""
    timeout_s: float = 60.0
    """Per-request timeout in seconds."""
    budget_requests: int = 0
    """HTTP requests (retries included) one round may send; 0 = unlimited."""
    budget_tokens: int = 0
    """Total tokens (prompt + completion, as the endpoint reports them) one round may spend;
    0 = unlimited. Requests already in flight when it runs out still complete."""
    cache_dir: str = ""
    """Folder of cached answers keyed by a hash of the full request; "" disables the cache."""
    prompts_file: str = ""
    """The judge prompts (YAML), or a built-in set by name: "" (ShapeWorld's, `judges/prompts.yaml`) or
    "natural" (natural images in GenEval's terms, `judges/prompts_natural.yaml`)."""
    final_reward: str = "auto"
    """How GRPO's final reward asks the judge about a finished picture: "holistic" (one verdict on
    the last step: 1 or 0), "questions" (one question per part of the prompt, the reward the share
    answered yes: robust to a judge's mistakes, selfplay/questions.py) or "auto" (questions for kinds
    gpt and vlm and for a self judge with a `question_judge`, holistic for self without one; the exact
    judge always scores by GenEval's exact rule); with kind self, "likelihood": 1 - the judge's
    P(conflict) at the last state (graded, selfplay/self_reading.py)."""
    logprobs: bool = True
    """Ask the endpoint for the answer's token log-probabilities (`logprobs`, `top_logprobs`) and
    use its P(yes) as each atomic question's graded answer in GRPO's final reward, where it returns
    them (an endpoint that does not, or a holistic reward, keeps the yes/no answers). Kind vlm in
    process: its own P(conflict) the same way. Off for an endpoint that refuses them (OpenAI's
    reasoning models)."""
    graded_steps: bool = True
    """GRPO's step credit (the verdict words' credit and refine's steps left wrong) reads each visual
    state's label as the judge's P(conflict) instead of its verdict, where it says how sure it is
    (kind vlm; kind gpt with `logprobs`): an unsure label, where a VLM's mistakes are, moves the
    advantages less (selfplay/rewards.py). A judge that cannot say (the exact one, an endpoint
    without log-probabilities) keeps its verdicts; kind self reads its states its own way."""
    max_unjudged: float = 0.05
    """The share of a GRPO step's or a critique stage's verdicts that may be missing (a dead or
    failing judge) before the round stops with one line naming the causes (judges/unjudged.py)."""
    profile: str = "typical"
    """The stand-in VLM judge's error profile (kind or serve "vlm"): "strong", "typical" or a YAML file."""
    profile_seed: int = 0
    """Its seed: which steps it gets wrong (the same steps, asked again, the same way)."""
    serve: str = ""
    """With kind "gpt": start this judge of ours ("oracle", "vlm", or "self" = the base checkpoint's Inspect)
    behind the OpenAI-compatible judge server on 127.0.0.1 for the run and judge through it, as a
    remote endpoint is judged (`base_url` and `model` are then the server's); "" uses `base_url`."""
    inspector: str = ""
    """With kind "self": a fitted attention Inspect head (`selfplay fit-inspector`'s folder) judges the
    rounds instead of the parent's verdict word: a frozen copy of the checkpoint it was fitted on
    reads each trajectory, and the head's threshold decides (selfplay/inspector.py)."""
    question_judge: str = ""
    """With kind self: a judge copy of the model trained to answer atomic questions (`selfplay
    fit-judge`'s folder) answers the finished picture's questions, each graded by its P(yes), for
    GRPO's final reward (selfplay/question_judge.py); the step labels stay the reader's. A
    transcriber copy's folder (`selfplay fit-judge --transcribe`) reads the picture instead, and the
    world's rule answers the questions over what it read."""

    def __post_init__(self) -> None:
        self.validate()

    @property
    def asks_questions(self) -> bool:
        """Whether GRPO's final reward asks atomic questions (`final_reward`)."""
        return self.final_reward == "questions" or (
            self.final_reward == "auto" and (self.kind in ("gpt", "vlm") or bool(self.question_judge)))

    def validate(self) -> "JudgeConfig":
        """Check every field (a one-line InputError naming the first bad one); returns self."""
        require(self, "kind", self.kind in KINDS, f"must be one of {', '.join(KINDS)}")
        require(self, "concurrency", self.concurrency >= 1, "must be at least 1")
        for name in ("max_retries", "budget_requests", "budget_tokens"):
            require(self, name, getattr(self, name) >= 0, "must be >= 0")
        for name in ("backoff", "timeout_s"):
            require(self, name, getattr(self, name) > 0, "must be > 0")
        require(self, "model", bool(self.model), "must not be empty")
        require(self, "final_reward", self.final_reward in FINAL_REWARDS, f"must be one of {', '.join(FINAL_REWARDS)}")
        require(self, "final_reward", self.final_reward != "likelihood" or self.kind == "self",
                "'likelihood' needs kind: self (the policy's own P(conflict))")
        require(self, "inspector", not self.inspector or self.kind == "self",
                "needs kind: self (the head is the model's own inspection)")
        require(self, "question_judge", not self.question_judge or self.kind == "self",
                "needs kind: self (the judge copy is the model's own understanding)")
        require(self, "question_judge", not self.question_judge or self.final_reward in ("auto", "questions"),
                f"answers atomic questions: final_reward must be questions or auto, not {self.final_reward}")
        require(self, "final_reward",
                self.final_reward != "questions" or self.kind != "self" or bool(self.question_judge),
                "questions with kind self needs judge.question_judge (`selfplay fit-judge`): the policy's own "
                "Inspect has never been asked one")
        require(self, "max_unjudged", 0.0 <= self.max_unjudged <= 1.0, "must be a fraction between 0 and 1")
        require(self, "serve", self.serve in SERVABLE, f"must be one of {', '.join(map(repr, SERVABLE))}")
        require(self, "serve", not self.serve or self.kind == "gpt",
                "needs kind: gpt (the served judge is reached over the OpenAI API)")
        if "vlm" in (self.kind, self.serve):
            from .vlm import load_profile

            try:
                load_profile(self.profile)
            except InputError as e:
                raise InputError(f"judge.profile: {e}") from None
        return self

"""Judge quality: precision and recall of a judge's conflicts against the oracle's.

The labelled set comes from the base pipelines: every deliberately wrong step (a plan that
contradicts the prompt, a sketch that does not follow its plan) is a negative and as many aligned
steps are positives, spread over the six tasks and both pipelines. The oracle's verdicts on the
same steps are the reference; a judge is scored on:

- `conflict (any)`: steps flagged as not aligned (the decision that matters most: which steps the
  critique builder turns into training data);
- per source (image, instruction) and per conflict kind: conflicts counted with multiplicity, a hit
  being a conflict of that kind the oracle also reports on that step;
- how often its corrective instruction equals the oracle's (flagged steps) and how often its
  "still missing" list does (aligned steps);
- where the judge says how sure it is (an endpoint's token log-probabilities, the stand-in VLM's
  P(conflict)), how well that ranks the wrong steps above the right ones (ROC AUC) against its
  yes/no verdict's: what a graded reward gains from your endpoint (`judge.logprobs`).

A step the judge could not judge (None) counts as judged "no conflict" for recall and is reported.

`rephrase_consistency` asks the same steps again with the prompt reworded: how often a mistake
repeats decides whether asking each question several ways can average a judge's mistakes out (a
VLM at temperature 0 repeats a mistake when asked the same words; docs/judges.md, "Votes over
rephrasings").
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections import Counter
from dataclasses import dataclass, field

from strokes.data.pipelines import PipelineConfig, TrajectoryMaker
from strokes.records import TASKS
from strokes.shapeworld.suites import sample_record
from strokes.verdict import ConflictKind, Judge, StepContext, Verdict, graded_verdicts

from .oracle import OracleJudge
from .unjudged import judge_stats


def labelled_contexts(n: int, seed: int = 0, split: str = "test", size: int = 64) -> list[StepContext]:
    """`n` step contexts: n//2 wrong steps (from the conflict and alignment pipelines, alternating,
    over the six tasks in turn) and the rest aligned steps, one drawn at random per trajectory."""
    maker = TrajectoryMaker(PipelineConfig(conflict_negative=1.0, alignment_negative=1.0), size)
    rng = random.Random(f"judge-eval:{seed}")
    want_neg, want_pos = n // 2, n - n // 2
    neg: list[StepContext] = []
    pos: list[StepContext] = []
    i = 0
    while len(neg) < want_neg or len(pos) < want_pos:
        rec = sample_record(TASKS[i % len(TASKS)], rng, split)
        source = ("conflict", "alignment")[(i // len(TASKS)) % 2]
        i += 1
        t = maker.make(source, rec, rng)
        contexts = []
        for k, s in enumerate(t.steps):
            prev = t.steps[k - 1].final_image if k else None
            contexts.append((s.wrong_plan or s.wrong_image,
                             StepContext(t.prompt, s.instruction, s.description, s.image, t.record, t.steps[:k], prev)))
        bad = [c for wrong, c in contexts if wrong]
        good = [c for wrong, c in contexts if not wrong]
        if bad and len(neg) < want_neg:
            neg.append(bad[0])
        if good and len(pos) < want_pos:
            pos.append(rng.choice(good))
    out = neg + pos
    rng.shuffle(out)
    return out


@dataclass
class Row:
    name: str
    reference: int = 0  # what the oracle reports
    judged: int = 0  # what the judge reports
    hits: int = 0  # both

    @property
    def precision(self) -> float | None:
        return self.hits / self.judged if self.judged else None

    @property
    def recall(self) -> float | None:
        return self.hits / self.reference if self.reference else None

    def to_json(self) -> dict:
        return {"name": self.name, "reference": self.reference, "judged": self.judged, "hits": self.hits,
                "precision": self.precision, "recall": self.recall}


@dataclass
class EvalReport:
    judge: str
    steps: int
    negatives: int  # steps the oracle flags
    unjudged: int  # steps the judge returned no verdict for
    rows: list[Row]
    correction_match: float | None  # share of steps both flag where the corrections are equal
    missing_match: float | None  # share of steps both pass where the "still missing" lists are equal
    seconds: float
    stats: dict = field(default_factory=dict)
    auc_verdict: float | None = None  # ROC AUC of its verdict (conflict: 1) against the oracle's, judged steps
    auc_graded: float | None = None  # the same for its P(conflict), where it gave one for every judged step

    def row(self, name: str) -> Row:
        return next(r for r in self.rows if r.name == name)

    def table(self) -> str:
        def pct(x: float | None) -> str:
            return "   n/a" if x is None else f"{100 * x:6.1f}"

        lines = [f"judge {self.judge}: {self.steps} steps ({self.negatives} with a conflict, "
                 f"{self.steps - self.negatives} aligned), {self.unjudged} unjudged, {self.seconds:.1f} s",
                 f"{'':22} {'oracle':>7} {'judge':>7} {'hits':>7} {'prec %':>7} {'recall %':>9}"]
        for r in self.rows:
            lines.append(f"{r.name:22} {r.reference:7d} {r.judged:7d} {r.hits:7d} {pct(r.precision):>7} {pct(r.recall):>9}")
        lines.append(f"corrections equal to the oracle's: {pct(self.correction_match).strip()} %;  "
                     f"'still missing' equal: {pct(self.missing_match).strip()} %")
        if self.auc_verdict is not None:
            lines.append(f"ranking wrong steps first (ROC AUC): its verdict {pct(self.auc_verdict).strip()}, its "
                         + (f"P(conflict) {pct(self.auc_graded).strip()}" if self.auc_graded is not None
                            else "P(conflict) n/a (no log-probabilities)"))
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"judge": self.judge, "steps": self.steps, "negatives": self.negatives, "unjudged": self.unjudged,
                "rows": [r.to_json() for r in self.rows], "correction_match": self.correction_match,
                "missing_match": self.missing_match, "seconds": self.seconds, "stats": self.stats,
                "auc_verdict": self.auc_verdict, "auc_graded": self.auc_graded}


def evaluate(judge: Judge, contexts: list[StepContext], name: str = "", batch_size: int = 64) -> EvalReport:
    """Score `judge` against the oracle on `contexts` (judged in batches of `batch_size`)."""
    reference = OracleJudge().judge(contexts)
    t0 = time.perf_counter()
    graded = _in_batches(judge, contexts, batch_size)
    seconds = time.perf_counter() - t0
    return score(reference, [v for v, _ in graded], name or getattr(judge, "name", type(judge).__name__), seconds,
                 judge_stats(judge), [p for _, p in graded])


def _in_batches(judge: Judge, contexts: list[StepContext],
                batch_size: int) -> list[tuple[Verdict | None, float | None]]:
    """The judge's verdicts (with its P(conflict) where it gives one), `batch_size` steps a call."""
    return [got for i in range(0, len(contexts), batch_size)
            for got in graded_verdicts(judge, contexts[i: i + batch_size])]


def score(reference: list[Verdict], verdicts: list[Verdict | None], name: str, seconds: float = 0.0,
          stats: dict | None = None, p_conflict: list[float | None] | None = None) -> EvalReport:
    """The report for verdicts (with the judge's P(conflict) where it gave them) against reference
    verdicts of the same steps."""
    any_row = Row("conflict (any)")
    sources = {s: Row(f"source: {s}") for s in ("instruction", "image")}
    kinds = {k.value: Row(f"kind: {k.value}") for k in ConflictKind}
    fixes = Counter()
    for ref, got in zip(reference, verdicts):
        flagged = got is not None and not got.aligned
        any_row.reference += not ref.aligned
        any_row.judged += flagged
        any_row.hits += flagged and not ref.aligned
        for rows, key in ((sources, lambda c: c.source), (kinds, lambda c: c.kind.value)):
            r_count = Counter(key(c) for c in ref.conflicts)
            g_count = Counter(key(c) for c in got.conflicts) if got is not None else Counter()
            for k, row in rows.items():
                row.reference += r_count[k]
                row.judged += g_count[k]
                row.hits += min(r_count[k], g_count[k])
        if flagged and not ref.aligned:
            fixes["flagged"] += 1
            fixes["correction"] += got.correction.strip() == ref.correction
        if got is not None and got.aligned and ref.aligned:
            fixes["passed"] += 1
            fixes["missing"] += list(got.missing) == list(ref.missing)
    return EvalReport(
        judge=name, steps=len(reference), negatives=any_row.reference,
        unjudged=sum(v is None for v in verdicts), rows=[any_row, *sources.values(), *kinds.values()],
        correction_match=fixes["correction"] / fixes["flagged"] if fixes["flagged"] else None,
        missing_match=fixes["missing"] / fixes["passed"] if fixes["passed"] else None,
        seconds=seconds, stats=stats or {}, **_aucs(reference, verdicts, p_conflict))


def _aucs(reference: list[Verdict], verdicts: list[Verdict | None], p_conflict: list[float | None] | None) -> dict:
    """ROC AUC of the verdict and of P(conflict) against the oracle's, over the judged steps (None
    where the oracle's steps are all one label, or for P when any judged step lacks one)."""
    from sklearn.metrics import roc_auc_score

    judged = [k for k, v in enumerate(verdicts) if v is not None]
    wrong = [not reference[k].aligned for k in judged]
    if len(set(wrong)) < 2:
        return {}
    out = {"auc_verdict": float(roc_auc_score(wrong, [not verdicts[k].aligned for k in judged]))}
    if p_conflict is not None and all(p_conflict[k] is not None for k in judged):
        out["auc_graded"] = float(roc_auc_score(wrong, [p_conflict[k] for k in judged]))
    return out


REWORDINGS = ("Does the picture show {}?", "Is this an image of {}?", "Look at the image: {}?",
              "True or false: the picture is {}.")
"""How a step is asked again: its prompt line reworded (`{}` the prompt), what is asked unchanged."""


@dataclass
class Consistency:
    """One rewording against the prompt as written, on the same steps: the judge's mistakes as
    written, its error rate reworded, and how many of the first are mistakes again reworded."""

    rewording: str
    steps: int  # steps judged both ways
    wrong: int  # of them, those whose verdict as written differs from the oracle's
    wrong_reworded: int  # those whose verdict reworded differs from the oracle's
    repeated: int  # those wrong both ways

    @property
    def error_rate(self) -> float:
        """The reworded asks' error rate: how often a fresh ask errs."""
        return self.wrong_reworded / self.steps if self.steps else float("nan")

    @property
    def repeat_rate(self) -> float | None:
        """Of the mistakes as written, the share made again reworded (None: no mistake)."""
        return self.repeated / self.wrong if self.wrong else None

    @property
    def rho(self) -> float | None:
        """The chance a reworded ask repeats the mistake rather than erring afresh with the error
        rate e: (repeat rate - e) / (1 - e), the rho of `benchmarks/robust_reward.py --votes`."""
        w, e = self.repeat_rate, self.error_rate
        return None if w is None or e >= 1 else (w - e) / (1 - e)


def rephrase_consistency(judge: Judge, contexts: list[StepContext], rewordings: tuple[str, ...] = REWORDINGS,
                         batch_size: int = 64) -> list[Consistency]:
    """Each step asked as written and once per rewording; a verdict is a mistake when its
    aligned-or-not differs from the oracle's. A step left unjudged either way is left out."""
    truth = [v.aligned for v in OracleJudge().judge(contexts)]

    def wrong_each(asked: list[StepContext]) -> list[bool | None]:
        got = _in_batches(judge, asked, batch_size)
        return [None if v is None else v.aligned != t for (v, _), t in zip(got, truth)]

    written = wrong_each(contexts)
    out = []
    for wording in rewordings:
        again = wrong_each([dataclasses.replace(c, prompt=wording.format(c.prompt)) for c in contexts])
        both = [(a, b) for a, b in zip(written, again) if a is not None and b is not None]
        out.append(Consistency(wording, len(both), sum(a for a, _ in both), sum(b for _, b in both),
                               sum(a and b for a, b in both)))
    return out


def consistency_table(rows: list[Consistency]) -> str:
    """The rewordings' table as `selfplay judge-eval --rephrase` prints it."""
    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x:.1f} %"

    lines = [f"{'asked again as':36} {'steps':>6} {'wrong as written':>17} {'wrong reworded':>15} "
             f"{'repeated':>15} {'rho':>6}"]
    for r in rows:
        rho = "n/a" if r.rho is None else f"{r.rho:.2f}"
        lines.append(f"{r.rewording!r:36} {r.steps:6d} {r.wrong:>17d} {pct(r.error_rate):>15} "
                     f"{f'{r.repeated} ({pct(r.repeat_rate)})':>15} {rho:>6}")
    return "\n".join(lines)

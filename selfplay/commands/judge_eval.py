"""`selfplay judge-eval`: a judge's precision and recall of conflicts against the oracle.

The steps come from the base pipelines (half deliberately wrong, half aligned, over all six tasks);
the table has one row for flagged steps, one per conflict source and one per conflict kind, and
under it why the unjudged steps went unjudged and what was retried. With `--rephrase` the same
steps are asked again, the prompt reworded four ways: how often the judge's mistakes repeat (rho),
which decides whether votes over rephrasings would average them out (docs/judges.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from .judge_serve import add_self_judge_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("judge-eval", help="measure a judge's precision and recall against the oracle")
    p.add_argument("--judge", choices=("oracle", "gpt", "self", "vlm"), default="oracle")
    p.add_argument("--n", type=int, default=500, help="steps to judge (half with a conflict)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", choices=("train", "test"), default="test", help="prompt split the steps come from")
    p.add_argument("--base-url", default=None, help="endpoint for --judge gpt, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--model", default="gpt-4.1-mini", help="model name for --judge gpt")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    p.add_argument("--max-retries", type=int, default=4)
    p.add_argument("--budget-requests", type=int, default=0, help="0: unlimited")
    p.add_argument("--cache-dir", default="", help="cache answers here (a rerun then pays nothing)")
    p.add_argument("--prompts-file", default="")
    add_self_judge_args(p)
    p.add_argument("--batch-size", type=int, default=64, help="steps per judge() call")
    p.add_argument("--rephrase", action="store_true",
                   help="also ask every step again as written and with its prompt reworded four ways (5 x --n "
                        "more requests) and print how often the judge's mistakes repeat")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from judges import JudgeConfig
    from judges.evaluate import consistency_table, evaluate, labelled_contexts, rephrase_consistency
    from judges.unjudged import failure_breakdown
    from strokes.errors import InputError

    from .judge_serve import judge_from_args

    if args.n < 2:
        raise InputError(f"--n must be at least 2, got {args.n}")
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {args.batch_size}")
    cfg = JudgeConfig(kind=args.judge, base_url=args.base_url, model=args.model, api_key_env=args.api_key_env,
                      concurrency=args.concurrency, timeout_s=args.timeout, max_retries=args.max_retries,
                      budget_requests=args.budget_requests, cache_dir=args.cache_dir, prompts_file=args.prompts_file,
                      profile=args.profile, profile_seed=args.profile_seed)
    judge = judge_from_args(args, cfg)
    name = args.judge
    if args.judge == "gpt":
        name = f"gpt ({args.model} at {judge.client.base_url})"
    elif args.judge == "self":
        name = f"self ({args.checkpoint}, T={args.temperature:g})"
    elif args.judge == "vlm":
        name = f"vlm ({args.profile}, seed {args.profile_seed})"
    contexts = labelled_contexts(args.n, args.seed, args.split)
    report = evaluate(judge, contexts, name, args.batch_size)
    reworded = rephrase_consistency(judge, contexts, batch_size=args.batch_size) if args.rephrase else []
    if args.json:
        out = report.to_json()
        if reworded:
            out["rephrase"] = [{**dataclasses.asdict(r), "rho": r.rho} for r in reworded]
        print(json.dumps(out, indent=2))
    else:
        print(report.table())
        print(failure_breakdown(report.stats))
        if reworded:
            print(consistency_table(reworded))
    if report.unjudged == report.steps:
        print(f"selfplay judge-eval: no step was judged ({failure_breakdown(report.stats)})", file=sys.stderr)
        return 1
    return 0

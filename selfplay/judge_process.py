"""The process a run's served judge lives in (`selfplay.judging.served_judge` starts it).

`python -m selfplay.judge_process` reads what to build from stdin (a pickled `JudgeConfig`,
checkpoint and `RolloutConfig`, handed over by the run that started it), serves that judge on a
free loopback port, writes one JSON line on stdout saying where (`{"base_url", "model"}`), and
serves until stdin says stop or closes (the run is gone, killed or not); then it writes how many
requests it answered (`{"served": N}`). A judge that cannot be built writes `{"error": ...}`.
A process started from the interpreter's command line, rather than multiprocessing's spawn,
re-imports nothing of the run's main script, so any script may serve a judge.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import sys


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the run's to handle; it then closes stdin
    protocol = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything else written to stdout (progress bars, prints) goes to stderr

    def say(message: dict) -> None:
        protocol.write(json.dumps(message) + "\n")
        protocol.flush()

    from judges.messages import load_prompts
    from judges.server import JudgeServer
    from strokes.errors import InputError

    from .judging import policy_judge

    cfg, checkpoint, rollout_cfg = pickle.load(sys.stdin.buffer)
    try:
        judge = policy_judge(cfg, checkpoint, rollout_cfg)
        server = JudgeServer(judge, port=0, prompts=load_prompts(cfg.prompts_file), max_batch=cfg.concurrency)
        server.start()
    except Exception as e:  # noqa: BLE001 (the run reports it in one line)
        say({"error": str(e) if isinstance(e, InputError) else f"{type(e).__name__}: {e}"})
        return
    try:
        say({"base_url": server.base_url, "model": server.model})
        sys.stdin.buffer.readline()  # "stop", or end of file when the run is gone
        say({"served": server.served})
    except OSError:  # the run closed its end first
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()

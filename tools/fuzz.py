"""Fuzz the SDK's public surface: ``identify``, ``identify_faces``, ``enroll``, ``verify``, the CLI, bundle loading
and galleries, with seeded generated cases (``tools/fuzz_cases.py`` says what is generated and how outcomes are
judged).

Each case runs in a worker process (``--workers``, each with its own Recognizer) so that a native crash (a
segfault in C++ or ONNX Runtime) or a hang (no answer within ``--timeout`` s) is caught, counted, and the worker
replaced. The JSON summary has the counts per target and outcome, every crash and hang with its spec (re-run one
with ``--replay SPEC_JSON``), and the machine. ``--corpus`` writes the interesting cases (the first of every
distinct target / input kind / outcome / message shape, fast ones only) as the regression corpus that
``tests/test_fuzz_corpus.py`` replays in the quick suite.

    python tools/fuzz.py --cases 10000 --seed 0 --out reports/fuzz.json --corpus tests/fuzz_corpus/cases.json

Exit code 0 when there were no crashes and no hangs, 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import time
from collections import Counter, defaultdict
from multiprocessing.connection import wait
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _report import emit  # noqa: E402 - benchmarks/_report.py: one JSON writer for every report

log = logging.getLogger("fuzz")


def worker_main(conn, scratch: str) -> None:
    """Worker process: build the environment once, then answer ``(index, spec)`` with ``(index, result, s)``."""
    import warnings

    warnings.simplefilter("ignore")
    logging.disable(logging.CRITICAL)
    from fuzz_cases import make_env, run_case

    env = make_env(Path(scratch))
    conn.send(("ready", None, 0.0))
    while True:
        msg = conn.recv()
        if msg is None:
            return
        index, spec = msg
        t0 = time.perf_counter()
        result = run_case(spec, env)
        conn.send((index, result, time.perf_counter() - t0))


class Worker:
    """One worker process and the case it is running."""

    def __init__(self, ctx, root: Path, n: int):
        self.scratch = root / f"w{n}_{time.monotonic_ns()}"
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=worker_main, args=(child, str(self.scratch)), daemon=True)
        self.proc.start()
        child.close()
        if not self.conn.poll(300):
            raise RuntimeError("a fuzz worker did not start within 300 s")
        self.conn.recv()
        self.job: tuple[int, dict] | None = None
        self.deadline = 0.0

    def submit(self, index: int, spec: dict, timeout: float) -> None:
        self.job, self.deadline = (index, spec), time.monotonic() + timeout
        self.conn.send((index, spec))

    def kill(self) -> None:
        self.proc.kill()
        self.proc.join(10)


def run(args: argparse.Namespace) -> dict:
    from fuzz_cases import make_case, signature

    ctx = mp.get_context("spawn")
    root = Path(tempfile.mkdtemp(prefix="lookthrough-fuzz-"))
    workers = [Worker(ctx, root, i) for i in range(args.workers)]
    todo = list(range(args.cases))[::-1]
    by_target: dict[str, Counter] = defaultdict(Counter)
    crashes, hangs, corpus, seen = [], [], [], set()
    slowest: list[tuple[float, int, str]] = []
    t_start = time.perf_counter()
    done = 0
    try:
        from tqdm import tqdm

        bar = tqdm(total=args.cases, desc="fuzz", unit="case", disable=args.quiet)
        while todo or any(w.job for w in workers):
            for w in workers:
                if w.job is None and todo:
                    i = todo.pop()
                    w.submit(i, make_case(args.seed, i), args.timeout)
            busy = [w for w in workers if w.job]
            ready = wait([w.conn for w in busy], timeout=max(0.0, min(w.deadline for w in busy) - time.monotonic()))
            for w in list(workers):
                if w.job is None:
                    continue
                index, spec = w.job
                result = None
                if w.conn in ready:
                    try:
                        _, result, secs = w.conn.recv()
                    except (EOFError, ConnectionError):
                        w.proc.join(5)
                        code = w.proc.exitcode
                        result, secs = {"outcome": f"crash:process_died({code})", "type": "native",
                                        "message": f"worker exited with code {code}"}, 0.0
                elif time.monotonic() > w.deadline:
                    result, secs = {"outcome": "hang", "type": "hang", "message": f"no answer in {args.timeout} s"}, args.timeout
                if result is None:
                    continue
                w.job = None
                if result["outcome"] == "hang" or result["outcome"].startswith("crash:process_died"):
                    w.kill()
                    workers[workers.index(w)] = Worker(ctx, root, index)
                by_target[spec["target"]][result["outcome"]] += 1
                entry = {"index": index, "spec": spec, **result, "seconds": round(secs, 3)}
                if result["outcome"] == "hang":
                    hangs.append(entry)
                elif result["outcome"].startswith("crash"):
                    crashes.append(entry)
                sig = signature(spec, result)
                if sig not in seen and (secs < args.corpus_max_s or not result["outcome"].startswith(("ok", "refused"))):
                    seen.add(sig)
                    corpus.append({"spec": spec, "outcome": result["outcome"], "message": result["message"][:160]})
                slowest = sorted(slowest + [(secs, index, spec["target"])], reverse=True)[:10]
                done += 1
                bar.update(1)
        bar.close()
    finally:
        for w in workers:
            try:
                w.conn.send(None)
            except (OSError, ValueError):
                pass
            w.kill()
    outcomes = Counter()
    for c in by_target.values():
        outcomes.update(c)
    refusal_types = Counter(k.split(":", 1)[1] for k in outcomes.elements() if k.startswith("refused:"))
    return {
        "tool": "tools/fuzz.py", "command": "python tools/fuzz.py " + " ".join(args.argv),
        "seed": args.seed, "cases": done, "seconds": round(time.perf_counter() - t_start, 1),
        "crashes": len(crashes), "hangs": len(hangs),
        "outcomes": dict(sorted(outcomes.items())), "refusal_types": dict(refusal_types),
        "by_target": {t: dict(sorted(c.items())) for t, c in sorted(by_target.items())},
        "crash_cases": crashes[:200], "hang_cases": hangs[:200],
        "slowest_cases": [{"seconds": round(s, 2), "index": i, "target": t} for s, i, t in slowest],
        "corpus": corpus,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "load_avg": os.getloadavg(), "python": platform.python_version()},
    }


def reduce_corpus(cases: list[dict]) -> list[dict]:
    """The first case of every :func:`fuzz_cases.signature`, in order."""
    from fuzz_cases import signature

    seen, out = set(), []
    for c in cases:
        sig = signature(c["spec"], {"outcome": c["outcome"], "message": c.get("message", "")})
        if sig not in seen:
            seen.add(sig)
            out.append(c)
    return out


def replay(spec: dict) -> dict:
    """Run one spec in this process (to debug a reported crash)."""
    from fuzz_cases import make_env, run_case

    return run_case(spec, make_env(Path(tempfile.mkdtemp(prefix="lookthrough-fuzz-replay-"))))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", type=int, default=1000, help="number of generated cases (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="run seed: the same seed and count give the same cases")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds a case may take before it counts as a hang")
    p.add_argument("--out", type=Path, help="JSON summary (default: stdout)")
    p.add_argument("--corpus", type=Path, help="write the interesting cases here (the regression corpus)")
    p.add_argument("--corpus-max-s", type=float, default=0.5, help="only cases faster than this go to the corpus")
    p.add_argument("--replay", help="run one case spec (JSON) in this process and print its outcome")
    p.add_argument("--reduce-corpus", type=Path, help="rewrite a corpus file keeping the first case per signature")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.replay:
        print(json.dumps(replay(json.loads(args.replay)), indent=2))
        return 0
    if args.reduce_corpus:
        doc = json.loads(args.reduce_corpus.read_text())
        doc["cases"] = reduce_corpus(doc["cases"])
        args.reduce_corpus.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"{args.reduce_corpus}: {len(doc['cases'])} cases", file=sys.stderr)
        return 0
    report = run(args)
    corpus = report.pop("corpus")
    report["corpus_cases"] = len(corpus)
    if args.corpus:
        args.corpus.parent.mkdir(parents=True, exist_ok=True)
        args.corpus.write_text(json.dumps({"seed": args.seed, "cases": corpus}, indent=1) + "\n")
    emit(report, args.out)
    print(f"{report['cases']} cases, {report['crashes']} crashes, {report['hangs']} hangs in {report['seconds']} s; "
          f"outcomes {report['outcomes']}", file=sys.stderr)
    return 0 if report["crashes"] == 0 and report["hangs"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

"""Gallery search at scale: exact (C++ brute force, the default) vs the approximate FAISS HNSW index, both through
``Gallery.search`` (the API the Recognizer calls), at 10k-1M templates.

Data: identity-structured 128-d unit vectors shaped like dlib face embeddings (all in one cone: a shared mean
direction + a per-person offset + per-photo noise, calibrated so two photos of one person have cosine ~0.93 and
two people ~0.75, as dlib's do), ``--per-id`` photos per person; each probe is a *new* photo of an enrolled person.

Threads: ``--threads`` (default 1) sets ``OMP_NUM_THREADS`` for both searches (and the HNSW build) before they load:
one core per query, the setting of a box where several streams search at once; on a busy shared VM multi-threaded
OpenMP timings measure the scheduler (a 10k-row exact search read 20 ms instead of 0.2 ms there).

Per size: single-query latency (p50 / p95 ms over ``--queries`` probes, k=5), exact vs HNSW at each
``--ef-search``; recall@1 of HNSW = fraction of probes whose best identity equals exact search's; accuracy of both
against the true identity; HNSW build time and memory (RSS growth). ``speedup`` = exact p50 / HNSW p50 (the
same-run baseline). The crossover is the smallest size where HNSW (default ef_search) is faster with recall@1 >= 0.99.

    python benchmarks/bench_gallery.py --sizes 10000 100000 1000000 --out benchmarks/results/gallery.json
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from _report import emit  # benchmarks/_report.py (this folder is sys.path[0] when run as a script)

if __name__ == "__main__":  # before the C++ core and FAISS load their OpenMP runtimes
    _t = sys.argv[sys.argv.index("--threads") + 1] if "--threads" in sys.argv[:-1] else "1"
    os.environ["OMP_NUM_THREADS"] = _t

from sdk.ann import HnswParams  # noqa: E402
from sdk.gallery import Gallery  # noqa: E402


def rss_mb() -> float:
    """Resident set size of this process in MB (Linux /proc)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def face_like(n_ids: int, per_id: int, n_probes: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(rows (n_ids*per_id, dim), probes (n_probes, dim), probe_ids)``: unit float32 vectors in a cone."""
    rng = np.random.default_rng(seed)
    mu = rng.normal(size=dim).astype(np.float32)
    mu /= np.linalg.norm(mu)
    s_person, s_photo = 0.49, 0.305  # cos(same) = (1+.24)/(1+.24+.093) ~ .93, cos(other) = 1/1.333 ~ .75
    rows = np.empty((n_ids * per_id, dim), np.float32)
    chunk = 20_000
    for a in range(0, n_ids, chunk):
        b = min(n_ids, a + chunk)
        centre = mu + s_person * rng.normal(size=(b - a, dim)).astype(np.float32) / np.sqrt(dim)
        x = np.repeat(centre, per_id, axis=0) + s_photo * rng.normal(size=((b - a) * per_id, dim)).astype(np.float32) / np.sqrt(dim)
        rows[a * per_id:b * per_id] = x / np.linalg.norm(x, axis=1, keepdims=True)
    probe_ids = rng.integers(0, n_ids, n_probes)
    # a new photo of person i: that person's centre is recovered from the mean of the stored rows (+ fresh noise)
    centres = rows.reshape(n_ids, per_id, dim)[probe_ids].mean(axis=1)
    p = centres + s_photo * rng.normal(size=(n_probes, dim)).astype(np.float32) / np.sqrt(dim)
    return rows, (p / np.linalg.norm(p, axis=1, keepdims=True)).astype(np.float32), probe_ids


def time_search(g: Gallery, probes: np.ndarray, k: int) -> tuple[dict, list[str]]:
    """p50 / p95 ms of single-probe ``g.search`` and the best identity of each probe."""
    g.search(probes[:5], k)  # warm-up
    times, best = [], []
    for p in probes:
        t0 = time.perf_counter()
        hits = g.search(p, k)[0]
        times.append(time.perf_counter() - t0)
        best.append(hits[0].name)
    ms = np.array(times) * 1e3
    return {"p50_ms": round(float(np.median(ms)), 4), "p95_ms": round(float(np.percentile(ms, 95)), 4)}, best


def bench_size(n: int, args: argparse.Namespace) -> dict:
    n_ids = max(1, n // args.per_id)
    rows, probes, probe_ids = face_like(n_ids, args.per_id, args.queries, args.dim, args.seed)
    names = np.repeat([f"id{i}" for i in range(n_ids)], args.per_id).tolist()
    truth = [f"id{i}" for i in probe_ids]
    g = Gallery(None, "bench", args.dim)
    for a in range(0, len(rows), 100_000):
        g.add_many(names[a:a + 100_000], rows[a:a + 100_000])
    exact, exact_best = time_search(g, probes, args.k)
    rss0, t0 = rss_mb(), time.perf_counter()
    g.set_index("hnsw", HnswParams(args.m, args.ef_construction, args.ef_search[0]), persist=False)
    build_s, index_mb = time.perf_counter() - t0, rss_mb() - rss0
    out = {"rows": len(rows), "identities": n_ids, "exact": {**exact, "accuracy": float(np.mean([a == b for a, b in zip(exact_best, truth)]))},
           "hnsw_build_s": round(build_s, 2), "hnsw_index_rss_mb": round(index_mb, 1), "hnsw": []}
    for ef in args.ef_search:
        g._snap.ann.set_ef_search(ef)
        lat, best = time_search(g, probes, args.k)
        out["hnsw"].append({"ef_search": ef, **lat,
                            "recall_at_1_vs_exact": float(np.mean([a == b for a, b in zip(best, exact_best)])),
                            "accuracy": float(np.mean([a == b for a, b in zip(best, truth)])),
                            "speedup_p50": round(exact["p50_ms"] / max(lat["p50_ms"], 1e-9), 2)})
    g.close()
    return out


def crossover(results: list[dict], default_ef: int, min_recall: float = 0.99) -> int | None:
    """Smallest measured size where HNSW at ``default_ef`` beats exact p50 with recall@1 >= ``min_recall``."""
    for r in results:
        h = next(x for x in r["hnsw"] if x["ef_search"] == default_ef)
        if h["p50_ms"] < r["exact"]["p50_ms"] and h["recall_at_1_vs_exact"] >= min_recall:
            return r["rows"]
    return None


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["rows"] for r in results]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    a.plot(sizes, [r["exact"]["p50_ms"] for r in results], "k-o", label="exact (C++ brute force)")
    for i, ef in enumerate(x["ef_search"] for x in results[0]["hnsw"]):
        a.plot(sizes, [r["hnsw"][i]["p50_ms"] for r in results], "-s", label=f"HNSW ef_search={ef}")
        b.plot(sizes, [r["hnsw"][i]["recall_at_1_vs_exact"] for r in results], "-s", label=f"HNSW ef_search={ef}")
    a.set(xscale="log", yscale="log", xlabel="gallery templates", ylabel="p50 latency per query (ms)",
          title="Gallery.search, 1 query, k=5")
    b.set(xscale="log", xlabel="gallery templates", ylabel="recall@1 vs exact", title="HNSW agreement with exact search")
    b.axhline(0.99, color="grey", ls=":", lw=1)
    for ax in (a, b):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000], help="gallery templates")
    p.add_argument("--dim", type=int, default=128, help="embedding dimension (dlib: 128)")
    p.add_argument("--per-id", type=int, default=5, help="templates per identity")
    p.add_argument("--queries", type=int, default=300, help="single-probe searches timed per size and setting")
    p.add_argument("--k", type=int, default=5, help="identities returned per search")
    p.add_argument("--m", type=int, default=HnswParams.m, help="HNSW neighbours per node")
    p.add_argument("--ef-construction", type=int, default=HnswParams.ef_construction)
    p.add_argument("--ef-search", type=int, nargs="+", default=[HnswParams.ef_search, 32, 256],
                   help="HNSW ef_search values (the first is the SDK default, used for the crossover)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="OpenMP threads (OMP_NUM_THREADS) of both searches and the build")
    p.add_argument("--out", type=Path, help="JSON report (default: stdout)")
    p.add_argument("--plot", type=Path, help="PNG of latency and recall vs size (default: next to --out)")
    args = p.parse_args(argv)
    results = []
    for n in tqdm(sorted(args.sizes), desc="sizes", file=sys.stderr):
        results.append(bench_size(n, args))
        print(f"{n}: exact p50 {results[-1]['exact']['p50_ms']} ms, HNSW {results[-1]['hnsw'][0]}", file=sys.stderr)
    report = {
        "benchmark": "gallery_search", "machine": {"cpu": platform.processor() or platform.machine(),
                                                   "cores": os.cpu_count(), "load_avg": os.getloadavg()},
        "command": "python benchmarks/bench_gallery.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "params": {"threads": int(os.environ.get("OMP_NUM_THREADS", "0")), "dim": args.dim, "per_id": args.per_id, "queries": args.queries, "k": args.k, "m": args.m,
                   "ef_construction": args.ef_construction, "ef_search": args.ef_search},
        "results": results, "crossover_rows": crossover(results, args.ef_search[0]),
    }
    emit(report, args.out)
    png = args.plot or (args.out.with_suffix(".png") if args.out else None)
    if png:
        plot(results, png)
        print(f"wrote {png}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

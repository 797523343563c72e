"""The same corpus on one 2-CPU node and on a multi-node ``ray.cluster_utils.Cluster``.

    .venv/bin/python -m bench.bench_cluster [--copies 4] [--nodes 2]

The cluster has a CPU-less head (the driver's node, as on a real cluster) and ``--nodes``
worker nodes that split this machine's CPUs between them, so both runs have the same cores:
what differs is that videos, face blobs and results cross raylets and object stores, and
that the pools are packed per node. Prints videos/min, the stage plan, pool utilisation,
and the cross-node cost as a ratio. One machine cannot show more nodes giving more speed;
docs/SCALING.md combines this ratio with the per-core rates into the capacity model.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def run(corpus: Path, out: Path, overrides: list[str]) -> dict:
    from workflows.annotate.pipeline import AnnotateConfig, annotate
    from workflows.core.config import load_config

    cfg = load_config(AnnotateConfig, None, ["mlflow.enabled=false", *overrides])
    t0 = time.perf_counter()
    s = annotate(str(corpus), str(out), cfg, progress=False)
    wall = time.perf_counter() - t0
    return {"videos": s.videos_ok + s.videos_error, "faces": s.faces, "wall_s": wall, "plan": s.plan,
            "util": s.utilisation(), "first_s": s.first_result_s, "pools": s.pools_line()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--copies", type=int, default=4)
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--json", default="")
    a = ap.parse_args(argv)
    import ray
    from ray.cluster_utils import Cluster

    from bench.bench_pipeline import build_corpus

    cpus = os.cpu_count() or 2
    per_node = cpus / a.nodes
    results = {}
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        corpus = build_corpus(d / "in", a.copies)
        warm = build_corpus(d / "warm", 1)
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, configure_logging=False,
                 log_to_driver=False)
        run(warm, d / "w1", [])
        results["single_node"] = run(corpus, d / "o1", [])
        ray.shutdown()
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
        try:
            for _ in range(a.nodes):
                cluster.add_node(num_cpus=per_node)
            cluster.wait_for_nodes()
            ray.init(address=cluster.address, configure_logging=False, log_to_driver=False)
            run(warm, d / "w2", [])
            results["cluster"] = run(corpus, d / "o2", [])
        finally:
            ray.shutdown()
            cluster.shutdown()
    one, many = results["single_node"], results["cluster"]
    for name, r in results.items():
        print(f"{name:12s} {r['videos'] / r['wall_s'] * 60:7.1f} videos/min  wall {r['wall_s']:6.1f} s  "
              f"pools: {r['pools']}")
    print(f"{a.nodes} nodes x {per_node:g} CPU + CPU-less head vs 1 node x {cpus} CPU: "
          f"{one['wall_s'] / many['wall_s']:.2f}x the single node's rate ({len(os.sched_getaffinity(0))} cores shared)")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

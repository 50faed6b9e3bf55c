#!/usr/bin/env python3
"""bench/relay.py: what slotman's relay costs a native worker (issue 18).

The same PHP GearmanWorker (bench/workers/echo_worker.php) run directly
against gearmand and as a `native` slotman worker behind the slot's relay
(`proxy = true`, the default), N = 1, 4, 16 processes each, both pools
registered at one gearmand and measured alternately in the same run
(closed-loop load from bench/loadgen, as bench/run's S1). Reports jobs/s,
the ratio relay / direct, and CPU per job of the workers, the slot runners
(the relay) and gearmand; at N = 4 also a job that sleeps 1 ms.

    bench/relay.py [--quick] [--ns 1,4,16] [--reps N] [--slotman PATH] [--compare PATH]

--compare PATH adds a third pool run by another slotman binary (B), in
the same alternation: an A/B of two builds of the relay in one run.

Needs gearmand, php-cli with php-gearman, cargo (builds bench/loadgen) and
a packaged-profile build of slotman (`cargo build --profile dist`). Prints a JSON
object and a markdown table; writes both to bench/out/relay-<timestamp>/.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
WORKER = os.path.join(BENCH, "workers", "echo_worker.php")
sys.path.insert(0, BENCH)
from s3_scopes import load_bench_run  # noqa: E402  (bench/run as a module)


def measure(B, ctx, n, php):
    """{case: summary} for one pool size."""
    g = B.Gearmand(ctx.out)
    direct = [B.spawn([php, WORKER, "127.0.0.1:%d" % g.port, "d::"]) for _ in range(n)]
    # (case suffix, worker name, ctx): the slotman under test, and the one
    # it is compared with (--compare), each a pool of its own.
    pools = [("", "r", ctx)] + ([("_b", "b", ctx.b)] if ctx.b else [])
    relays = [(sfx, w, B.Slotman(c, "relay%d%s" % (n, sfx), g.port, "native", [php, WORKER],
                                 ["echo", "ms1"], n, n, worker=w)) for sfx, w, c in pools]
    for _, _, relay in relays:
        relay.start()
    try:
        if not (g.wait_count("", "d::echo", n, 30)
                and all(g.wait_count(r.prefix, w + "::echo", n, 30) for _, w, r in relays)):
            raise RuntimeError("the pools did not register")
        time.sleep(0.5)
        kids = B.children_map()
        cases = {"direct": ("d::echo", {"workers": [p.pid for p in direct]})}
        for sfx, w, relay in relays:
            cases["relay" + sfx] = (w + "::echo", {"workers": relay.handlers(kids),
                                                   "relay": relay.runners(kids),
                                                   "manager": [relay.pid]})
        if n == 4:
            cases["direct_1ms"] = ("d::ms1", cases["direct"][1])
            for sfx, w, _ in relays:
                cases["relay%s_1ms" % sfx] = (w + "::ms1", cases["relay" + sfx][1])
        runs = {k: [] for k in cases}
        # Alternating, so that drifts of the host hit both alike.
        for rep in range(ctx.reps):
            for name, (function, groups) in cases.items():
                r = B.run_load(ctx, g.port, function, dict(groups, gearmand=[g.pid]),
                               window=max(16, 2 * n))
                B.log("  N=%-2d %-10s rep %d: %8.0f jobs/s  relay %5.1f us/job  foreign %.2f cores"
                      % (n, name, rep, r["rate"], r["cpu_us_per_job"].get("relay", 0),
                         r["foreign_cores"]))
                runs[name].append(r)
    finally:
        for _, _, relay in relays:
            relay.stop()
        B.stop_procs(direct)
        g.stop()
    out = {}
    for name, rs in runs.items():
        jobs = sum(r["jobs"] for r in rs)
        cpu = {grp: round(sum(r["cpu_us_per_job"].get(grp, 0) * r["jobs"] for r in rs) / jobs, 2)
               for grp in {k for r in rs for k in r["cpu_us_per_job"]}}
        out[name] = {"rate": round(B.med([r["rate"] for r in rs]), 1),
                     "rates": [r["rate"] for r in rs],
                     "relay_cpu_us_per_job": [r["cpu_us_per_job"].get("relay", 0) for r in rs],
                     "p50_ms": round(B.med([r["p50_us"] for r in rs]) / 1000, 3),
                     "cpu_us_per_job": cpu,
                     "foreign_cores_max": max(r["foreign_cores"] for r in rs)}
    return out


def paired(a, b):
    """(median, min, max) of b[i] / a[i] over the repetitions."""
    r = sorted(y / x for x, y in zip(a, b) if x)
    return (r[len(r) // 2], r[0], r[-1]) if r else (0, 0, 0)


def render(R):
    L = ["| N | job | direct, jobs/s | behind the relay, jobs/s | ratio | relay CPU/job | worker CPU/job (direct / relay) | gearmand CPU/job (direct / relay) |",
         "|---|---|---|---|---|---|---|---|"]
    for n, res in R["sizes"].items():
        for label, d, r in (("echo", "direct", "relay"), ("1 ms", "direct_1ms", "relay_1ms")):
            if d not in res:
                continue
            a, b = res[d], res[r]
            cpu = lambda s, k: s["cpu_us_per_job"].get(k, 0)  # noqa: E731
            L.append("| %s | %s | %s | %s | **%.2f** | %.1f µs | %.1f / %.1f µs | %.1f / %.1f µs |" % (
                n, label, "{:,.0f}".format(a["rate"]).replace(",", " "),
                "{:,.0f}".format(b["rate"]).replace(",", " "), b["rate"] / a["rate"],
                cpu(b, "relay"), cpu(a, "workers"), cpu(b, "workers"),
                cpu(a, "gearmand"), cpu(b, "gearmand")))
    if any("relay_b" in res for res in R["sizes"].values()):
        L += ["", "A/B: this slotman (A) vs --compare %s (B), alternating repetitions:" % R["compare"],
              "", "| N | job | A jobs/s | B jobs/s | jobs/s B/A: median of pairs (min–max) "
              "| relay CPU/job A / B | relay CPU B/A: median of pairs (min–max) |",
              "|---|---|---|---|---|---|---|"]
        for n, res in R["sizes"].items():
            for label, a, b in (("echo", "relay", "relay_b"), ("1 ms", "relay_1ms", "relay_b_1ms")):
                if b not in res:
                    continue
                A, Bb = res[a], res[b]
                rate = paired(A["rates"], Bb["rates"])
                cpu = paired(A["relay_cpu_us_per_job"], Bb["relay_cpu_us_per_job"])
                L.append("| %s | %s | %.0f | %.0f | **%.3f** (%.3f–%.3f) | %.1f / %.1f µs "
                         "| **%.3f** (%.3f–%.3f) |" % (
                             n, label, A["rate"], Bb["rate"], *rate,
                             A["cpu_us_per_job"].get("relay", 0),
                             Bb["cpu_us_per_job"].get("relay", 0), *cpu))
    return "\n".join(L)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--ns", default="1,4,16")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--slotman", default=os.path.join(
        os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target"), "dist", "slotman"))
    ap.add_argument("--php", default="/usr/bin/php")
    ap.add_argument("--compare", default=None, metavar="PATH",
                    help="a second slotman binary, measured alternately with the first (A/B)")
    a = ap.parse_args()
    B = load_bench_run()

    class Ctx:
        pass
    ctx = Ctx()
    ctx.out = os.path.join(BENCH, "out", "relay-" + time.strftime("%Y%m%d-%H%M%S"))
    os.makedirs(os.path.join(ctx.out, "rt"), exist_ok=True)
    ctx.reps = a.reps or (1 if a.quick else 5)
    ctx.warmup = 0.5 if a.quick else 1.0
    ctx.duration = 2.0 if a.quick else 3.0
    ctx.quiet = B.Quiet(30 if a.quick else 150)
    if not os.path.exists(a.slotman):
        sys.exit("no slotman binary at %s: run `cargo build --profile dist` first" % a.slotman)
    ctx.slotman_source = os.path.abspath(a.slotman)
    ctx.slotman, ctx.runner = B.copy_slotman(ctx.slotman_source, ctx.out)
    ctx.b = None
    if a.compare:
        ctx.b = Ctx()
        ctx.b.__dict__.update(ctx.__dict__)
        ctx.b.out = os.path.join(ctx.out, "b")
        os.makedirs(os.path.join(ctx.b.out, "rt"))
        ctx.b.slotman, ctx.b.runner = B.copy_slotman(os.path.abspath(a.compare), ctx.b.out)
    B.log("building bench/loadgen")
    subprocess.run(["cargo", "build", "--quiet", "--release", "--manifest-path",
                    os.path.join(BENCH, "loadgen", "Cargo.toml"), "--target-dir",
                    os.path.join(BENCH, "target")], check=True)
    R = {"command": " ".join(["bench/relay.py"] + sys.argv[1:]), "machine": B.machine(ctx),
         "compare": a.compare, "sizes": {}}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        for n in [int(x) for x in a.ns.split(",")]:
            R["sizes"][str(n)] = measure(B, ctx, n, a.php)
    finally:
        B.cleanup()
    with open(os.path.join(ctx.out, "results.json"), "w") as f:
        json.dump(R, f, indent=1)
    md = render(R)
    with open(os.path.join(ctx.out, "results.md"), "w") as f:
        f.write(md + "\n")
    print(json.dumps(R, indent=1))
    print(md)


if __name__ == "__main__":
    main()

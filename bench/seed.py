#!/usr/bin/env python3
"""bench/seed.py: S8, the seed-style worker libraries against each language's
own Gearman worker library, doing the same trivial job (return the payload).

For N = 1, 4, 16, one gearmand, all pools registered at once, cases
interleaved (as bench/run's S1):

  Perl    N x Gearman::Worker (libgearman-client-perl)   vs  slotman kind = "perl"
  PHP     N x GearmanWorker (php-gearman, C libgearman)   vs  slotman kind = "php"
  Python  N x gearman3 (PyPI, in bench/.venv)             vs  slotman kind = "python"

The slotman pools run bench/workers/seed/Bench.{pm,py,php} (one method,
`echo`); the baselines bench/workers/echo_worker.{pl,php} and
echo_worker_gearman3.py. A baseline whose library is missing is skipped and
said so. Ratio = slotman's median jobs/s / the baseline's, same run.

    bench/seed.py [--quick] [--ns 1,4,16] [--reps N] [--slotman PATH]

bench/run runs it as section S8 (`bench/run --only S8`).
"""
import argparse
import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
WORKERS = os.path.join(BENCH, "workers")
SEED_LIBS = os.path.join(WORKERS, "seed")
VENV_PY = os.path.join(BENCH, ".venv", "bin", "python")

# language -> (baseline label, slotman kind, prefix of the slotman pool)
LANGS = [
    ("perl", "Gearman::Worker (Perl)", "perl", "spl::"),
    ("php", "GearmanWorker (PHP, C libgearman)", "php", "sph::"),
    ("python", "gearman3 (Python, PyPI)", "python", "spy::"),
]


def load_bench_run():
    loader = importlib.machinery.SourceFileLoader("benchrun", os.path.join(BENCH, "run"))
    spec = importlib.util.spec_from_loader("benchrun", loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


def baseline_available(lang):
    """None if the language's own worker library runs here, else why not."""
    probes = {
        "perl": (["perl", "-MGearman::Worker", "-e", "1"], "apt install libgearman-client-perl"),
        "php": (["php", "-r", "exit(class_exists('GearmanWorker') ? 0 : 1);"], "apt install php-gearman"),
        "python": ([VENV_PY, "-c", "import gearman"],
                   "python3 -m venv bench/.venv && bench/.venv/bin/pip install gearman3"),
    }
    argv, how = probes[lang]
    try:
        ok = subprocess.run(argv, capture_output=True, timeout=30).returncode == 0
    except OSError:
        ok = False
    return None if ok else how


def start_baseline(B, lang, port, n, function):
    procs = []
    for _ in range(n):
        if lang == "perl":
            args = [B.PERL, os.path.join(WORKERS, "echo_worker.pl"), "127.0.0.1:%d" % port, function]
        elif lang == "php":
            args = ["php", os.path.join(WORKERS, "echo_worker.php"), "127.0.0.1", str(port), function]
        else:
            args = [VENV_PY, os.path.join(WORKERS, "echo_worker_gearman3.py"), "127.0.0.1:%d" % port, function]
        procs.append(B.spawn(args))
    return procs


def seed_pool(B, ctx, port, kind, prefix, n):
    """A slotman pool of n `kind` slots serving PREFIXecho from Bench.*."""
    s = B.Slotman(ctx, "seed%s%d" % (kind, n), port, "stdio", ["/bin/true"], ["echo"], n, n, worker="Bench")
    with open(s.config, "w") as f:
        f.write('stop_timeout = "5s"\n\n[workers.Bench]\nkind = "%s"\nlibs = ["%s"]\nprefix = "%s"\n'
                'job_servers = ["127.0.0.1:%d"]\nmin = %d\nmax = %d\nidle_timeout = "60s"\n'
                % (kind, SEED_LIBS, prefix, port, n, n))
    return s


def measure(ctx, B=None):
    B = B or load_bench_run()
    res = {"skipped": {}}
    for n in ctx.ns:
        B.log("S8 seed libraries N=%d" % n)
        g = B.Gearmand(ctx.out)
        cases, pools, plain = {}, [], []
        for lang, _label, kind, prefix in LANGS:
            why = baseline_available(lang)
            if why:
                res["skipped"][lang] = why
                B.log("  %s baseline skipped: %s" % (lang, why))
            else:
                fn = "b%s::echo" % lang
                procs = start_baseline(B, lang, g.port, n, fn)
                plain += procs
                cases["plain_" + lang] = (fn, {"workers": [p.pid for p in procs]}, None)
            s = seed_pool(B, ctx, g.port, kind, prefix, n)
            s.start()
            pools.append(s)
            cases["slotman_" + lang] = (prefix + "echo", None, s)
        for name, (fn, _, s) in cases.items():
            if not g.wait_count(s.prefix if s else "", fn, n, 60):
                raise RuntimeError("S8: %s did not register %s" % (name, fn))
        time.sleep(0.5)
        kids = B.children_map()
        for name, (fn, groups, s) in list(cases.items()):
            if s:
                groups = {"manager": [s.pid], "runners": s.runners(kids), "handlers": s.handlers(kids)}
            cases[name] = (fn, groups)
        runs = {k: [] for k in cases}
        window = max(16, 2 * n)
        for rep in range(ctx.reps):
            for name, (fn, groups) in cases.items():
                r = B.run_load(ctx, g.port, fn, dict(groups, gearmand=[g.pid]), window=window)
                B.log("  %-15s rep %d: %8.0f jobs/s  p50 %5.2f ms" % (name, rep, r["rate"], r["p50_us"] / 1000))
                runs[name].append(r)
        for s in pools:
            s.stop()
        B.stop_procs(plain)
        g.stop()
        summary = {}
        for name, rs in runs.items():
            jobs = sum(r["jobs"] for r in rs)
            cpu = {}
            for grp in {k for r in rs for k in r["cpu_us_per_job"]}:
                cpu[grp] = round(sum(r["cpu_us_per_job"].get(grp, 0) * r["jobs"] for r in rs) / max(jobs, 1), 2)
            summary[name] = {"rate": round(B.med([r["rate"] for r in rs]), 1),
                             "rates": [r["rate"] for r in rs],
                             "p50_ms": round(B.med([r["p50_us"] for r in rs]) / 1000, 3),
                             "cpu_us_per_job": cpu}
        for lang, *_ in LANGS:
            a, b = summary.get("slotman_" + lang), summary.get("plain_" + lang)
            if a and b and b["rate"]:
                summary["ratio_" + lang] = round(a["rate"] / b["rate"], 3)
        res[str(n)] = summary
    return res


def render(res):
    L = ["### S8 Seed-style workers against each language's own worker library (trivial `echo`)", ""]
    L.append("| N | language | its own worker library | jobs/s | slotman library | jobs/s | ratio "
             "| CPU µs/job: own worker | slotman runner + handler |")
    L.append("|---|---|---|---|---|---|---|---|---|")
    for n, s in res.items():
        if not n.isdigit():
            continue
        for lang, label, _kind, _prefix in LANGS:
            p, q = s.get("plain_" + lang), s.get("slotman_" + lang)
            if not q:
                continue
            own = "%.0f" % p["rate"] if p else "not measured"
            own_cpu = "%.1f" % p["cpu_us_per_job"].get("workers", 0) if p else "–"
            ours_cpu = "%.1f + %.1f" % (q["cpu_us_per_job"].get("runners", 0), q["cpu_us_per_job"].get("handlers", 0))
            L.append("| %s | %s | %s | %s | `kind = \"%s\"` | %.0f | **%s** | %s | %s |"
                     % (n, lang, label, own, lang, q["rate"], s.get("ratio_" + lang, "–"), own_cpu, ours_cpu))
    for lang, why in res.get("skipped", {}).items():
        L.append("")
        L.append("%s baseline not measured: %s." % (lang, why))
    return "\n".join(L)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--ns", default="1,4,16")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--slotman", default=os.path.join(ROOT, "target", "release", "slotman"))
    a = ap.parse_args()
    B = load_bench_run()

    class Ctx:
        pass
    ctx = Ctx()
    ctx.out = os.path.join(BENCH, "out", "seed-" + time.strftime("%Y%m%d-%H%M%S"))
    os.makedirs(os.path.join(ctx.out, "rt"), exist_ok=True)
    ctx.slotman_source = os.path.abspath(a.slotman)
    ctx.slotman, ctx.runner = B.copy_slotman(ctx.slotman_source, ctx.out)
    ctx.ns = [int(x) for x in a.ns.split(",")]
    ctx.reps = a.reps or (1 if a.quick else 3)
    ctx.warmup = 0.5 if a.quick else 1.0
    ctx.duration = 2.0 if a.quick else 3.0
    ctx.quiet = B.Quiet(30 if a.quick else 120)
    subprocess.run(["cargo", "build", "--quiet", "--release", "--manifest-path",
                    os.path.join(BENCH, "loadgen", "Cargo.toml"), "--target-dir",
                    os.path.join(BENCH, "target")], check=True)
    try:
        res = measure(ctx, B)
    finally:
        B.cleanup()
    with open(os.path.join(ctx.out, "results.json"), "w") as f:
        json.dump({"S8": res, "machine": B.machine(ctx)}, f, indent=1)
    md = render(res)
    with open(os.path.join(ctx.out, "results.md"), "w") as f:
        f.write(md + "\n")
    print(md)


if __name__ == "__main__":
    sys.exit(main())

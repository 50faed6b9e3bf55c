#!/usr/bin/env python3
"""bench/seed.py: S8, the seed-style worker libraries against each language's
own Gearman worker library, doing the same trivial job (return the payload).

For N = 1, 4, 16, one gearmand, all pools registered at once, cases
interleaved (as bench/run's S1):

  Perl    N x Gearman::Worker (libgearman-client-perl)   vs  slotman kind = "perl"
  PHP     N x GearmanWorker (php-gearman, C libgearman)   vs  slotman kind = "php"
  Python  N x gearman3 (PyPI, in bench/.venv)             vs  slotman kind = "python"

The slotman pools run bench/workers/seed/Bench.{pm,py,php} (one method,
`echo`); the baselines bench/workers/echo_worker.{pl,php} (the PHP one shared with
bench/relay.py) and echo_worker_gearman3.py. A baseline whose library is missing is skipped and
said so. Ratio = slotman's median jobs/s / the baseline's, same run.

    bench/seed.py [--quick] [--ns 1,4,16] [--reps N] [--slotman PATH]

is `bench/run --only S8 ...`: bench/run runs it as its section S8.
"""
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
            # bench/relay.py's worker: registers PREFIXecho.
            args = ["php", os.path.join(WORKERS, "echo_worker.php"), "127.0.0.1:%d" % port,
                    function[:-len("echo")]]
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


def measure(B, ctx):
    """S8 for each of ctx.ns; B is bench/run as a module."""
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
            if lang == "perl":
                # What the library costs: the hand-written Perl stdio handler.
                h = B.Slotman(ctx, "seedhand%d" % n, g.port, "stdio", [B.PERL, B.H_PL], ["echo"], n, n,
                              worker="h", idle_timeout="60s")
                h.start()
                pools.append(h)
                cases["slotman_perl_stdio"] = ("h::echo", None, h)
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
        for lang in [lang for lang, *_ in LANGS] + ["perl_stdio"]:
            a, b = summary.get("slotman_" + lang), summary.get("plain_" + lang.split("_")[0])
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
            h = s.get("slotman_perl_stdio") if lang == "perl" else None
            if h:
                L.append("| %s | perl | (same) | | hand-written `stdio` handler | %.0f | %s | | %.1f + %.1f |"
                         % (n, h["rate"], s.get("ratio_perl_stdio", "–"),
                            h["cpu_us_per_job"].get("runners", 0), h["cpu_us_per_job"].get("handlers", 0)))
    for lang, why in res.get("skipped", {}).items():
        L.append("")
        L.append("%s baseline not measured: %s." % (lang, why))
    return "\n".join(L)


def main():
    """Standalone: bench/run with this section only (its options pass on:
    --quick, --ns, --reps, --slotman, --keep)."""
    run = os.path.join(BENCH, "run")
    os.execv(sys.executable, [sys.executable, run, "--only", "S8"] + sys.argv[1:])


if __name__ == "__main__":
    main()

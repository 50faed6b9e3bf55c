#!/usr/bin/env python3
"""bench/floor/measure.py: the floor of a slot runner's process hop.

S1-style comparison on one gearmand, one loadgen, interleaved repetitions:
  plain_py        N plain persistent Python workers (bench/workers)
  slotman_stdio   N slotman stdio slots (Python handler), the binary under test
  floor_MODE      N floor-relay + handler pairs (bench/floor/src/main.rs), one
                  case per --modes entry (block, sockblock, epollblock, poll, polltick, epoll, spin)
All handlers are bench/handlers/echo_stdio.py under /usr/bin/python3; trivial
`echo` jobs, 8-byte payload, window max(16, 2N), as bench/run's S1.

Per-process CPU from /proc/PID/task/*/schedstat and voluntary context
switches over exactly the counted window (bench/run's run_load, imported as
bench/profile does). A measurement during which the host ran more than
--max-foreign cores of other work is repeated (up to --retries times); the
report uses the clean ones and says how many were dropped.

    bench/floor/measure.py [--ns 4,1] [--reps 3] [--modes block,poll,epoll,spin]
                           [--slotman PATH] [--out DIR]

Writes bench/out/floor-<timestamp>/{results.json,results.md}.
"""
import argparse
import hashlib
import importlib.machinery
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

FLOOR = os.path.dirname(os.path.abspath(__file__))
BENCH = os.path.dirname(FLOOR)
loader = importlib.machinery.SourceFileLoader("benchrun", os.path.join(BENCH, "run"))
spec = importlib.util.spec_from_loader("benchrun", loader)
B = importlib.util.module_from_spec(spec)
loader.exec_module(B)

RELAY = os.path.join(FLOOR, "target", "release", "floor-relay")
FUNCTIONS = ("echo", "sleep", "spin")

# Voluntary context switches over run_load's counted window: run_load samples
# cpu_secs(pid) for every pid exactly at the window's start and end; record
# the switch counts at the same moments.
_SNAP = {}
_cpu_secs = B.cpu_secs


def _cpu_secs_and_switches(pid):
    _SNAP.setdefault(pid, []).append(B.ctx_switches(pid)[0])
    return _cpu_secs(pid)


B.cpu_secs = _cpu_secs_and_switches


def all_tasks_cpu():
    """{(pid, comm): CPU ns} of every process on the host (schedstat)."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            tids = os.listdir("/proc/%s/task" % d)
        except OSError:
            continue
        ns = 0
        for t in tids:
            f = B.read("/proc/%s/task/%s/schedstat" % (d, t)).split()
            ns += int(f[0]) if f else 0
        out[(int(d), B.read("/proc/%s/comm" % d).strip())] = ns
    return out


def measure(ctx, port, fn, groups, window):
    _SNAP.clear()
    h0, w0 = all_tasks_cpu(), time.monotonic()
    r = B.run_load(ctx, port, fn, groups, window=window)
    h1, wall = all_tasks_cpu(), time.monotonic() - w0
    if not r["jobs"]:
        raise RuntimeError("no jobs completed for %s" % fn)
    # Who else ran (warm-up + window + loadgen exit, so a rough guide to what
    # the `foreign` figure was): the top processes that are not ours.
    ours = {p for ps in groups.values() for p in ps}
    top = sorted(((h1[k] - h0.get(k, 0)) / 1e9 / wall, k) for k in h1 if k[0] not in ours)[::-1][:4]
    r["foreign_top"] = ["%s[%d] %.2f" % (k[1], k[0], c) for c, k in top if c >= 0.01]
    r["wakeups_per_job"] = {}
    for name, pids in groups.items():
        v = sum(_SNAP[p][-1] - _SNAP[p][0] for p in pids if len(_SNAP.get(p, [])) >= 2)
        if r["jobs"]:
            r["wakeups_per_job"][name] = round(v / r["jobs"], 3)
    # loadgen's own CPU is over warm-up + window; per job, approximately
    r["loadgen_us_per_job"] = round(r["loadgen_cpu_secs"] * 1e6 / max(1, r["rate"] * (ctx.warmup + ctx.duration)), 2)
    return r


def start_relays(port, n, mode, spin_us):
    procs = []
    for i in range(n):
        args = [RELAY, "--server", "127.0.0.1:%d" % port, "--prefix", "f%s::" % mode,
                "--id", "floor-%s:%d" % (mode, i), "--mode", mode, "--spin-us", str(spin_us)]
        if mode == "polltick":
            args += ["--timeout-ms", "5"]  # slotman's MAX_BLOCK
        for f in FUNCTIONS:
            args += ["--function", f]
        procs.append(B.spawn(args + ["--", B.PY, B.H_PY]))
    return procs


def summarize(rs):
    jobs = sum(r["jobs"] for r in rs)
    out = {"rate": round(B.med([r["rate"] for r in rs]), 1), "rates": [r["rate"] for r in rs],
           "p50_ms": round(B.med([r["p50_us"] for r in rs]) / 1000, 3),
           "foreign_cores": [r["foreign_cores"] for r in rs],
           "loadgen_us_per_job": round(B.med([r["loadgen_us_per_job"] for r in rs]), 2)}
    for key in ("cpu_us_per_job", "wakeups_per_job"):
        out[key] = {g: round(sum(r[key].get(g, 0) * r["jobs"] for r in rs) / jobs, 2)
                    for g in {k for r in rs for k in r[key]}}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ns", default="4,1")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--modes", default="block,poll,epoll,spin")
    ap.add_argument("--spin-us", type=int, default=30)
    ap.add_argument("--no-slotman", action="store_true")
    ap.add_argument("--slotman", default=os.environ.get("SLOTMAN", os.path.join(
        os.environ.get("CARGO_TARGET_DIR") or os.path.join(B.ROOT, "target"), "dist", "slotman")))
    ap.add_argument("--slotman-b", default=None,
                    help="a second slotman build, measured in the same run as case slotman_b (A/B)")
    ap.add_argument("--config-a", default="",
                    help="TOML lines added to case slotman_stdio's worker (as --config-b for slotman_b)")
    ap.add_argument("--config-b", default="",
                    help="TOML lines added to case slotman_b's worker, e.g. 'prefetch = true' "
                         "(with --slotman-b the same binary as --slotman: a config A/B)")
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--max-foreign", type=float, default=0.2, help="cores of other work above which a measurement is repeated")
    ap.add_argument("--retries", type=int, default=3)
    ap.add_argument("--quiet-budget", type=float, default=300)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()

    class Ctx:
        pass
    ctx = Ctx()
    ctx.out = os.path.abspath(a.out or os.path.join(BENCH, "out", "floor-" + time.strftime("%Y%m%d-%H%M%S")))
    os.makedirs(os.path.join(ctx.out, "rt"), exist_ok=True)
    ctx.warmup, ctx.duration = a.warmup, a.duration
    ctx.quiet = B.Quiet(a.quiet_budget)
    B.log("building floor-relay and loadgen; results in", ctx.out)
    subprocess.run(["cargo", "build", "--quiet", "--release", "--manifest-path", os.path.join(FLOOR, "Cargo.toml"),
                    "--target-dir", os.path.join(FLOOR, "target")], check=True)
    subprocess.run(["cargo", "build", "--quiet", "--release", "--manifest-path",
                    os.path.join(BENCH, "loadgen", "Cargo.toml"), "--target-dir",
                    os.path.join(BENCH, "target")], check=True)
    R = {"command": " ".join(["bench/floor/measure.py"] + sys.argv[1:]), "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
         "warmup": a.warmup, "duration": a.duration, "max_foreign": a.max_foreign, "spin_us": a.spin_us}
    if not a.no_slotman:
        # with slotman-slot, if it is next to it (the runner bench/run measures)
        ctx.slotman, _ = B.copy_slotman(os.path.abspath(a.slotman), ctx.out)
        with open(ctx.slotman, "rb") as f:
            R["slotman"] = {"path": os.path.abspath(a.slotman), "sha256": hashlib.sha256(f.read()).hexdigest()[:16],
                            "mtime": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(os.path.getmtime(a.slotman)))}
    ctx_b = None
    if a.slotman_b:
        ctx_b = Ctx()
        ctx_b.out = os.path.join(ctx.out, "b")
        os.makedirs(os.path.join(ctx_b.out, "rt"), exist_ok=True)
        ctx_b.slotman, _ = B.copy_slotman(os.path.abspath(a.slotman_b), ctx_b.out)
        R["slotman_b"] = {"path": os.path.abspath(a.slotman_b), "config": a.config_b}
    R["git_head"] = subprocess.run(["git", "-C", B.ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                                   text=True).stdout.strip()
    modes = [m for m in a.modes.split(",") if m]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        for n in [int(x) for x in a.ns.split(",")]:
            B.log("N=%d" % n)
            g = B.Gearmand(ctx.out)
            plain = B.start_plain(ctx, g.port, n, "p::", functions=FUNCTIONS)
            relays = {m: start_relays(g.port, n, m, a.spin_us) for m in modes}
            st = None
            if not a.no_slotman:
                st = B.Slotman(ctx, "floor%d" % n, g.port, "stdio", [B.PY, B.H_PY], list(FUNCTIONS), n, n,
                               extra=a.config_a.replace("\\n", "\n") + "\n")
                st.start()
            st_b = None
            if ctx_b:
                st_b = B.Slotman(ctx_b, "floorb%d" % n, g.port, "stdio", [B.PY, B.H_PY], list(FUNCTIONS), n, n,
                                 worker="b", extra=a.config_b.replace("\\n", "\n") + "\n")
                st_b.start()
            ok = [g.wait_count("plain:", "p::echo", n, 30)]
            if st_b:
                ok.append(g.wait_count(st_b.prefix, "b::echo", n, 30))
            ok += [g.wait_count("floor-%s:" % m, "f%s::echo" % m, n, 30) for m in modes]
            if st:
                ok.append(g.wait_count(st.prefix, "w::echo", n, 30))
            if not all(ok):
                raise RuntimeError("pools did not register")
            time.sleep(0.5)
            kids = B.children_map()
            window = max(16, 2 * n)
            cases = {"plain_py": ("p::echo", {"workers": [p.pid for p in plain]})}
            if st:
                cases["slotman_stdio"] = ("w::echo", {"runners": st.runners(kids), "manager": [st.pid],
                                                      "handlers": st.handlers(kids)})
            if st_b:
                cases["slotman_b"] = ("b::echo", {"runners": st_b.runners(kids), "manager": [st_b.pid],
                                                  "handlers": st_b.handlers(kids)})
            for m in modes:
                cases["floor_" + m] = ("f%s::echo" % m, {"relays": [p.pid for p in relays[m]],
                                                        "handlers": [h for p in relays[m] for h in B.descendants(p.pid, kids)]})
            runs = {k: [] for k in cases}
            dropped = {k: [] for k in cases}
            for rep in range(a.reps):
                for name, (fn, groups) in cases.items():
                    groups = dict(groups, gearmand=[g.pid])
                    for attempt in range(a.retries + 1):
                        r = measure(ctx, g.port, fn, groups, window)
                        cpu = r["cpu_us_per_job"]
                        B.log("  %-14s rep %d: %6.0f jobs/s  %s  foreign %.2f%s" % (
                            name, rep, r["rate"], " ".join("%s %.1f" % kv for kv in sorted(cpu.items())),
                            r["foreign_cores"], "  (repeat; others: %s)" % ", ".join(r["foreign_top"])
                            if r["foreign_cores"] > a.max_foreign else ""))
                        if r["foreign_cores"] <= a.max_foreign or attempt == a.retries:
                            r["noisy"] = r["foreign_cores"] > a.max_foreign
                            runs[name].append(r)
                            break
                        dropped[name].append(r)
            for sm in (st, st_b):
                if sm:
                    sm.stop()
            B.stop_procs(plain + [p for ps in relays.values() for p in ps])
            g.stop()
            S = {name: dict(summarize(rs), dropped_noisy=len(dropped[name]), kept_noisy=sum(r["noisy"] for r in rs))
                 for name, rs in runs.items()}
            base = S["plain_py"]["rate"]
            for name, s in S.items():
                s["ratio"] = round(s["rate"] / base, 3)
                # per-rep ratio against the plain run of the same repetition (interleaved pairs)
                s["ratio_per_rep"] = [round(x / y, 3) for x, y in zip(s["rates"], S["plain_py"]["rates"])]
                c = s["cpu_us_per_job"]
                s["total_us_per_job"] = round(sum(c.values()) + s["loadgen_us_per_job"], 2)
            R[str(n)] = {"cases": S, "runs": runs, "dropped": dropped}
            with open(os.path.join(ctx.out, "results.json"), "w") as f:
                json.dump(R, f, indent=1)
    finally:
        B.cleanup()
    md = render(R)
    with open(os.path.join(ctx.out, "results.md"), "w") as f:
        f.write(md + "\n")
    print(md)


def render(R):
    L = ["`%s` (%s; slotman %s, git HEAD %s)" % (R["command"], R["started"], R.get("slotman", {}).get("sha256", "-"),
                                                R["git_head"]), ""]
    L.append("| N | case | jobs/s (reps) | ratio to plain (per rep) | hop process µs/job | handler µs/job | manager µs/job | "
             "gearmand µs/job | loadgen µs/job | total µs/job | hop wake-ups/job | foreign cores |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for n in sorted((k for k in R if k.isdigit()), key=int):
        for name, s in R[n]["cases"].items():
            c, w = s["cpu_us_per_job"], s["wakeups_per_job"]
            hop = c.get("workers", c.get("runners", c.get("relays")))
            hw = w.get("workers", w.get("runners", w.get("relays")))
            f = lambda x: "–" if x is None else "%.1f" % x  # noqa: E731
            L.append("| %s | %s | %.0f (%s) | %.2f (%s) | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                n, name, s["rate"], ", ".join("%.0f" % x for x in s["rates"]), s["ratio"],
                ", ".join("%.2f" % x for x in s["ratio_per_rep"]), f(hop), f(c.get("handlers")), f(c.get("manager")),
                f(c.get("gearmand")), f(s["loadgen_us_per_job"]), f(s["total_us_per_job"]),
                "–" if hw is None else "%.2f" % hw,
                "max %.2f%s" % (max(s["foreign_cores"]), ", %d dropped" % s["dropped_noisy"] if s["dropped_noisy"] else "")))
    L.append("")
    L.append("hop process = the plain worker itself, slotman's runner, or floor-relay; "
             "wake-ups = voluntary context switches of that process per job.")
    return "\n".join(L)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Issue #5: a burst of 200 queued jobs on a pool min=1 max=16 -- time until
16 slots are registered, with queue-depth scaling and with busyness alone,
printed side by side from one run.

    cargo build --profile dist && bench/queue_scaling.py [--slotman target/dist/slotman]

Needs gearmand (Debian gearman-job-server) and python3. Registration is read
from gearmand's admin `workers` (connections whose client id is
slotman:SERVICE:WORKER:...)."""
import argparse, os, shutil, signal, socket, subprocess, sys, tempfile, time

HERE = os.path.dirname(os.path.abspath(__file__))
HANDLER = os.path.join(HERE, "..", "tests", "fixtures", "handler.py")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def admin(port, cmd):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(cmd.encode() + b"\n")
        data = b""
        while not data.endswith(b".\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return data.decode(errors="replace")


def submit_bg(port, function, n, payload):
    # SUBMIT_JOB_BG packets, pipelined on one connection.
    def pkt(kind, *args):
        body = b"\0".join(args)
        return b"\0REQ" + kind.to_bytes(4, "big") + len(body).to_bytes(4, "big") + body
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"".join(pkt(18, function.encode(), b"q%d-%f" % (i, time.time()), payload) for i in range(n)))
        got = 0
        buf = b""
        while got < n:
            buf += s.recv(65536)
            while len(buf) >= 12:
                size = int.from_bytes(buf[8:12], "big")
                if len(buf) < 12 + size:
                    break
                buf = buf[12 + size:]
                got += 1


def one(slotman, gearmand, scale_on_queue):
    port = free_port()
    gd = subprocess.Popen([gearmand, "--listen=127.0.0.1", f"--port={port}", "--log-file=none"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tmp = tempfile.mkdtemp(prefix="slotman-qs-")
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.02)
        cfg = os.path.join(tmp, "qs.toml")
        with open(cfg, "w") as f:
            f.write(f'[workers.w]\nkind = "stdio"\ncommand = ["python3", "{HANDLER}"]\n'
                    f'functions = ["sleep"]\njob_servers = ["127.0.0.1:{port}"]\n'
                    f'min = 1\nmax = 16\nscale_on_queue = {"true" if scale_on_queue else "false"}\n')
        mgr = subprocess.Popen([slotman, "run", "--config", cfg, "--runtime-dir", tmp],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def registered():
            return sum(1 for l in admin(port, "workers").splitlines()
                       if "slotman:qs:w:" in l and "w::sleep" in l)

        while registered() < 1:
            time.sleep(0.01)
        t0 = time.monotonic()
        submit_bg(port, "w::sleep", 200, b"1")
        reached = None
        while time.monotonic() - t0 < 60:
            if registered() >= 16:
                reached = time.monotonic() - t0
                break
            time.sleep(0.005)
        mgr.send_signal(signal.SIGKILL)
        mgr.wait()
        return reached
    finally:
        gd.kill()
        gd.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--slotman", default=os.path.join(
        os.environ.get("CARGO_TARGET_DIR") or os.path.join(HERE, "..", "target"), "dist", "slotman"))
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    gearmand = shutil.which("gearmand") or "/usr/sbin/gearmand"
    rows = []
    for rep in range(a.reps):
        q = one(a.slotman, gearmand, True)
        b = one(a.slotman, gearmand, False)
        rows.append((q, b))
        print(f"rep {rep}: queue-depth scaling {q:.2f} s, busyness only {b:.2f} s", flush=True)
    med = lambda xs: sorted(xs)[len(xs) // 2]
    q, b = med([r[0] for r in rows]), med([r[1] for r in rows])
    print(f"\n200 queued 1-s jobs, min=1 max=16, time to 16 slots registered (median of {a.reps}):")
    print(f"| scale_on_queue = true | scale_on_queue = false | ratio |\n|---|---|---|\n| {q:.2f} s | {b:.2f} s | {b / q:.1f}x |")


if __name__ == "__main__":
    sys.exit(main())

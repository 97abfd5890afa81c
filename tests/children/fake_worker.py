"""A fake worker for the runner's tests: speaks worker.py's channel protocol, then misbehaves on request.

    python fake_worker.py --channel-fd N --spec JSON --behaviour NAME [--pids FILE]

Standard library only, no TensorFlow: starts in tens of milliseconds. Step times are ``(index + 1) / 100``
for warm-up steps and ``(index + 1) / 10`` for timed ones, so the tests know them exactly.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import time

SPIN_WORK = 4_000_000  # additions per "spin" step: about 0.15 s of one core here


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--channel-fd", type=int, required=True)
    parser.add_argument("--spec", required=True)
    parser.add_argument("--behaviour", default="ok")
    parser.add_argument("--pids", help="start a grandchild and write both pids here as JSON")
    parser.add_argument("--stamps", help="a folder: write PID.json with when this instance was ready and released")
    args = parser.parse_args()
    spec, behaviour = json.loads(args.spec), args.behaviour
    channel = os.fdopen(args.channel_fd, "w", buffering=1)

    def send(line: str) -> None:
        channel.write(line + "\n")
        channel.flush()

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # the crash cases must not write core files
    os.sched_setaffinity(0, spec["cores"])
    if args.pids:  # a grandchild in the same process group: the runner must kill it too
        sleeper = subprocess.Popen(["sleep", "1000"])
        with open(args.pids + ".tmp", "w") as out:
            json.dump({"child": os.getpid(), "grandchild": sleeper.pid}, out)
        os.replace(args.pids + ".tmp", args.pids)
    if behaviour in ("garbage", "no-event", "bad-step"):
        send({"garbage": "hello", "no-event": '{"phase": "timed"}', "bad-step": '{"event": "step"}'}[behaviour])
        time.sleep(1000)
    times = {"warmup": [(i + 1) / 100 for i in range(spec["warmup"])]}
    times["timed"] = [(i + 1) / 10 for i in range(spec["timed"])]
    if behaviour == "spin":  # real timed steps: each a fixed amount of work on its core, as a model's step is
        for index, seconds in enumerate(times["warmup"]):
            send(json.dumps({"event": "step", "phase": "warmup", "index": index, "seconds": seconds}))
        spun = []
        for index in range(spec["timed"]):
            begin = time.perf_counter()
            total = 0
            for value in range(SPIN_WORK):
                total += value
            spun.append(time.perf_counter() - begin)
            send(json.dumps({"event": "step", "phase": "timed", "index": index, "seconds": spun[-1]}))
        send(json.dumps({"event": "result", "warmup_seconds": times["warmup"], "timed_seconds": spun,
                         "cpus": sorted(os.sched_getaffinity(0)), "pid": os.getpid()}))  # fmt: skip
        return 0
    if spec.get("barrier"):  # one of a group: the instance on the highest CPU misbehaves for the group tests
        if behaviour == "crash-last" and max(spec["cores"]) >= 1:
            print("fake worker: instance crashing before it is ready", file=sys.stderr, flush=True)
            os.abort()
        # Stamped before it says so: stamped after, an instance descheduled in between could be released, and
        # its partner stamp that, before its own "ready" stamp (a 20 us inversion failed CI once).
        ready = time.monotonic()
        send(json.dumps({"event": "ready"}))
        if behaviour == "die-after-ready" and max(spec["cores"]) >= 1:
            print("fake worker: instance dying after it was ready", file=sys.stderr, flush=True)
            return 7
        if not sys.stdin.buffer.read(1):
            return 5
        released = time.monotonic()
        if args.stamps:
            with open(os.path.join(args.stamps, f"{os.getpid()}.json"), "w") as out:
                json.dump({"pid": os.getpid(), "ready": ready, "released": released, "cores": spec["cores"]}, out)
        ends, seconds = [], []
        for index in range(spec["timed"]):  # real short steps, timed as they ran, so the windows overlap
            if behaviour == "hang-last" and max(spec["cores"]) >= 1 and index == 1:
                time.sleep(1000)
            begin = time.monotonic()
            time.sleep(0.05)
            ends.append(time.monotonic())
            seconds.append(ends[-1] - begin)
        times["timed"] = seconds
    for phase in ("warmup", "timed"):
        for index, seconds in enumerate(times[phase]):
            send(json.dumps({"event": "step", "phase": phase, "index": index, "seconds": seconds}))
            if behaviour == "hang" and phase == "timed":
                print("fake worker: hanging", file=sys.stderr, flush=True)
                time.sleep(1000)
    print(f"fake worker: {behaviour}", file=sys.stderr, flush=True)
    if behaviour == "abort":
        os.abort()
    if behaviour == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    if behaviour == "exit3":
        return 3
    if behaviour == "oom":
        hoard = [bytearray(256 * 2**20) for _ in range(64)]  # 16 GiB: more than any limit the tests set
        print(len(hoard))
    if behaviour == "no-result":
        return 0
    cpus = sorted(os.sched_getaffinity(0))
    result = {
        "event": "result",
        "warmup_seconds": times["warmup"],
        "timed_seconds": times["timed"][:-1] if behaviour == "short" else times["timed"],
        "cpus": [cpu + 1 for cpu in cpus] if behaviour == "wrong-cpus" else cpus,
        "environ": dict(os.environ),
        "pid": os.getpid(),
    }
    if spec.get("barrier"):
        result["timed_ends"] = ends
    if behaviour == "study":  # a trial of a whole study: oneDNN read back as TensorFlow on an AVX-512 CPU would
        result["onednn"] = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1") != "0"
        result["framework"] = "fake"
        time.sleep(0.3)  # and the trial takes wall time, so a study of several is under way long enough to kill
    if behaviour == "infinite":
        result["timed_seconds"] = [float("inf")] * spec["timed"]
    send(json.dumps(result))
    if behaviour == "hang-at-exit":
        time.sleep(1000)  # like a framework whose threads never join at shutdown
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Where `tuner benchmark` and tf_cnn_benchmarks disagree on ResNet-50 inference, measured (issue 18, item 3).

On identical settings (intel-tensorflow 2.14, 2 cores, batch 32, NHWC, intra 2, inter 1, OMP_NUM_THREADS 2,
KMP_BLOCKTIME 1, compact affinity, 5 warm-up + 20 timed batches) each candidate cause is measured as an
arm of an interleaved comparison (A B C, then the order rotated each round; every arm a fresh process
pinned to the cores, holding the host's measurement lock):

    tfcnn          tf_cnn_benchmarks itself, with --kmp_blocktime/--kmp_affinity given (its --mkl=True
                   otherwise overrides the environment with its own defaults: KMP_BLOCKTIME=0)
    tfcnn-default  tf_cnn_benchmarks with --mkl=True and the settings in the environment only (blocktime 0)
    tuner          the tuner's own worker (tuner/worker.py through SubprocessRunner), as `tuner benchmark`
    step:K=V,...   this file's own step in the intel-tensorflow interpreter (standard library + TensorFlow):
                     graph=keras|replica   keras.applications.ResNet50, or a replica of tf_cnn_benchmarks'
                                           ResNet-50 v1 (convolutions without bias, fused batch norm)
                     bias=0|1              replica only: give every convolution a bias, as Keras does
                     softmax=0|1           replica only: a softmax on the logits, as Keras's top has
                     loop=function|session tf.function + .numpy() (the tuner's loop), or a TF1 Session
                     fetch=sum|logits      the step's output: the sum of the outputs (the tuner's), or
                                           logits + top-1/top-5 accuracy (tf_cnn_benchmarks' fetches)
                     input=constant|random images made once (both tools), or drawn in every step

Subcommands (run from the repository root):

    .venv/bin/python -m bench.reference_gap compare --arms tfcnn,tuner --pairs 3 --name headline
    .venv/bin/python -m bench.reference_gap interleaved --arms step:graph=keras,step:graph=replica \
        --rounds 3 --name alternated      # step arms built in one process, their steps alternated A B A B
    .venv/bin/python -m bench.reference_gap flops            # FLOPs/image and op inventory of each graph
    .envs/intel-tensorflow/bin/python -m bench.reference_gap step --graph keras --loop function   # one run
    .envs/intel-tensorflow/bin/python -m bench.reference_gap overhead   # a trivial step's own cost

``compare``, ``interleaved`` and ``flops`` run in the tuner's venv and start every measured process
themselves (each under the host lock, pinned with taskset); ``step``, ``alternate``, ``overhead`` and
``graph`` run in the intel-tensorflow interpreter and import only TensorFlow. Every result is merged into
bench/results/reference-gap-infer-2c.json under its --name; each process's output is kept under
$REFERENCE_GAP_LOGS/NAME (/work/tfcnn/logs by default), and tf_cnn_benchmarks is looked for in $TFCNN_DIR.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# The controller-side commands start the intel-tensorflow interpreter where `tuner env create` put it, found
# as the tuner finds it (``_intel_python``); the commands that run inside it import only TensorFlow.
TFCNN = Path(os.environ.get("TFCNN_DIR", "/work/tfcnn/scripts/tf_cnn_benchmarks"))
OUTPUT = ROOT / "bench" / "results" / "reference-gap-infer-2c.json"
LOGS = Path(os.environ.get("REFERENCE_GAP_LOGS", "/work/tfcnn/logs"))  # each run's child output, by --name
CORES = "0,1"
BATCH, WARMUP, TIMED = 32, 5, 20
INTRA, INTER = 2, 1
AFFINITY = "granularity=fine,compact,1,0"
ENV_KNOBS = {"OMP_NUM_THREADS": "2", "KMP_BLOCKTIME": "1", "KMP_AFFINITY": AFFINITY}
# The tuner's child environment (tuner/settings.py ENV_FIXED), used for every arm so that only the arm differs.
ENV_FIXED = {
    "TF_CPP_MIN_LOG_LEVEL": "1",
    "PYTHONDONTWRITEBYTECODE": "1",
    "CUDA_VISIBLE_DEVICES": "",
    "KERAS_BACKEND": "tensorflow",
}
RESULT_TAG = "REFERENCE_GAP_RESULT "
STAGES = ((256, 64, 3, 1), (512, 128, 4, 2), (1024, 256, 6, 2), (2048, 512, 3, 2))  # depth, bottleneck, blocks, stride


# -- the step, in the intel-tensorflow interpreter (standard library + TensorFlow only) -------------------------


class Replica:
    """tf_cnn_benchmarks' ``resnet50`` (ResNet v1, models/resnet_model.py with convnet_builder.py) as plain
    ops on tf.Variables: convolutions without bias, each followed by ``fused_batch_norm(is_training=False)``
    with moving statistics (its ``phase_train=False``) and ReLU; the stem's 7x7/2 convolution on explicitly
    padded input ('SAME_RESNET'); stride 2 on the first 1x1 convolution of a stage (v1); spatial mean and
    an affine layer to 1001 logits. ``bias`` and ``softmax`` add what Keras's ResNet50 has instead."""

    def __init__(self, tf: Any, bias: bool = False, softmax: bool = False, classes: int = 1001) -> None:
        self.tf, self.bias, self.softmax = tf, bias, softmax
        self.variables: list[Any] = []
        self.convs: dict[str, dict[str, Any]] = {}
        self._conv("stem", 7, 3, 64)
        channels = 64
        for s, (depth, neck, blocks, _) in enumerate(STAGES):
            for b in range(blocks):
                if b == 0:
                    self._conv(f"s{s}b{b}short", 1, channels, depth)
                self._conv(f"s{s}b{b}c1", 1, channels, neck)
                self._conv(f"s{s}b{b}c2", 3, neck, neck)
                self._conv(f"s{s}b{b}c3", 1, neck, depth)
                channels = depth
        init = tf.random.truncated_normal((channels, classes), stddev=(1.0 / channels) ** 0.5, seed=3)
        self.dense = tf.Variable(init, name="fc")
        self.dense_bias = tf.Variable(tf.zeros((classes,)), name="fc_bias")
        self.variables += [self.dense, self.dense_bias]

    def _conv(self, name: str, k: int, cin: int, cout: int) -> None:
        tf = self.tf
        stddev = (2.0 / (k * k * cin)) ** 0.5
        seed = 10 + len(self.convs)
        weights = {
            "kernel": tf.Variable(tf.random.truncated_normal((k, k, cin, cout), stddev=stddev, seed=seed)),
            "gamma": tf.Variable(tf.ones((cout,))),
            "beta": tf.Variable(tf.zeros((cout,))),
            "mean": tf.Variable(tf.zeros((cout,)), trainable=False),
            "variance": tf.Variable(tf.ones((cout,)), trainable=False),
        }
        if self.bias:
            weights["bias"] = tf.Variable(tf.zeros((cout,)))
        self.convs[name] = weights
        self.variables += list(weights.values())

    def _apply(self, name: str, x: Any, stride: int, relu: bool = True) -> Any:
        tf = self.tf
        w = self.convs[name]
        k = int(w["kernel"].shape[0])
        if stride > 1 and k > 1:  # 'SAME_RESNET': explicit padding, then VALID
            pad = [[0, 0], [(k - 1) // 2, k - 1 - (k - 1) // 2], [(k - 1) // 2, k - 1 - (k - 1) // 2], [0, 0]]
            y = tf.nn.conv2d(tf.pad(x, pad), w["kernel"], strides=stride, padding="VALID")
        else:
            y = tf.nn.conv2d(x, w["kernel"], strides=stride, padding="SAME")
        if self.bias:
            y = tf.nn.bias_add(y, w["bias"])
        y, _, _ = tf.compat.v1.nn.fused_batch_norm(
            y, w["gamma"], w["beta"], mean=w["mean"], variance=w["variance"], epsilon=1e-5, is_training=False
        )
        return tf.nn.relu(y) if relu else y

    def __call__(self, x: Any, training: bool = False) -> Any:
        tf = self.tf
        x = self._apply("stem", x, 2)
        x = tf.nn.max_pool2d(x, 3, 2, "SAME")
        for s, (_, _, blocks, stride) in enumerate(STAGES):
            for b in range(blocks):
                step = stride if b == 0 else 1
                short = self._apply(f"s{s}b{b}short", x, step, relu=False) if b == 0 else x
                y = self._apply(f"s{s}b{b}c1", x, step)
                y = self._apply(f"s{s}b{b}c2", y, 1)
                y = self._apply(f"s{s}b{b}c3", y, 1, relu=False)
                x = tf.nn.relu(short + y)
        logits = tf.compat.v1.nn.xw_plus_b(tf.reduce_mean(x, [1, 2]), self.dense, self.dense_bias)
        return tf.nn.softmax(logits) if self.softmax else logits


def _build_graph(tf: Any, opts: dict[str, str]) -> tuple[Any, int]:
    """The model the options name, and its number of classes."""
    if opts["graph"] == "keras":
        import keras

        keras.backend.set_image_data_format("channels_last")
        return keras.applications.ResNet50(weights=None, input_shape=(224, 224, 3), classes=1000), 1000
    if opts["graph"] == "replica":
        return Replica(tf, bias=opts["bias"] == "1", softmax=opts["softmax"] == "1"), 1001
    raise SystemExit(f"unknown graph {opts['graph']!r}")


def _fetches(tf: Any, outputs: Any, classes: int, fetch: str) -> Any:
    """What the step returns: the tuner's sum of the outputs, or tf_cnn_benchmarks' forward-only fetches
    (all logits, top-1 and top-5 accuracy against random labels drawn in the step)."""
    if fetch == "sum":
        return tf.reduce_sum(tf.cast(outputs, tf.float32))
    labels = tf.random.uniform((BATCH,), maxval=classes - 1, dtype=tf.int32)
    top1 = tf.reduce_sum(tf.cast(tf.nn.in_top_k(targets=labels, predictions=outputs, k=1), tf.float32)) / BATCH
    top5 = tf.reduce_sum(tf.cast(tf.nn.in_top_k(targets=labels, predictions=outputs, k=5), tf.float32)) / BATCH
    return {"all_logits": outputs, "top_1_accuracy": top1, "top_5_accuracy": top5}


def _images(tf: Any) -> Any:
    return tf.random.uniform((BATCH, 224, 224, 3), dtype=tf.float32, seed=1)


def _op_counts(graph_defs: list[Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for graph_def in graph_defs:
        nodes = list(graph_def.node) + [n for f in graph_def.library.function for n in f.node_def]
        for node in nodes:
            counts[node.op] = counts.get(node.op, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: -item[1]))


def _time_loop(step: Any, warmup: int, timed: int) -> dict[str, Any]:
    """tf_cnn_benchmarks' loop and the tuner's: per-step perf_counter, images/sec over the timed loop's wall."""
    begin = time.perf_counter()
    step()
    first = time.perf_counter() - begin
    times: dict[str, list[float]] = {"warmup": [], "timed": []}
    loop_started = 0.0
    for phase, count in (("warmup", warmup), ("timed", timed)):
        loop_started = time.perf_counter()
        for _ in range(count):
            begin = time.perf_counter()
            step()
            times[phase].append(time.perf_counter() - begin)
    wall = time.perf_counter() - loop_started
    return {
        "first_step_seconds": first,
        "warmup_seconds": times["warmup"],
        "timed_seconds": times["timed"],
        "timed_wall_seconds": wall,
        "images_per_sec": timed * BATCH / wall,
    }


def run_step(opts: dict[str, str], warmup: int, timed: int, partition_graphs: bool = False) -> dict[str, Any]:
    """Build the named model and step, time it; with ``partition_graphs`` (session loop only) return the op
    inventory of the graph as it really ran (after grappler and the oneDNN rewrite) instead."""
    started = time.perf_counter()
    import tensorflow as tf

    if opts["loop"] not in ("function", "session"):
        raise SystemExit(f"unknown loop {opts['loop']!r}")
    tf.config.threading.set_intra_op_parallelism_threads(INTRA)
    tf.config.threading.set_inter_op_parallelism_threads(INTER)
    if partition_graphs and opts["loop"] == "session":
        session, fetches = _session(tf, opts)
        options = tf.compat.v1.RunOptions(output_partition_graphs=True)
        metadata = tf.compat.v1.RunMetadata()
        session.run(fetches, options=options, run_metadata=metadata)
        return {"ops": _op_counts(list(metadata.partition_graphs))}
    step = _make_step(tf, opts)
    built = time.perf_counter()
    result = _time_loop(step, warmup, timed)
    from tensorflow.python.util import _pywrap_util_port

    result.update(
        options=opts,
        build_seconds=built - started,
        framework_version=tf.__version__,
        onednn=bool(_pywrap_util_port.IsMklEnabled()),
        intra_op=tf.config.threading.get_intra_op_parallelism_threads(),
        inter_op=tf.config.threading.get_inter_op_parallelism_threads(),
        cpus=sorted(os.sched_getaffinity(0)),
        environment={k: os.environ.get(k) for k in ENV_KNOBS},
    )
    return result


def _make_step(tf: Any, opts: dict[str, str]) -> Any:
    """One variant's step, built in this process (threads already set): a callable that runs one batch."""
    random_input = opts["input"] == "random"
    if opts["loop"] == "function":
        model, classes = _build_graph(tf, opts)
        images = None if random_input else _images(tf)

        def body() -> Any:
            x = _images(tf) if random_input else images
            return _fetches(tf, model(x, training=False), classes, opts["fetch"])

        compiled = tf.function(body)
        if opts["fetch"] == "sum":
            return lambda: float(compiled().numpy())  # the tuner's step, as tuner/worker.py runs it
        return lambda: {k: v.numpy() for k, v in compiled().items()}
    session, fetches = _session(tf, opts)
    return lambda: session.run(fetches)


def _session(tf: Any, opts: dict[str, str]) -> tuple[Any, Any]:
    """tf_cnn_benchmarks' loop: the model in a tf.compat.v1 graph, a session with its thread counts, the
    variables initialised; the session and what each step fetches."""
    graph = tf.Graph()
    with graph.as_default():
        model, classes = _build_graph(tf, opts)
        if opts["input"] == "random":
            x = _images(tf)
        else:  # tf_cnn_benchmarks keeps synthetic images in a local variable, made once
            x = tf.compat.v1.Variable(_images(tf), trainable=False, name="synthetic_images")
        fetches = _fetches(tf, model(x, training=False), classes, opts["fetch"])
        init = tf.compat.v1.global_variables_initializer()
    config = tf.compat.v1.ConfigProto(
        intra_op_parallelism_threads=INTRA, inter_op_parallelism_threads=INTER, allow_soft_placement=True
    )
    session = tf.compat.v1.Session(graph=graph, config=config)
    session.run(init)
    return session, fetches


def alternate(variants: list[dict[str, str]], warmup: int, timed: int) -> dict[str, Any]:
    """Every variant built in one process, then their steps alternated (A B C A B C ...: load from other work
    on the host hits each alike); images/sec per variant over its own timed steps."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(INTRA)
    tf.config.threading.set_inter_op_parallelism_threads(INTER)
    # tf.function variants are built and traced first: once Keras has built a model inside a tf.compat.v1
    # Graph, an eager Keras model can no longer be called (traced), though its traced function still runs.
    steps: list[Any] = [None] * len(variants)
    first = [0.0] * len(variants)
    for index in sorted(range(len(variants)), key=lambda i: variants[i]["loop"] != "function"):
        steps[index] = _make_step(tf, variants[index])
        begin = time.perf_counter()
        steps[index]()
        first[index] = time.perf_counter() - begin
    times: list[dict[str, list[float]]] = [{"warmup": [], "timed": []} for _ in steps]
    for phase, count in (("warmup", warmup), ("timed", timed)):
        for _ in range(count):
            for index, step in enumerate(steps):
                begin = time.perf_counter()
                step()
                times[index][phase].append(time.perf_counter() - begin)
    return {
        "variants": [
            {
                "options": opts,
                "first_step_seconds": first[i],
                "warmup_seconds": times[i]["warmup"],
                "timed_seconds": times[i]["timed"],
                "images_per_sec": timed * BATCH / sum(times[i]["timed"]),
                "step_median_seconds": statistics.median(times[i]["timed"]),
            }
            for i, opts in enumerate(variants)
        ],
        "framework_version": tf.__version__,
        "intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
        "cpus": sorted(os.sched_getaffinity(0)),
        "environment": {k: os.environ.get(k) for k in ENV_KNOBS},
    }


def count_flops(opts: dict[str, str], graph_file: str | None = None) -> dict[str, Any]:
    """FLOPs per image of the forward pass at batch 1, by the profiler the tuner uses (tuner/worker.py
    count_flops), and the graph's op types before optimisation."""
    import tensorflow as tf
    from tensorflow.python.profiler.model_analyzer import profile
    from tensorflow.python.profiler.option_builder import ProfileOptionBuilder

    options = ProfileOptionBuilder(ProfileOptionBuilder.float_operation()).with_empty_output().build()
    if graph_file is not None:  # tf_cnn_benchmarks' own graph, written by its --graph_file (batch 32)
        from google.protobuf import text_format  # type: ignore[import-untyped]

        graph_def = tf.compat.v1.GraphDef()
        text = Path(graph_file).read_text()
        text_format.Merge(text, graph_def)
        graph = tf.Graph()
        with graph.as_default():
            tf.compat.v1.import_graph_def(graph_def, name="")
        flops = profile(graph=graph, options=options).total_float_ops
        return {"graph_file": graph_file, "flops_per_batch": flops, "ops": _op_counts([graph_def])}
    model, _ = _build_graph(tf, opts)
    x = tf.zeros((1, 224, 224, 3))
    concrete = tf.function(lambda: tf.reduce_sum(model(x, training=False))).get_concrete_function()
    flops = profile(graph=concrete.graph, options=options).total_float_ops
    return {"options": opts, "flops_per_image": flops, "ops": _op_counts([concrete.graph.as_graph_def()])}


def overhead(calls: int) -> dict[str, Any]:
    """A trivial step's own cost in each loop: what the call, the fetch and the sync add per step."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(INTRA)
    tf.config.threading.set_inter_op_parallelism_threads(INTER)
    x = tf.random.uniform((BATCH, 1000), seed=1)
    small = tf.function(lambda: tf.reduce_sum(x))
    results: dict[str, Any] = {}

    def timed(name: str, step: Any) -> None:
        for _ in range(10):
            step()
        begin = time.perf_counter()
        for _ in range(calls):
            step()
        results[name] = (time.perf_counter() - begin) / calls * 1e6

    timed("function_numpy_us", lambda: float(small().numpy()))
    graph = tf.Graph()
    with graph.as_default():
        v = tf.compat.v1.Variable(tf.random.uniform((BATCH, 1000), seed=1), trainable=False)
        total = tf.reduce_sum(v)
        labels = tf.random.uniform((BATCH,), maxval=999, dtype=tf.int32)
        logits_fetch = {
            "all_logits": v,
            "top_1": tf.reduce_mean(tf.cast(tf.nn.in_top_k(targets=labels, predictions=v, k=1), tf.float32)),
        }
        init = tf.compat.v1.global_variables_initializer()
    config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=INTRA, inter_op_parallelism_threads=INTER)
    session = tf.compat.v1.Session(graph=graph, config=config)
    session.run(init)
    timed("session_scalar_us", lambda: session.run(total))
    timed("session_logits_us", lambda: session.run(logits_fetch))
    results["calls"] = calls
    return results


# -- the driver, in the tuner's venv ---------------------------------------------------------------------------


def _clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """As the tuner's child gets it: an allowlist of this environment, the fixed variables and the knobs."""
    env = {k: os.environ[k] for k in ("PATH", "HOME", "USER", "LANG", "LC_ALL", "TMPDIR", "TZ") if k in os.environ}
    env.update(ENV_FIXED)
    env.update(ENV_KNOBS)
    env.update(extra or {})
    return env


def _run_locked(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``argv`` pinned to ``CORES`` and run to its end under the host's measurement lock and then the
    intel-tensorflow environment's lock, shared: the order the tuner's own trials take them in
    (tuner/runner.py), so no build clears the interpreter mid-run. The locks are tuner's own
    (``tuner.lockfile.held``: never through a link planted in their place, never blocking on a FIFO), held
    by this driver while the child runs, not flock(1)'s, which opens a lock file through links."""
    from tuner.lockfile import held
    from tuner.runner import HOST_LOCK
    from tuner.runtime import load

    environment = load("intel-tensorflow").env_lock

    def waiting(lock: Path, why: str) -> Callable[[], None]:
        return lambda: print(f"waiting for {lock}: {why}", flush=True)

    with contextlib.ExitStack() as locks:
        locks.enter_context(held(HOST_LOCK, waiting(HOST_LOCK, "another measurement holds these cores")))
        if environment is not None:  # a read-only shared environment without a lock file runs unlocked, as trials do
            build = waiting(environment, "the environment is being built")
            locks.enter_context(held(environment, build, shared=True, what="the environment lock", missing_ok=True))
        pinned = ["taskset", "-c", CORES, *argv]
        return subprocess.run(pinned, cwd=cwd, env=_clean_env(), capture_output=True, text=True, check=False)


def _intel_python() -> str:
    """The intel-tensorflow environment's interpreter ($TUNER_ENVS or .envs/); a missing or half-built
    environment, or a $TUNER_ENVS that is not a folder, is one line (``UsageError``)."""
    from tuner.runtime import load

    return load("intel-tensorflow").python()


def _check_tfcnn(arms: list[str]) -> None:
    """Arms that run tf_cnn_benchmarks need its folder: one line naming it and $TFCNN_DIR if it is not one."""
    if any(arm.startswith("tfcnn") for arm in arms) and not (TFCNN / "tf_cnn_benchmarks.py").is_file():
        from tuner.errors import UsageError

        raise UsageError(f"no tf_cnn_benchmarks.py in {TFCNN}: set $TFCNN_DIR to its folder (tensorflow/benchmarks)")


def _parse_opts(text: str) -> dict[str, str]:
    opts = {"graph": "keras", "bias": "0", "softmax": "0", "loop": "function", "fetch": "sum", "input": "constant"}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        if key not in opts:
            raise SystemExit(f"unknown step option {key!r}; known: {', '.join(opts)}")
        opts[key] = value
    return opts


def _run_tfcnn(arm: str, warmup: int, timed: int, log_dir: Path, index: int) -> dict[str, Any]:
    argv = [
        _intel_python(),
        "tf_cnn_benchmarks.py",
        "--model=resnet50",
        f"--batch_size={BATCH}",
        "--data_format=NHWC",
        f"--num_intra_threads={INTRA}",
        f"--num_inter_threads={INTER}",
        "--forward_only=True",
        f"--num_warmup_batches={warmup}",
        f"--num_batches={timed}",
        "--device=cpu",
        "--mkl=True",
    ]
    if arm == "tfcnn":  # the settings as flags too: --mkl=True writes its own defaults over the environment
        argv += ["--kmp_blocktime=1", f"--kmp_affinity={AFFINITY}"]
    elif arm != "tfcnn-default":
        raise SystemExit(f"unknown arm {arm!r}")
    done = _run_locked(argv, TFCNN)
    log = done.stdout + done.stderr
    (log_dir / f"{index:02d}-{arm}.log").write_text(log)
    total = re.search(r"total images/sec: ([\d.]+)", log)
    if done.returncode != 0 or total is None:
        raise SystemExit(f"tf_cnn_benchmarks failed ({done.returncode}):\n{log[-3000:]}")
    blocktime = re.findall(r"KMP_BLOCKTIME='?(\w+)", log)
    affinity = re.findall(r"KMP_AFFINITY='([^']*)'", log)
    return {
        "images_per_sec": float(total.group(1)),
        "kmp_blocktime_read_back": blocktime[-1] if blocktime else None,
        "kmp_affinity_read_back": affinity[-1] if affinity else None,
        "warnings": [line for line in log.splitlines() if "ignored" in line.lower() or "overrid" in line.lower()],
    }


def _run_tuner(warmup: int, timed: int) -> dict[str, Any]:
    from tuner.policy import MeasurementPolicy
    from tuner.runner import TrialSpec, runtime_runner
    from tuner.runtime import load
    from tuner.settings import Settings
    from tuner.workload import Workload

    knobs = ";".join(f"{k}={v}" for k, v in ENV_KNOBS.items())
    settings = Settings.parse(f"intra_op={INTRA};inter_op={INTER};data_format=NHWC;{knobs}")
    policy = MeasurementPolicy("reference-gap", warmup, timed, timeout_s=1200.0)
    runner = runtime_runner(load("intel-tensorflow"))
    m = runner.run(TrialSpec(settings, Workload("resnet50", "infer", BATCH), (0, 1), policy))
    return {
        "images_per_sec": m.loop_images_per_sec,
        "step_median_seconds": statistics.median(m.timed_seconds),
        "timed_seconds": list(m.timed_seconds),
        "kmp_blocktime_read_back": m.facts.get("kmp_blocktime"),
        "omp_max_threads": m.facts.get("omp_max_threads"),
        "intra_op": m.facts.get("intra_op"),
        "inter_op": m.facts.get("inter_op"),
        "first_step_seconds": m.facts.get("first_step_seconds"),
    }


def _run_step(arm: str, warmup: int, timed: int, log_dir: Path, index: int) -> dict[str, Any]:
    opts = _parse_opts(arm.partition(":")[2])
    argv = [_intel_python(), "-m", "bench.reference_gap", "step", "--options", json.dumps(opts)]
    argv += ["--warmup", str(warmup), "--timed", str(timed)]
    done = _run_locked(argv, ROOT)
    log = done.stdout + done.stderr
    (log_dir / f"{index:02d}-{re.sub(r'[^A-Za-z0-9=.-]+', '_', arm)}.log").write_text(log)
    found = [line for line in done.stdout.splitlines() if line.startswith(RESULT_TAG)]
    if done.returncode != 0 or not found:
        raise SystemExit(f"step {arm} failed ({done.returncode}):\n{log[-3000:]}")
    result: dict[str, Any] = json.loads(found[-1][len(RESULT_TAG) :])
    result["step_median_seconds"] = statistics.median(result["timed_seconds"])
    return result


def run_arm(arm: str, warmup: int, timed: int, log_dir: Path, index: int) -> dict[str, Any]:
    if arm == "tuner":
        return _run_tuner(warmup, timed)
    if arm.startswith("step:") or arm == "step":
        return _run_step(arm, warmup, timed, log_dir, index)
    return _run_tfcnn(arm, warmup, timed, log_dir, index)


def merge_output(name: str, result: dict[str, Any], output: Path) -> None:
    data = json.loads(output.read_text()) if output.exists() else {}
    data.setdefault("settings", {})
    data["settings"] = {
        "runtime": "intel-tensorflow 2.14",
        "cores": CORES,
        "batch": BATCH,
        "data_format": "NHWC",
        "intra_op": INTRA,
        "inter_op": INTER,
        **ENV_KNOBS,
    }
    data.setdefault("comparisons", {})[name] = result
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(data, indent=1) + "\n")


def compare(arms: list[str], pairs: int, name: str, warmup: int, timed: int, output: Path) -> int:
    """Every arm once per round, the order rotated each round (A B C, B C A, ...)."""
    log_dir = LOGS / name
    log_dir.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict[str, Any]]] = {arm: [] for arm in arms}
    order = []
    index = 0
    for round_ in range(pairs):
        for offset in range(len(arms)):
            arm = arms[(round_ + offset) % len(arms)]
            index += 1
            started, load = time.monotonic(), os.getloadavg()[0]
            result = run_arm(arm, warmup, timed, log_dir, index)
            result["round"], result["wall_seconds"] = round_, time.monotonic() - started
            result["load_before"] = load  # the host's 1-minute load average as the run was started
            runs[arm].append(result)
            order.append(arm)
            print(f"[{index}/{pairs * len(arms)}] round {round_ + 1} {arm}: {result['images_per_sec']:.2f} img/s "
                  f"({result['wall_seconds']:.0f} s)", flush=True)  # fmt: skip
    rates = {arm: [r["images_per_sec"] for r in runs[arm]] for arm in arms}
    summary = summarize(rates, f"{name}: {pairs} rounds, {warmup} warm-up + {timed} timed batches, images/sec")
    record = {"arms": arms, "rounds": pairs, "warmup": warmup, "timed": timed, "order": order, "summary": summary}
    record.update(runs=runs, measured=time.strftime("%Y-%m-%dT%H:%M:%S%z"), design="one process per run")
    merge_output(name, record, output)
    print(f"written to {output} ({name})")
    return 0


def summarize(rates: dict[str, list[float]], heading: str) -> dict[str, dict[str, Any]]:
    """Each arm's median, range and runs, and its paired ratios to the first arm; printed under ``heading``."""
    first = next(iter(rates))
    summary: dict[str, dict[str, Any]] = {}
    for arm, runs in rates.items():
        ratios = [a / b for a, b in zip(runs, rates[first], strict=True)]
        summary[arm] = {
            "median": statistics.median(runs),
            "range": [min(runs), max(runs)],
            "runs": runs,
            f"paired_ratio_to_{first}": {"median": statistics.median(ratios), "range": [min(ratios), max(ratios)]},
        }
    print(f"\n{heading}")
    for arm, s in summary.items():
        ratio = s[f"paired_ratio_to_{first}"]
        print(f"  {arm:58} median {s['median']:6.2f}  range {s['range'][0]:6.2f} to {s['range'][1]:6.2f}  "
              f"/ {first}: {ratio['median']:.3f} [{ratio['range'][0]:.3f}, {ratio['range'][1]:.3f}]")  # fmt: skip
    return summary


def interleaved(arms: list[str], rounds: int, name: str, warmup: int, timed: int, output: Path) -> int:
    """``rounds`` processes, each alternating every arm's steps; the arms' order rotated between processes."""
    log_dir = LOGS / name
    log_dir.mkdir(parents=True, exist_ok=True)
    per_arm: dict[str, list[float]] = {arm: [] for arm in arms}
    processes = []
    for round_ in range(rounds):
        order = arms[round_ % len(arms) :] + arms[: round_ % len(arms)]
        variants = [_parse_opts(arm.partition(":")[2]) for arm in order]
        argv = [_intel_python(), "-m", "bench.reference_gap", "alternate", "--variants", json.dumps(variants)]
        argv += ["--warmup", str(warmup), "--timed", str(timed)]
        started, load = time.monotonic(), os.getloadavg()[0]
        done = _run_locked(argv, ROOT)
        (log_dir / f"{round_ + 1:02d}.log").write_text(done.stdout + done.stderr)
        found = [line for line in done.stdout.splitlines() if line.startswith(RESULT_TAG)]
        if done.returncode != 0 or not found:
            raise SystemExit(f"alternation failed ({done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}")
        result = json.loads(found[-1][len(RESULT_TAG) :])
        result.update(order=order, load_before=load, wall_seconds=time.monotonic() - started)
        processes.append(result)
        for arm, variant in zip(order, result["variants"], strict=True):
            per_arm[arm].append(variant["images_per_sec"])
        rates = ", ".join(f"{arm}: {v['images_per_sec']:.2f}" for arm, v in zip(order, result["variants"], strict=True))
        print(f"[{round_ + 1}/{rounds}] {rates} ({result['wall_seconds']:.0f} s)", flush=True)
    heading = f"{name}: {rounds} processes, steps alternated, {warmup} warm-up + {timed} timed batches each, images/sec"
    summary = summarize(per_arm, heading)
    record = {"arms": arms, "rounds": rounds, "warmup": warmup, "timed": timed, "summary": summary}
    record.update(processes=processes, measured=time.strftime("%Y-%m-%dT%H:%M:%S%z"), design="in-process alternation")
    merge_output(name, record, output)
    print(f"written to {output} ({name})")
    return 0


def flops(output: Path, graph_file: str | None) -> int:
    """FLOPs per image and op inventory (as written, and as run in a session) of each graph."""
    variants = {
        "keras": "graph=keras",
        "replica": "graph=replica",
        "replica+bias": "graph=replica,bias=1",
        "replica+bias+softmax": "graph=replica,bias=1,softmax=1",
    }
    result: dict[str, Any] = {}
    for label, text in variants.items():
        opts = _parse_opts(text)
        for task in ("flops", "ops"):
            argv = [_intel_python(), "-m", "bench.reference_gap", "graph", "--task", task]
            argv += ["--options", json.dumps({**opts, "loop": "session"})]
            done = _run_locked(argv, ROOT)
            found = [line for line in done.stdout.splitlines() if line.startswith(RESULT_TAG)]
            if done.returncode != 0 or not found:
                raise SystemExit(f"graph {label} {task} failed:\n{(done.stdout + done.stderr)[-3000:]}")
            value = json.loads(found[-1][len(RESULT_TAG) :])
            if task == "flops":
                result.setdefault(label, {}).update(flops_per_image=value["flops_per_image"], ops_written=value["ops"])
            else:
                result.setdefault(label, {}).update(ops_run=value["ops"])
        print(f"{label:22} {result[label]['flops_per_image'] / 1e9:.3f} GFLOPs/image")
    if graph_file:
        argv = [_intel_python(), "-m", "bench.reference_gap", "graph", "--task", "flops", "--graph-file", graph_file]
        done = _run_locked(argv, ROOT)
        found = [line for line in done.stdout.splitlines() if line.startswith(RESULT_TAG)]
        if done.returncode != 0 or not found:
            raise SystemExit(f"tf_cnn_benchmarks graph failed:\n{(done.stdout + done.stderr)[-3000:]}")
        value = json.loads(found[-1][len(RESULT_TAG) :])
        value["flops_per_image"] = value["flops_per_batch"] / BATCH
        result["tf_cnn_benchmarks"] = value
        print(f"{'tf_cnn_benchmarks':22} {value['flops_per_image'] / 1e9:.3f} GFLOPs/image (its own graph, batch 32)")
    merge_output("flops", result, output)
    print(f"written to {output} (flops)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.reference_gap", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compare", help="arms interleaved (venv)")
    c.add_argument("--arms", required=True, help="comma-separated; a step arm's options joined with '+'")
    c.add_argument("--pairs", type=int, default=3, help="rounds (each arm once per round)")
    c.add_argument("--name", required=True)
    i = sub.add_parser("interleaved", help="arms' steps alternated inside each process (venv)")
    i.add_argument("--arms", required=True, help="step arms, comma-separated; an arm's options joined with '+'")
    i.add_argument("--rounds", type=int, default=2, help="processes (the arms' order rotated)")
    i.add_argument("--name", required=True)
    a = sub.add_parser("alternate", help="several variants' steps alternated (intel-tensorflow python)")
    a.add_argument("--variants", required=True, help="JSON list of step options")
    f = sub.add_parser("flops", help="FLOPs per image and op inventories (venv)")
    f.add_argument("--graph-file", default=None, help="tf_cnn_benchmarks' graph from its --graph_file")
    s = sub.add_parser("step", help="one run of this file's step (intel-tensorflow python)")
    s.add_argument("--options", required=True, help="JSON")
    g = sub.add_parser("graph", help="one graph's FLOPs or op inventory (intel-tensorflow python)")
    g.add_argument("--task", choices=("flops", "ops"), required=True)
    g.add_argument("--options", default="{}")
    g.add_argument("--graph-file", default=None)
    o = sub.add_parser("overhead", help="a trivial step's cost per loop (intel-tensorflow python)")
    o.add_argument("--calls", type=int, default=500)
    o.add_argument("--output", type=Path, default=OUTPUT)
    for p in (c, s, i, a):
        p.add_argument("--warmup", type=int, default=WARMUP)
        p.add_argument("--timed", type=int, default=TIMED)
    for p in (c, f, i):
        p.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    if args.command in ("compare", "interleaved", "flops"):  # the controller: bad input is one line, exit 1
        from tuner.errors import TunerError

        try:
            _intel_python()
            _check_tfcnn(args.arms.split(",") if args.command == "compare" else [])
            return _command(args)
        except TunerError as error:
            print(f"reference_gap: error: {error}", file=sys.stderr)
            return 1
    return _command(args)


def _command(args: argparse.Namespace) -> int:
    if args.command == "compare":
        # In --arms, a step arm's own options are joined with '+' (the arms themselves with ',').
        arms = [arm.replace("+", ",") for arm in args.arms.split(",")]
        return compare(arms, args.pairs, args.name, args.warmup, args.timed, args.output)
    if args.command == "interleaved":
        arms = [arm.replace("+", ",") for arm in args.arms.split(",")]
        return interleaved(arms, args.rounds, args.name, args.warmup, args.timed, args.output)
    if args.command == "alternate":
        result = alternate(json.loads(args.variants), args.warmup, args.timed)
        print(RESULT_TAG + json.dumps(result), flush=True)
        return 0
    if args.command == "flops":
        return flops(args.output, args.graph_file)
    if args.command == "step":
        print(RESULT_TAG + json.dumps(run_step(json.loads(args.options), args.warmup, args.timed)), flush=True)
        return 0
    if args.command == "graph":
        opts = _parse_opts("") | json.loads(args.options)
        if args.task == "flops":
            print(RESULT_TAG + json.dumps(count_flops(opts, args.graph_file)), flush=True)
        else:
            print(RESULT_TAG + json.dumps(run_step(opts, 0, 0, partition_graphs=True)), flush=True)
        return 0
    if args.command == "overhead":
        result = overhead(args.calls)
        print(json.dumps(result, indent=1))
        merge_output("overhead", result, args.output)
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())

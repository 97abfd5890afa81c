"""One trial, in a fresh process: pin, set threads, build the model, time the steps.

This file runs inside the *target* Python environment, which may hold only the framework, so it imports
nothing beyond the standard library at module level and the framework inside functions; it never imports
the ``tuner`` package. The parent starts it as a script with explicit argv::

    python worker.py --channel-fd N --spec '{"cores": [0, 1], "intra_op": 2, ...}'

Every event goes to the dedicated channel (file descriptor N) as one JSON object per line: ``start``, one
``step`` per warm-up and timed step (so the parent can prune mid-trial), and a final ``result`` with raw
step times and what the runtime really applied, read back from it rather than echoed from the request.

Tasks (``"task"`` in the spec): ``measure`` (default: time train or infer steps, on one CPU replica or
several through ``tf.distribute.MirroredStrategy``), ``flops`` (count the model's FLOPs per image from its
graphs), ``matmul`` (a large fp32 matmul's GFLOP/s on the same core set: the hardware yardstick) and
``devices`` (the runtime facts alone, GPUs seen included).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import platform
import re
import sys
import time
from typing import Any

IMAGE_SHAPES = {"resnet50": (224, 224, 3), "tiny": (32, 32, 3)}
CLASSES = {"resnet50": 1000, "tiny": 10}


class Channel:
    """JSON lines on a file descriptor the parent reads; stdout and stderr stay free for logs."""

    def __init__(self, fd: int) -> None:
        self._file = os.fdopen(fd, "w", buffering=1)

    def send(self, event: str, **payload: Any) -> None:
        self._file.write(json.dumps({"event": event, **payload}) + "\n")
        self._file.flush()


def build_model(name: str, data_format: str) -> Any:
    """Keras ResNet-50 without weights (no download) or the tiny test model, in the given layout."""
    import keras

    keras.backend.set_image_data_format(data_format)
    height, width, channels = IMAGE_SHAPES[name]
    shape = (height, width, channels) if data_format == "channels_last" else (channels, height, width)
    if name == "resnet50":
        return keras.applications.ResNet50(weights=None, input_shape=shape, classes=CLASSES[name])
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input(shape=shape),
            layers.Conv2D(16, 3, padding="same", activation="relu"),
            layers.Conv2D(32, 3, strides=2, padding="same", activation="relu"),
            layers.Conv2D(32, 3, strides=2, padding="same", activation="relu"),
            layers.GlobalAveragePooling2D(),
            layers.Dense(CLASSES[name]),
        ]
    )


def build_step(tf: Any, model: Any, mode: str, batch: int, name: str, strategy: Any = None) -> Any:
    """A compiled (``tf.function``) train or infer step on synthetic data made once, outside the timed loop.

    With a ``tf.distribute`` strategy each replica gets its own ``batch`` (global batch = batch x replicas),
    gradients are all-reduced by the optimizer, and the step returns the summed loss over replicas.
    """
    shape = (batch, *model.input_shape[1:])

    def make_inputs(_context: Any = None) -> tuple[Any, Any]:
        images = tf.random.uniform(shape, dtype=tf.float32, seed=1)
        labels = tf.random.uniform((batch,), maxval=CLASSES[name], dtype=tf.int32, seed=2)
        return images, labels

    import keras

    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=name == "tiny", reduction="none")
    replicas = 1 if strategy is None else strategy.num_replicas_in_sync
    if strategy is None:
        inputs = make_inputs()
    else:
        inputs = strategy.experimental_distribute_values_from_function(make_inputs)
        with strategy.scope():
            optimizer = keras.optimizers.SGD(learning_rate=0.01)
    if strategy is None:
        optimizer = keras.optimizers.SGD(learning_rate=0.01)

    def forward(batch_inputs: tuple[Any, Any]) -> Any:
        return tf.reduce_sum(model(batch_inputs[0], training=False))

    def update(batch_inputs: tuple[Any, Any]) -> Any:
        images, labels = batch_inputs
        with tf.GradientTape() as tape:
            per_example = loss_fn(labels, model(images, training=True))
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=batch * replicas)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    body = forward if mode == "infer" else update

    def one_step() -> Any:
        if strategy is None:
            return body(inputs)
        return strategy.reduce("SUM", strategy.run(body, args=(inputs,)), axis=None)

    return tf.function(one_step)


def make_strategy(tf: Any, device: str, replicas: int) -> Any:
    """None for one CPU replica; else a MirroredStrategy over GPUs, or over the CPU split into logical
    devices (how the multi-replica path is tested without a GPU). Must run before TensorFlow initialises."""
    if device == "cpu" and replicas == 1:
        return None
    if device == "cpu":
        cpus = tf.config.list_physical_devices("CPU")
        tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * replicas)
        names = [d.name for d in tf.config.list_logical_devices("CPU")][:replicas]
    else:
        gpus = tf.config.list_physical_devices("GPU")
        if len(gpus) < replicas:
            raise SystemExit(f"asked for {replicas} GPUs, TensorFlow sees {len(gpus)}")
        names = [f"/gpu:{i}" for i in range(replicas)]
    return tf.distribute.MirroredStrategy(devices=names)


def count_flops(tf: Any, model: Any, name: str) -> dict[str, float]:
    """FLOPs per image of the forward pass and of one training step, counted from their graphs by
    TensorFlow's profiler (registered per-op statistics: convolutions, their gradients, matmuls)."""
    from tensorflow.python.profiler.model_analyzer import profile
    from tensorflow.python.profiler.option_builder import ProfileOptionBuilder

    options = ProfileOptionBuilder(ProfileOptionBuilder.float_operation()).with_empty_output().build()
    counted = {}
    for mode in ("infer", "train"):
        graph = build_step(tf, model, mode, 1, name).get_concrete_function().graph
        counted[mode] = float(profile(graph=graph, options=options).total_float_ops)
    return counted


def runtime_facts(tf: Any) -> dict[str, Any]:
    """What the runtime really applied: read back from TensorFlow and from the process itself."""
    try:
        from tensorflow.python.util import _pywrap_util_port

        onednn: bool | None = bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):
        onednn = None
    return {
        "framework": "tensorflow",
        "framework_version": tf.__version__,
        "onednn": onednn,
        "intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
        "threads": len(os.listdir("/proc/self/task")),
        "cpus": sorted(os.sched_getaffinity(0)),
        "gpus": len(tf.config.list_physical_devices("GPU")),
        "python": platform.python_version(),
        "pid": os.getpid(),
    }


def set_precision(precision: str) -> None:
    """bf16: Keras's ``mixed_bfloat16`` policy (bf16 compute, fp32 variables), before the model is built."""
    if precision == "fp32":
        return
    if precision != "bf16":
        raise SystemExit(f"unknown precision {precision!r}")
    import keras

    keras.mixed_precision.set_global_policy("mixed_bfloat16")


def compute_dtype(model: Any) -> str | None:
    """The compute type the model's first layer with weights really uses (read back, not echoed)."""
    for layer in model.layers:
        if layer.weights:
            dtype = getattr(layer, "compute_dtype", None)
            return str(getattr(dtype, "name", dtype)) if dtype is not None else None
    return None


ALLOCATOR_LIBS = {"libtcmalloc": "tcmalloc", "libtcmalloc_minimal": "tcmalloc", "libjemalloc": "jemalloc"}


def allocator_facts() -> dict[str, Any]:
    """Which allocator the process really mapped (a preload that failed leaves the system's)."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            path = line.split()[-1]
            name = os.path.basename(path).split(".so")[0]
            if name in ALLOCATOR_LIBS:
                return {"allocator": ALLOCATOR_LIBS[name], "allocator_path": path}
    return {"allocator": "system"}


def keras_facts() -> dict[str, Any]:
    """Keras's float type and dtype policy as the model ran: a keras.json could have changed them."""
    import keras

    config = getattr(keras, "config", None)  # Keras 3; Keras 2 (intel-tensorflow 2.14) keeps it in mixed_precision
    policy = config.dtype_policy() if config is not None else keras.mixed_precision.global_policy()
    return {"floatx": keras.backend.floatx(), "dtype_policy": policy.name}


OPENMP_LIBS = ("libiomp5", "libgomp", "libomp")
VERBOSE_RUNTIME = re.compile(r"^(?:onednn|dnnl)_verbose,.*\bruntime:([^,\s]+)")


def openmp_facts() -> dict[str, Any]:
    """Which OpenMP library the process really loaded and, through its own API, the values it uses."""
    loaded: dict[str, str] = {}
    with open("/proc/self/maps") as maps:
        for line in maps:
            path = line.split()[-1]
            name = os.path.basename(path).split(".so")[0]
            if name in OPENMP_LIBS:
                loaded.setdefault(name, path)
    facts: dict[str, Any] = {"openmp": None}
    if not loaded:
        return facts
    name = next(lib for lib in OPENMP_LIBS if lib in loaded)
    facts.update(openmp=name, openmp_path=loaded[name])
    import ctypes

    try:
        lib = ctypes.CDLL(loaded[name])
        facts["omp_max_threads"] = int(lib.omp_get_max_threads())
        if hasattr(lib, "kmp_get_blocktime"):
            facts["kmp_blocktime"] = int(lib.kmp_get_blocktime())
    except (OSError, AttributeError) as error:  # a diagnostic must never fail the measurement
        facts["openmp_error"] = str(error)
    return facts


def thread_cpus() -> dict[str, int]:
    """How many of the process's threads may run on each CPU list: shows whether threads were bound."""
    counts: dict[str, int] = {}
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/status") as status:
                for line in status:
                    if line.startswith("Cpus_allowed_list:"):
                        cpus = line.split(":", 1)[1].strip()
                        counts[cpus] = counts.get(cpus, 0) + 1
        except OSError:
            continue  # the thread ended while we looked
    return counts


def onednn_runtime(log_path: str) -> str | None:
    """The threading runtime oneDNN's verbose mode printed (``omp``, ``threadpool``, ...), if any."""
    try:
        with open(log_path, errors="replace") as log:
            for line in log:
                found = VERBOSE_RUNTIME.search(line)
                if found:
                    return found.group(1)
    except OSError:
        return None
    return None


def run(spec: dict[str, Any], channel: Channel) -> None:
    os.sched_setaffinity(0, spec["cores"])  # before TensorFlow starts any thread
    channel.send("start", pid=os.getpid(), cpus=sorted(os.sched_getaffinity(0)))
    probe_log = None
    if spec.get("probe"):
        # Probe only: oneDNN's verbose mode prints its threading runtime on stdout, which goes to a file here
        # (never used for timed trials: verbose output would slow every step).
        import tempfile

        os.environ["ONEDNN_VERBOSE"] = "1"
        descriptor, probe_log = tempfile.mkstemp(prefix="onednn-", suffix=".log")
        atexit.register(os.unlink, probe_log)
        sys.stdout.flush()
        os.dup2(descriptor, 1)
        os.close(descriptor)
    started = time.perf_counter()
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(spec["intra_op"])
    tf.config.threading.set_inter_op_parallelism_threads(spec["inter_op"])
    task = spec.get("task", "measure")
    if task == "devices":
        channel.send("result", **runtime_facts(tf))
        return
    if task == "matmul":
        channel.send("result", **matmul_peak(tf, spec), **runtime_facts(tf))
        return
    strategy = make_strategy(tf, spec.get("device", "cpu"), spec.get("replicas", 1))
    imported = time.perf_counter()
    set_precision(spec.get("precision", "fp32"))
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        model = build_model(spec["model"], spec["data_format"])
    if task == "flops":
        channel.send("result", flops_per_image=count_flops(tf, model, spec["model"]), **runtime_facts(tf))
        return
    compiled = build_step(tf, model, spec["mode"], spec["batch_size"], spec["model"], strategy)

    def step() -> float:
        return float(compiled().numpy())

    built = time.perf_counter()
    step()  # the first call traces and optimises the graph: timed apart, never counted
    first = time.perf_counter() - built
    channel.send("traced", seconds=first)
    if spec.get("barrier"):
        # One of several instances: wait until every instance is built, so their steps run side by side.
        channel.send("ready")
        if not sys.stdin.buffer.read(1):
            raise SystemExit("the group was stopped before its start")
    times: dict[str, list[float]] = {"warmup": [], "timed": []}
    ends: list[float] = []  # CLOCK_MONOTONIC is one clock for every process: instances' steps line up
    loop_started = 0.0
    for phase in ("warmup", "timed"):
        loop_started = time.perf_counter()  # ends as the start of the timed loop
        for index in range(spec[phase]):
            begin = time.perf_counter()
            step()
            seconds = time.perf_counter() - begin
            times[phase].append(seconds)
            if phase == "timed":
                ends.append(time.monotonic())
            channel.send("step", phase=phase, index=index, seconds=seconds)
    timed_wall = time.perf_counter() - loop_started  # the timed loop's wall time, as tf_cnn_benchmarks counts
    facts = runtime_facts(tf)
    facts.update(openmp_facts(), thread_cpus=thread_cpus(), **keras_facts())
    facts.update(allocator_facts())
    facts.update(compute_dtype=compute_dtype(model))
    facts.update(replicas=1 if strategy is None else strategy.num_replicas_in_sync)
    if probe_log is not None:
        import ctypes

        sys.stdout.flush()
        ctypes.CDLL(None).fflush(None)  # oneDNN prints through C stdio: flush its buffer too
        facts["onednn_runtime"] = onednn_runtime(probe_log)
    facts.update(
        import_seconds=imported - started,
        build_seconds=built - imported,
        first_step_seconds=first,
        warmup_seconds=times["warmup"],
        timed_seconds=times["timed"],
        timed_wall_seconds=timed_wall,
        timed_ends=ends,
    )
    channel.send("result", **facts)


def matmul_peak(tf: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """GFLOP/s of a large matmul on this core set, in fp32 (or bf16 for bf16 rows): the yardstick for how
    close a model gets to the hardware. One untimed call, then ``timed`` calls; the best is the peak."""
    size = int(spec.get("size", 4096))
    dtype = tf.bfloat16 if spec.get("precision") == "bf16" else tf.float32
    a = tf.cast(tf.random.uniform((size, size), dtype=tf.float32, seed=1), dtype)
    b = tf.cast(tf.random.uniform((size, size), dtype=tf.float32, seed=2), dtype)
    product = tf.function(lambda: tf.reduce_sum(tf.linalg.matmul(a, b)))
    product().numpy()
    seconds = []
    for _ in range(int(spec.get("timed", 5))):
        begin = time.perf_counter()
        product().numpy()
        seconds.append(time.perf_counter() - begin)
    flops = 2.0 * size**3
    return {
        "size": size,
        "dtype": dtype.name,
        "matmul_seconds": seconds,
        "gflops": [flops / s / 1e9 for s in seconds],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--channel-fd", type=int, required=True)
    parser.add_argument("--spec", required=True, help="the trial as JSON")
    args = parser.parse_args(argv)
    if args.channel_fd < 3:
        parser.error("--channel-fd must not be stdin, stdout or stderr")
    run(json.loads(args.spec), Channel(args.channel_fd))
    return 0


if __name__ == "__main__":
    sys.exit(main())

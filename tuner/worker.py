"""One trial, in a fresh process: pin, set threads, build the model, time the steps.

This file runs inside the *target* Python environment, which may hold only the framework, so it imports
nothing beyond the standard library at module level and the framework inside functions; it never imports
the ``tuner`` package. The parent starts it as a script with explicit argv::

    python worker.py --channel-fd N --spec '{"cores": [0, 1], "intra_op": 2, ...}'

Every event goes to the dedicated channel (file descriptor N) as one JSON object per line: ``start``, one
``step`` per warm-up and timed step (so the parent can prune mid-trial), and a final ``result`` with raw
step times and what the runtime really applied, read back from it rather than echoed from the request.

Tasks (``"task"`` in the spec): ``measure`` (default: time train or infer steps, on one CPU replica or
several through ``tf.distribute.MirroredStrategy``), ``flops`` and ``describe`` (count the model's FLOPs per
sample from its graphs, with its parameters and input signature), ``matmul`` (a large fp32 matmul's GFLOP/s
on the same core set: the hardware yardstick),
``devices`` (the runtime facts alone, GPUs seen included) and ``screen`` (several thread settings measured in
this one process, each in its own session with its own pools: see ``screen``).
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

# keras.applications class and input size of the reference family (the controller's tuner/models.py names the
# same); "tiny" is the fast test model. All are built without weights: nothing is downloaded.
APPLICATIONS = {
    "resnet50": ("ResNet50", 224),
    "resnet101": ("ResNet101", 224),
    "resnet152": ("ResNet152", 224),
    "inception_v3": ("InceptionV3", 299),
    "vgg16": ("VGG16", 224),
    "mobilenet_v2": ("MobileNetV2", 224),
    "densenet121": ("DenseNet121", 224),
    "efficientnet_b0": ("EfficientNetB0", 224),
}
CLASSES = 1000
TINY_SHAPE, TINY_CLASSES = (32, 32, 3), 10
NO_VOCABULARY = 2  # integer inputs of a model with no embedding table are drawn from [0, 2)


class Channel:
    """JSON lines on a file descriptor the parent reads; stdout and stderr stay free for logs."""

    def __init__(self, fd: int) -> None:
        self._file = os.fdopen(fd, "w", buffering=1)

    def send(self, event: str, **payload: Any) -> None:
        self._file.write(json.dumps({"event": event, **payload}) + "\n")
        self._file.flush()


class Model:
    """What a step runs: the Keras model (None for a SavedModel), a call on the list of input tensors (in the
    order of ``inputs``), the inputs as (name, per-sample shape, dtype), the vocabulary integer inputs are
    drawn within, and the loss."""

    def __init__(self, keras_model: Any, call: Any, inputs: list[tuple[str, tuple[Any, ...], str]],
                 vocabulary: int, loss: str, classes: int = CLASSES) -> None:  # fmt: skip
        self.keras = keras_model
        self.call = call
        self.inputs = inputs
        self.vocabulary = vocabulary
        self.loss = loss  # "sparse" (an application's softmax), "logits" (tiny), "square" (a user's model)
        self.classes = classes

    @property
    def layers(self) -> list[Any]:
        return [] if self.keras is None else list(self.keras.layers)

    @property
    def trainable_variables(self) -> list[Any]:
        return [] if self.keras is None else list(self.keras.trainable_variables)

    def facts(self) -> dict[str, Any]:
        """Parameters and input signature, read from the loaded model."""
        if self.keras is not None:
            params = int(self.keras.count_params())
        else:
            params = int(sum(_size(v.shape) for v in self.call.variables))
        inputs = [{"name": name, "shape": list(shape), "dtype": dtype} for name, shape, dtype in self.inputs]
        return {"params": params, "inputs": inputs, "vocabulary": self.vocabulary}


def _size(shape: Any) -> int:
    total = 1
    for dim in shape:
        total *= int(dim)
    return total


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


def _shape_text(shape: tuple[Any, ...]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def resolve_inputs(inputs: list[tuple[str, tuple[Any, ...], str]], override: list[int] | None) -> list[Any]:
    """The inputs with every per-sample size known: from the model, else from ``--input-shape`` (which must
    then have the input's rank and agree with its known sizes); else exit asking for it."""
    resolved = []
    for name, shape, dtype in inputs:
        if None in shape or (override is not None and len(inputs) == 1 and list(shape) != override):
            if override is None:
                example = ",".join("224" if d is None else str(d) for d in shape) or "1"
                raise SystemExit(
                    f"the model's input {name!r} has shape {_shape_text(shape)} with unknown sizes: "
                    f"give --input-shape (one sample's shape, e.g. --input-shape {example})"
                )
            clash = any(d is not None and d != o for d, o in zip(shape, override, strict=False))
            if len(override) != len(shape) or clash:
                raise SystemExit(
                    f"--input-shape {','.join(map(str, override))} does not fit the model's input {name!r} "
                    f"of shape {_shape_text(shape)}"
                )
            shape = tuple(override)
        if dtype == "string":
            raise SystemExit(f"the model's input {name!r} takes strings: only numeric inputs can be synthesised")
        resolved.append((name, tuple(shape), dtype))
    return resolved


def _keras_vocabulary(model: Any) -> int:
    """The smallest ``input_dim`` of the model's Embedding layers (nested models included), else 2."""
    sizes = []
    stack = list(model.layers)
    while stack:
        layer = stack.pop()
        stack.extend(getattr(layer, "layers", []) or [])
        if type(layer).__name__ == "Embedding":
            sizes.append(int(layer.input_dim))
    return min(sizes, default=NO_VOCABULARY)


def _saved_model_vocabulary(function: Any, variables: list[Any]) -> int:
    """A SavedModel keeps no layers: where its functions gather (an embedding lookup), integer inputs stay
    below the smallest first dimension of its 2-D variables, which an embedding table is; else 2."""
    library = function.graph.as_graph_def().library.function
    gathers = any("Gather" in node.op for fdef in library for node in fdef.node_def)
    gathers = gathers or any("Gather" in op.type for op in function.graph.get_operations())
    tables = [int(v.shape[0]) for v in variables if len(v.shape) == 2]
    return min(tables) if gathers and tables else NO_VOCABULARY


def _dtype(value: Any) -> str:
    return str(getattr(value, "name", value))


def _keras_call(model: Any) -> tuple[Any, list[Any]]:
    """A call on a flat list of tensors for a Keras model whose inputs may be one tensor, a list or a dict of
    named inputs (packed back into the model's own structure), and the inputs in that list's order."""
    import tensorflow as tf

    try:
        structure = model.input  # a functional model's own structure: one tensor, a list or a dict
    except (AttributeError, ValueError):  # a Sequential model that was never called has only its flat inputs
        structure = list(model.inputs) if len(model.inputs) > 1 else model.inputs[0]

    def call(tensors: list[Any], training: bool = False) -> Any:
        return model(tf.nest.pack_sequence_as(structure, list(tensors)), training=training)

    return call, tf.nest.flatten(structure)


def build_model(spec: dict[str, Any], data_format: str) -> Model:
    """The model the spec names: an application or the tiny model built in the given layout, or a model file
    (``.keras`` loaded in safe mode, or a SavedModel's serving signature) with its own layout."""
    import keras

    kind = spec.get("model_kind", "app")
    name = spec["model"]
    override = spec.get("input_shape")
    if kind == "app":
        keras.backend.set_image_data_format(data_format)
        if name == "tiny":
            height, width, channels = override or TINY_SHAPE
        elif name in APPLICATIONS:
            size = APPLICATIONS[name][1]
            height, width, channels = override or (size, size, 3)
        else:
            raise SystemExit(f"unknown model {name!r}")
        shape = (height, width, channels) if data_format == "channels_last" else (channels, height, width)
        if name == "tiny":
            layers = keras.layers
            model = keras.Sequential(
                [
                    keras.Input(shape=shape),
                    layers.Conv2D(16, 3, padding="same", activation="relu"),
                    layers.Conv2D(32, 3, strides=2, padding="same", activation="relu"),
                    layers.Conv2D(32, 3, strides=2, padding="same", activation="relu"),
                    layers.GlobalAveragePooling2D(),
                    layers.Dense(TINY_CLASSES),
                ]
            )
            call, _ = _keras_call(model)
            return Model(model, call, [("input", shape, "float32")], NO_VOCABULARY, "logits", TINY_CLASSES)
        model = getattr(keras.applications, APPLICATIONS[name][0])(weights=None, input_shape=shape, classes=CLASSES)
        call, _ = _keras_call(model)
        return Model(model, call, [("input", shape, "float32")], NO_VOCABULARY, "sparse")
    path = spec["model_path"]
    if kind == "keras":
        try:
            model = keras.saving.load_model(path, compile=False, safe_mode=True)
        except Exception as error:  # the file is the user's: any failure to load is one line
            raise SystemExit(f"cannot load the Keras model {path}: {_first_line(error)}") from None
        call, leaves = _keras_call(model)
        declared = [(t.name, tuple(t.shape)[1:], _dtype(t.dtype)) for t in leaves]
        return Model(model, call, resolve_inputs(declared, override), _keras_vocabulary(model), "square")
    if kind == "savedmodel":
        import tensorflow as tf

        try:
            loaded = tf.saved_model.load(path)
        except Exception as error:
            raise SystemExit(f"cannot load the SavedModel {path}: {_first_line(error)}") from None
        signatures = dict(loaded.signatures)
        if not signatures:
            raise SystemExit(f"the SavedModel {path} has no serving signature to call")
        function = signatures.get("serving_default") or signatures[sorted(signatures)[0]]
        _, named = function.structured_input_signature
        declared = [(key, tuple(s.shape.as_list()[1:]), s.dtype.name) for key, s in sorted(named.items())]
        names = [key for key, _, _ in declared]

        def call(tensors: list[Any], training: bool = False) -> Any:
            return function(**dict(zip(names, tensors, strict=True)))

        call.variables = list(getattr(loaded, "variables", []))  # type: ignore[attr-defined]
        vocabulary = _saved_model_vocabulary(function, call.variables)  # type: ignore[attr-defined]
        return Model(None, call, resolve_inputs(declared, override), vocabulary, "square")
    raise SystemExit(f"unknown model kind {kind!r}")


def synthetic_inputs(tf: Any, model: Model, batch: int) -> Any:
    """One batch of each input, made once: floats uniform in [0, 1); integers uniform in [0, vocabulary),
    the model's smallest embedding table, so a lookup never indexes out of range; booleans false."""
    tensors = []
    for index, (_, shape, dtype) in enumerate(model.inputs):
        full = (batch, *shape)
        if dtype.startswith(("float", "bfloat")):
            tensors.append(tf.cast(tf.random.uniform(full, dtype=tf.float32, seed=1 + index), dtype))
        elif dtype.startswith(("int", "uint")):
            drawn = tf.random.uniform(full, maxval=model.vocabulary, dtype=tf.int64, seed=1 + index)
            tensors.append(tf.cast(drawn, dtype))
        elif dtype == "bool":
            tensors.append(tf.zeros(full, dtype=tf.bool))
        else:
            raise SystemExit(f"the model's input {model.inputs[index][0]!r} has type {dtype}: not synthesised")
    return tensors


def build_step(tf: Any, model: Model, mode: str, batch: int, strategy: Any = None) -> Any:
    """A compiled (``tf.function``) train or infer step on synthetic data made once, outside the timed loop.

    With a ``tf.distribute`` strategy each replica gets its own ``batch`` (global batch = batch x replicas),
    gradients are all-reduced by the optimizer, and the step returns the summed loss over replicas. An
    application trains on random labels with cross-entropy, as tf_cnn_benchmarks does; a user's model, whose
    outputs the tool cannot interpret, on the mean square of its outputs (forward, backward and update cost
    the same whatever the loss).
    """

    def make_inputs(_context: Any = None) -> tuple[Any, Any]:
        images = synthetic_inputs(tf, model, batch)
        labels = tf.random.uniform((batch,), maxval=model.classes, dtype=tf.int32, seed=2)
        return images, labels

    import keras

    sparse = keras.losses.SparseCategoricalCrossentropy(from_logits=model.loss == "logits", reduction="none")

    def per_example(labels: Any, outputs: Any) -> Any:
        if model.loss != "square":
            return sparse(labels, outputs)
        flat = [tf.reshape(tf.cast(out, tf.float32), (batch, -1)) for out in tf.nest.flatten(outputs)]
        return tf.add_n([tf.reduce_mean(tf.square(out), axis=1) for out in flat])

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
        outputs = tf.nest.flatten(model.call(batch_inputs[0], training=False))
        return tf.add_n([tf.reduce_sum(tf.cast(out, tf.float32)) for out in outputs])

    def update(batch_inputs: tuple[Any, Any]) -> Any:
        images, labels = batch_inputs
        with tf.GradientTape() as tape:
            losses = per_example(labels, model.call(images, training=True))
            loss = tf.nn.compute_average_loss(losses, global_batch_size=batch * replicas)
        variables = model.trainable_variables
        grads = tape.gradient(loss, variables)
        optimizer.apply_gradients(zip(grads, variables, strict=True))
        return loss

    if mode == "train" and model.keras is None:
        raise SystemExit("training needs a Keras model: a SavedModel keeps only its serving function")
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


def count_flops(tf: Any, model: Model) -> dict[str, float]:
    """FLOPs per image of the forward pass and of one training step (None for a SavedModel, which cannot
    train), counted from their graphs by TensorFlow's profiler (per-op statistics: convolutions, their
    gradients, matmuls)."""
    from tensorflow.python.profiler.model_analyzer import profile
    from tensorflow.python.profiler.option_builder import ProfileOptionBuilder

    options = ProfileOptionBuilder(ProfileOptionBuilder.float_operation()).with_empty_output().build()
    counted = {}
    for mode in ("infer", "train") if model.keras is not None else ("infer",):
        concrete = build_step(tf, model, mode, 1).get_concrete_function()
        graph = concrete.graph
        if model.keras is None:
            # A SavedModel's step calls its loaded function, which the profiler does not descend into: count
            # the graph with the calls inlined (variables frozen to constants) instead.
            from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

            graph = convert_variables_to_constants_v2(concrete).graph
        counted[mode] = float(profile(graph=graph, options=options).total_float_ops)
    return counted


def runtime_facts(tf: Any) -> dict[str, Any]:
    """What the runtime really applied: read back from TensorFlow and from the process itself."""
    try:
        from tensorflow.python.util import _pywrap_util_port

        onednn: bool | None = bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):
        onednn = None
    gpus = tf.config.list_physical_devices("GPU")
    build = dict(tf.sysconfig.get_build_info())
    return {
        "framework": "tensorflow",
        "framework_version": tf.__version__,
        "onednn": onednn,
        "intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
        "threads": len(os.listdir("/proc/self/task")),
        "cpus": sorted(os.sched_getaffinity(0)),
        "gpus": len(gpus),
        # The GPU stack as the reference table names it: CUDA as TensorFlow was built (None without CUDA).
        "cuda_version": build.get("cuda_version") if build.get("is_cuda_build") else None,
        "gpu_names": [str(tf.config.experimental.get_device_details(g).get("device_name", "?")) for g in gpus],
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


def compute_dtype(model: Model) -> str | None:
    """The compute type the model's first layer with weights really uses (read back, not echoed); None for a
    SavedModel, whose layers are not kept."""
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
VERBOSE_ISA = re.compile(r"^(?:onednn|dnnl)_verbose,(?:v[0-9]+,)?info,cpu,isa:(.+)$")  # the ISA has commas


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


def onednn_verbose(log_path: str) -> dict[str, str | None]:
    """What oneDNN's verbose mode printed: its threading runtime (``omp``, ``threadpool``, ...) and the
    instruction set its kernels were made for (``Intel AVX2``, ...); None for what it did not print."""
    found: dict[str, str | None] = {"onednn_runtime": None, "onednn_isa": None}
    try:
        with open(log_path, errors="replace") as log:
            for line in log:
                for key, pattern in (("onednn_runtime", VERBOSE_RUNTIME), ("onednn_isa", VERBOSE_ISA)):
                    match = pattern.search(line.rstrip("\n"))
                    if match and found[key] is None:
                        found[key] = match.group(1).strip()[:200]
                if None not in found.values():
                    break  # both are printed once, before any primitive runs
    except OSError:
        pass
    return found


# Screening: several thread settings in one process, each in its own tf.compat.v1.Session. With
# TF_OVERRIDE_GLOBAL_THREADPOOL=1 (read when a CPU device is made) every session's device gets its own intra-op
# pool from the session's config instead of sharing the first one made in the process; oneDNN in stock
# TensorFlow runs on that pool; use_per_session_threads gives each session its own inter-op pool.
INTER_POOL = "tf_Compute"  # TensorFlow names inter-op pools "Compute" and prefixes thread names with "tf_"
# The device's intra-op pool is named "numa_-1_Eigen": "tf_numa_-1_Eigen" is over Linux's 15 characters, so
# its threads keep the process's name. New threads of any name not starting "tf_" are counted as intra-op.


def thread_names() -> dict[int, str]:
    """The process's threads now: thread id -> name."""
    names: dict[int, str] = {}
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/comm") as comm:
                names[int(task)] = comm.read().strip()
        except OSError:
            continue  # the thread ended while we looked
    return names


def thread_cpu_seconds(tids: Any) -> dict[int, float]:
    """User + system CPU seconds each thread has run so far (threads that ended are left out)."""
    ticks = os.sysconf("SC_CLK_TCK")
    seconds: dict[int, float] = {}
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        seconds[tid] = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime (fields 14, 15 of stat)
    return seconds


def pool_of(name: str) -> str:
    if name == INTER_POOL:
        return "inter"
    return "other" if name.startswith("tf_") else "intra"


def screen_point(
    tf: Any, graph: Any, init: Any, fetch: Any, point: dict[str, Any], spec: dict[str, Any]
) -> dict[str, Any]:
    """One setting: a new session with its own pools, the variables initialised, the first run (the session
    optimises and instantiates the graph) timed apart, then warm-up and timed steps as in a trial. The pools
    are read back from the process: the threads the session created, by pool, and the CPU seconds each pool's
    threads ran during the timed loop (which shows the work ran on them)."""
    config = tf.compat.v1.ConfigProto(
        intra_op_parallelism_threads=point["intra_op"],
        inter_op_parallelism_threads=point["inter_op"],
        use_per_session_threads=True,
    )
    config.experimental.disable_thread_spinning = not point["spinning"]
    before = thread_names()
    began = time.perf_counter()
    session = tf.compat.v1.Session(graph=graph, config=config)
    try:
        session.run(init)
        opened = time.perf_counter()
        session.run(fetch)
        first = time.perf_counter() - opened
        times: dict[str, list[float]] = {"warmup": [], "timed": []}
        cpu_before: dict[int, float] = {}
        loop_started = 0.0
        for phase in ("warmup", "timed"):
            if phase == "timed":
                cpu_before = thread_cpu_seconds(thread_names())
            loop_started = time.perf_counter()
            for _ in range(spec[phase]):
                begin = time.perf_counter()
                session.run(fetch)
                times[phase].append(time.perf_counter() - begin)
        timed_wall = time.perf_counter() - loop_started
        during = thread_names()
        cpu_after = thread_cpu_seconds(during)
    finally:
        session.close()
    wall = time.perf_counter() - began
    created = {tid: name for tid, name in during.items() if tid not in before}
    counts = {"intra": 0, "inter": 0, "other": 0}
    cpu = {"intra": 0.0, "inter": 0.0, "other": 0.0, "rest": 0.0}  # rest: threads older than the session
    for tid, seconds in cpu_after.items():
        pool = pool_of(created[tid]) if tid in created else "rest"
        cpu[pool] += seconds - cpu_before.get(tid, 0.0)
    for name in created.values():
        counts[pool_of(name)] += 1
    names: dict[str, int] = {}
    for name in created.values():
        names[name] = names.get(name, 0) + 1
    left = [tid for tid in thread_names() if tid in created]
    gone_by = time.perf_counter() + 0.2  # a thread just joined can stay listed a moment while the kernel ends it
    while left and time.perf_counter() < gone_by:
        time.sleep(0.01)
        left = [tid for tid in thread_names() if tid in created]
    return {
        **point,
        "session_seconds": opened - began,
        "first_step_seconds": first,
        "warmup_seconds": times["warmup"],
        "timed_seconds": times["timed"],
        "timed_wall_seconds": timed_wall,
        "wall_seconds": wall,
        "threads": {**counts, "names": names, "cpu_seconds": cpu, "left_after_close": len(left)},
    }


def screen(spec: dict[str, Any], channel: Channel) -> None:
    """The ``screen`` task: build the model and its step once into a graph, then measure each setting of
    ``spec["points"]`` in the order given, each in its own session (see ``screen_point``)."""
    os.environ["TF_OVERRIDE_GLOBAL_THREADPOOL"] = "1"  # before TensorFlow makes any device
    started = time.perf_counter()
    import tensorflow as tf

    # The eager context runs no step here: the smallest pools, so that its idle threads stay few.
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    imported = time.perf_counter()
    set_precision(spec.get("precision", "fp32"))
    graph = tf.Graph()
    with graph.as_default():
        model = build_model(spec, spec["data_format"])
        fetch = build_step(tf, model, spec["mode"], spec["batch_size"])()
        init = tf.compat.v1.global_variables_initializer()
    graph.finalize()  # every session runs the same graph: nothing may be added between settings
    built = time.perf_counter()
    points = []
    for index, point in enumerate(spec["points"]):
        wanted = {"intra_op": int(point["intra_op"]), "inter_op": int(point["inter_op"])}
        measured = screen_point(tf, graph, init, fetch, {**wanted, "spinning": bool(point["spinning"])}, spec)
        points.append({"index": index, **measured})
        channel.send("screened", index=index, wall_seconds=measured["wall_seconds"])
    facts = runtime_facts(tf)
    facts.update(openmp_facts(), **keras_facts())
    facts.update(allocator_facts())
    facts.update(compute_dtype=compute_dtype(model), model_facts=model.facts())
    facts.update(
        override_global_threadpool=os.environ.get("TF_OVERRIDE_GLOBAL_THREADPOOL"),
        import_seconds=imported - started,
        build_seconds=built - imported,
        points=points,
    )
    channel.send("result", **facts)


def run(spec: dict[str, Any], channel: Channel) -> None:
    os.sched_setaffinity(0, spec["cores"])  # before TensorFlow starts any thread
    channel.send("start", pid=os.getpid(), cpus=sorted(os.sched_getaffinity(0)))
    if spec.get("task") == "screen":
        screen(spec, channel)
        return
    probe_log = None
    if spec.get("probe"):
        # Probe only: oneDNN's verbose mode prints its threading runtime and ISA on stdout, which goes to a file here
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
        model = build_model(spec, spec["data_format"])
    if task in ("flops", "describe"):
        # describe: the check of a model file before any trial (it loads, its inputs are known, it runs).
        flops = count_flops(tf, model)
        channel.send("result", flops_per_image=flops, model_facts=model.facts(), **runtime_facts(tf))
        return
    compiled = build_step(tf, model, spec["mode"], spec["batch_size"], strategy)

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
    facts.update(compute_dtype=compute_dtype(model), model_facts=model.facts())
    facts.update(replicas=1 if strategy is None else strategy.num_replicas_in_sync)
    if probe_log is not None:
        import ctypes

        sys.stdout.flush()
        ctypes.CDLL(None).fflush(None)  # oneDNN prints through C stdio: flush its buffer too
        facts.update(onednn_verbose(probe_log))
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

"""The command line: parse, call the library, format, return an exit code. Only ``main`` exits."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import re
import signal
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

import optuna
import sqlalchemy.exc

from tuner import __version__, atomic, benchmark, interrupt, probe, recommend, report, table, transfer
from tuner.benchjob import BenchmarkJob, check_settings
from tuner.capability import Capabilities
from tuner.confirm import DEFAULT, MIN_ROUNDS
from tuner.disturbance import DEFAULT_LIMIT, parse_limit, steady
from tuner.doctor import report as doctor_report
from tuner.envs import create as create_env
from tuner.envs import read_manifest
from tuner.errors import TunerError, UsageError
from tuner.launch import launch
from tuner.layout import colour_wanted
from tuner.models import MODELS, ModelRef, name_of, resolve
from tuner.objective import OBJECTIVES
from tuner.objective import get as get_objective
from tuner.pipeline import Job
from tuner.plan import StudyOptions, check_model, isa_space, prepare
from tuner.policy import CONFIRM
from tuner.probe import fixed_knobs
from tuner.progress import Bar, bar_for
from tuner.records import MAX_STEPS
from tuner.runner import Runner, SubprocessRunner, runtime_runner
from tuner.runtime import GPU_RUNTIME, check_knobs, cpu_names, environment_of, for_device
from tuner.runtime import load as load_runtime
from tuner.runtime import names as runtime_names
from tuner.sanitize import one_line, printable
from tuner.settings import KNOBS, PRECISIONS, Settings
from tuner.signature import cpu_signature
from tuner.space import SearchSpace
from tuner.space import load as load_space
from tuner.storage import (
    DEFAULT_STORAGE,
    default_storage,
    open_storage,
    redact,
    remove_if_empty,
    sqlite_missing,
    storage_cause,
)
from tuner.summary import format_importance_lines, format_table, summarize, summarize_study
from tuner.topology import (
    core_set,
    cores_text,
    cpu_quota,
    package_sizes,
    parse_core_counts,
    partition,
    physical_cores,
    quota_cores,
)
from tuner.tune import TuneJob
from tuner.workload import parse_batches, parse_modes, workload_for

DEFAULT_BUDGET = "50m"
RUN_BUDGET = "60m"
DEFAULT_CANDIDATES = 2  # the top sampled settings tune confirms beside the baselines


def parse_duration(text: str) -> float:
    """``'90s'``, ``'50m'``, ``'1h'``, ``'1h30m'`` or plain seconds -> seconds."""
    match = re.fullmatch(r"\s*(?:(\d+)h)?\s*(?:(\d+)m)?\s*(?:(\d+)s?)?\s*", text)
    if not text.strip() or not match or not any(match.groups()):
        raise UsageError(f"--budget: {text!r} is not a duration (e.g. 90s, 50m, 1h30m)")
    if (match.group(1) or match.group(2)) and match.group(3) and not text.strip().endswith("s"):
        # "1h30" read as 1h and 30 seconds is rarely what was meant: the unit is asked for, not guessed.
        raise UsageError(f"--budget: {text.strip()!r} leaves the last number's unit out; write e.g. 1h30m or 1h30s")
    hours, minutes, seconds = (int(g or 0) for g in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total <= 0:
        raise UsageError("--budget must be positive")
    if total > MAX_BUDGET_S:  # a typo, not a plan: a year of measurement (use none for no limit)
        raise UsageError(f"--budget: {text.strip()!r} is more than {MAX_BUDGET_S // 3600}h; use none for no limit")
    return float(total)


MAX_BUDGET_S = 365 * 24 * 3600


def _said(budget: str) -> str:
    """The budget as the start line says it, parsed back to units: a bare number is seconds and says so
    (``900`` -> ``15m``, ``90`` -> ``1m30s``, ``2h0m`` -> ``2h``)."""
    total = int(parse_duration(budget))
    hours, minutes, seconds = total // 3600, total // 60 % 60, total % 60
    return "".join(f"{n}{unit}" for n, unit in ((hours, "h"), (minutes, "m"), (seconds, "s")) if n) or "0s"


# Log, warning and result lines may quote stored text (a shared study's names, a verdict, a worker's reason):
# each is printed through ``printable``, so no stored escape sequence reaches the terminal.
def _log(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {printable(line)}", file=sys.stderr, flush=True)


def _warn(line: str) -> None:
    print(f"tuner: warning: {printable(line)}", file=sys.stderr, flush=True)


def _core_counts(text: str | None) -> list[int]:
    """``--cores``, or the default counts (whole sockets among them on a machine of several) up to the
    physical cores this process may use and a cgroup CPU quota's whole CPUs; a line says where the quota
    cut the defaults."""
    cores, quota = physical_cores(), cpu_quota()
    available = len(cores)
    counts = parse_core_counts(text, available, quota, package_sizes(cores))
    if text is None and quota_cores(available, quota) < available:
        _warn(
            f"a cgroup CPU quota allows {quota:g} CPUs' time: core counts up to {max(counts)} of the {available} "
            "physical cores (more would measure the throttling; name them with --cores to measure them anyway)"
        )
    return counts


def _out(line: str) -> None:
    print(printable(line), flush=True)


def _tagged(tag: str) -> Callable[[str], None]:
    return lambda line: _log(f"[{tag}] {line}")


def _model_and_batch(args: argparse.Namespace, modes: Sequence[str]) -> tuple[ModelRef, int]:
    """The model ``--model`` names (checked, hashed) and the batch (``--batch-size``, else the objective's:
    32 for throughput, 1 for latency), each mode's workload checked before any probe or storage."""
    model = resolve(args.model, getattr(args, "input_shape", None))
    batch = args.batch_size or get_objective(args.objective).default_batch
    for mode in modes:
        workload_for(model, mode, batch, args.objective)  # a SavedModel cannot train: one line, now
    return model, batch


def _check_default_baseline(space: SearchSpace, counts: Sequence[int]) -> None:
    """Confirmation compares every candidate with the space's ``tf-default`` baseline: a space without one at
    some core count is refused now, in one line, not after a search whose verdict could never be made."""
    for cores in counts:
        if DEFAULT not in space.baselines(cores):
            raise UsageError(
                f"--space {space.path}: no [baselines.{DEFAULT}] at {cores_text(cores)}: confirmation compares "
                f"with it; add one setting each knob to TensorFlow's default (intra_op = 0, inter_op = 0, "
                f'data_format = "NHWC"), inside the knobs\' ranges'
            )


def _check_extras(args: argparse.Namespace) -> None:
    """Flags that mean nothing without another: refused rather than ignored."""
    if args.force_precision and not args.allow_precision:
        raise UsageError("--force-precision searches an allowed precision: add --allow-precision bf16")


def cmd_tune(args: argparse.Namespace, runner: Runner | None = None) -> int:
    counts = _core_counts(args.cores)
    modes = parse_modes(args.mode)
    model, batch = _model_and_batch(args, modes)
    candidates = DEFAULT_CANDIDATES if args.candidates is None else args.candidates
    for flag, value in (("--trials", args.trials), ("--candidates", candidates)):
        if value < 1:
            raise UsageError(f"{flag} must be at least 1")
    # Asked for, and confirmed (a search alone confirms none, as it checks no --confirm-rounds): the trials
    # include the baselines, so fewer than --trials settings are ever sampled.
    if args.candidates is not None and args.candidates > args.trials and not args.no_confirm:
        raise UsageError(
            f"--candidates {args.candidates}: more than --trials {args.trials}, which include the baselines"
        )
    unknown = [knob for knob in args.allow_inert if knob not in KNOBS]
    if unknown:  # a typo would allow nothing, silently
        raise UsageError(f"--allow-inert: unknown knob {unknown[0]!r}; knobs: {', '.join(sorted(KNOBS))}")
    _check_extras(args)
    if args.python and not (os.path.isfile(args.python) and os.access(args.python, os.X_OK)):
        raise UsageError(f"--python: {args.python} is not an executable file")  # before the storage is made
    rounds = CONFIRM.rounds if args.rounds is None else args.rounds
    if rounds < MIN_ROUNDS and not args.no_confirm:  # refused, not silently raised: fewer than asked run
        raise UsageError(
            f"--confirm-rounds {rounds}: confirmation needs at least {MIN_ROUNDS} interleaved rounds (fewer "
            "cannot make a verdict clear); --no-confirm searches without confirming"
        )
    options = StudyOptions(
        trials=args.trials,
        candidates=candidates,
        confirm_policy=dataclasses.replace(CONFIRM, rounds=rounds),
        sampler=args.sampler,
        pruner=args.pruner,
        seed=args.seed,
        allow_precision=tuple(args.allow_precision),
        force_precision=args.force_precision,
        search_batch=parse_batches(args.search_batch, args.objective),
        search_isa=args.search_isa,
    )
    runtime = for_device(load_runtime(args.runtime), "cpu")
    space = load_space(args.space or runtime.space, max(counts))
    if not args.no_confirm:  # a search alone confirms nothing; the run that confirms it is checked then
        _check_default_baseline(space, counts)
    if args.search_isa:  # a space that has the knob, a runtime without it or a CPU with one cap fail now: one line
        isa_space(runtime, space, probe.machine_facts().get("cpu_isa"))
    inert = check_knobs(runtime, space.distributions(max(counts)), args.allow_inert)
    limit = parse_limit(args.max_disturbance)
    if runner is None:
        # A --python inside a managed environment holds its lock per trial, as the runtime's own would.
        runner = (
            SubprocessRunner(python=args.python, environment=environment_of(args.python))
            if args.python
            else runtime_runner(runtime, _log)
        )
    runner = steady(runner, limit, _log)
    storage = open_storage(args.storage)
    signature = cpu_signature()
    budget = parse_duration(args.budget) if args.budget != "none" else None
    _log(
        f"tuner {__version__}: {len(counts) * len(modes)} studies on {signature.model_name} ({signature.id}), "
        f"storage {redact(args.storage)}" + (f", budget {_said(args.budget)}" if budget else "")
    )
    probed = time.monotonic()
    ready = prepare(runtime, runner, max(counts), space, inert, _log)
    _log(ready.describe())
    ready = check_model(ready, model, _log)
    job = TuneJob(storage, signature, ready, counts, modes, budget, model, batch, options, objective=args.objective,
                  search_only=args.no_confirm, probe_s=time.monotonic() - probed, log=_log)  # fmt: skip
    started = time.monotonic()
    job.run()
    rows = [summarize_study(optuna.load_study(study_name=name, storage=storage)) for name in job.studies]
    if args.format == "json":  # the studies as `tuner show --format json` prints them; messages on stderr
        print(json.dumps(rows, indent=2))
    else:
        print(format_table(rows, colour=colour_wanted(sys.stdout)))
        print(format_importance_lines(rows))
    _log(f"{len(counts) * len(modes)} studies in {time.monotonic() - started:.0f} s; stored in {redact(args.storage)}")
    if job.failures:
        raise TunerError(f"{len(job.failures)} of {len(counts) * len(modes)} studies failed; first: {job.failures[0]}")
    return 0


def cmd_benchmark(args: argparse.Namespace, runner: Runner | None = None) -> int:
    counts = _core_counts(args.cores)
    modes = parse_modes(args.mode)
    model = resolve(args.model, args.input_shape)
    for mode in modes:
        workload_for(model, mode, 1, args.objective)
    # GPU rows run TensorFlow with CUDA (runtimes/tensorflow-gpu.toml); the project's own is tensorflow-cpu.
    runtime = for_device(load_runtime(args.runtime or (GPU_RUNTIME if args.device == "gpu" else "tensorflow")),
                         args.device)  # fmt: skip
    space = load_space(args.space or runtime.space, max(counts))
    if args.device == "gpu" and not re.fullmatch(r"[1-9][0-9]*(,[1-9][0-9]*)*", args.gpus.replace(" ", "")):
        raise UsageError(f"--gpu-counts: {args.gpus!r} is not a list of GPU counts of at least 1 (e.g. 1,2)")
    replicas = parse_core_counts(args.gpus, 64) if args.device == "gpu" else [args.replicas]
    if args.device == "cpu" and not 1 <= args.replicas <= 8:
        raise UsageError("--replicas must be from 1 to 8")
    # As tune: the objective's batch (32 for throughput, 1 for latency and p99), so `--settings recommended` finds
    # the study that tune made for the same objective. GPU rows keep the reference table's 64 per GPU.
    cpu_batch = get_objective(args.objective).default_batch
    batch = args.batch_size or (benchmark.GPU_BATCH if args.device == "gpu" else cpu_batch)
    policy = benchmark.full_policy(args.warmup, args.timed, args.rounds)
    check_settings(args.settings or [], list(space.baselines(max(counts))))  # before the storage is created
    limit = parse_limit(args.max_disturbance)
    storage = open_storage(args.storage)
    unavailable = None
    if args.device == "gpu" and runner is None:  # a runtime that cannot run here skips the GPU rows, with why
        unavailable = runtime.installable()
        try:
            runner = runtime_runner(runtime, _log)
        except UsageError as error:
            unavailable = unavailable or str(error)
            runner = SubprocessRunner()  # never started: every row is skipped with ``unavailable``
    runner = steady(runner or runtime_runner(runtime, _log), limit, _log)
    # GPU rows run NCHW on the GPU: the CPU's limits (the probe's, below) do not apply to them. A precision named
    # in --settings, or recommended by a verdict tuned with it allowed, is the opt-in (tune's --allow-precision and
    # --force-precision): measured as asked, on either device, not refused as unsearched.
    asked = Capabilities(precisions=PRECISIONS, force_precision=True)
    job = BenchmarkJob(storage, cpu_signature(), runtime, space, runner, asked, counts, modes, model,
                       batch, policy, args.settings, args.device, replicas, log=_log,
                       out=_log if args.format == "json" else _out,
                       objective=args.objective, unavailable=unavailable)  # fmt: skip
    try:
        job.check()  # a setting asked for that the storage lacks: one line, before the probe
        if args.device == "gpu":
            if unavailable is None:
                settings = Settings.from_params(fixed_knobs(space))
                job.visible_gpus = benchmark.visible_gpus(runner, settings, core_set(1))
        else:
            ready = check_model(prepare(runtime, runner, max(counts), space, log=_log), model, _log)  # before any run
            caps = Capabilities.from_probe(ready.facts, allow_precision=PRECISIONS, force_precision=True)
            job.caps = caps.for_workload(workload_for(model, modes[0], batch, args.objective))
        job.run()
    finally:
        if args.format == "json":  # every record stored, measured or not (none where it stopped first), as data
            print(json.dumps(job.stored, indent=2))
    if job.failures:
        raise TunerError(f"{len(job.failures)} setting(s) could not be measured: " + "; ".join(job.failures))
    return 0


def _write_table(args: argparse.Namespace, storage: optuna.storages.BaseStorage) -> None:
    frame, notes = table.build(benchmark.records(storage, _warn))
    # A file holds every column, as the terminal's view does with --wide (`run` prints the narrow view).
    text = table.render(frame, notes, args.format, wide=getattr(args, "wide", False) or bool(args.output))
    if frame.empty and args.format in ("csv", "json"):  # the data stays parseable: the hint goes to stderr
        print(f"tuner: {table.EMPTY}", file=sys.stderr)
    if args.output:
        _write_file(args.output, text + "\n")
        print(f"table written to {args.output}", file=sys.stderr)
    else:
        print(text)


def _check_output(path: str | None) -> None:
    """Refuse an --output that cannot be written (no folder, no right, a device or a folder in its place)
    before any work: a job's table must not be lost at its end for a typo."""
    if path:
        try:
            atomic.check_writable(path)
        except OSError as error:
            raise UsageError(f"--output: cannot write {path}: {error.strerror}") from None


def _write_file(path: str, text: str) -> None:
    """Write atomically (tuner/atomic.py): an error or Ctrl-C leaves the old file or none."""
    try:
        atomic.write_text(path, text)
    except OSError as error:
        raise UsageError(f"--output: cannot write {path}: {error.strerror}") from None


def cmd_table(args: argparse.Namespace, runner: Runner | None = None) -> int:
    table.check_format(args.format)  # a bad --format fails before storage is opened
    _check_output(args.output)
    _write_table(args, open_storage(args.storage, create=False))
    return 0


def cmd_report(args: argparse.Namespace, runner: Runner | None = None) -> int:
    _check_output(args.output)  # before any work
    storage = open_storage(args.storage, create=False)
    _log(f"building the report from {redact(args.storage)} ...")
    document, figures = report.build(storage, redact(args.storage), _warn, _log)
    _write_file(args.output, document)
    size = len(document.encode()) / 2**20
    print(f"report written to {args.output}: {len(figures)} figures, {size:.1f} MiB, opens offline in a browser")
    return 0


def cmd_run(args: argparse.Namespace, runner: Runner | None = None) -> int:
    counts = _core_counts(args.cores)
    modes = parse_modes(args.mode)
    model, batch = _model_and_batch(args, modes)
    search_batch = parse_batches(args.search_batch, args.objective)
    _check_extras(args)
    wanted = [name.strip() for name in args.runtimes.split(",")] if args.runtimes is not None else cpu_names()
    if len(set(wanted)) != len(wanted):  # each runtime's studies once: twice would plan and share them twice
        raise UsageError(f"--runtimes: {args.runtimes!r} names a runtime twice")
    runtimes = [for_device(load_runtime(name), "cpu") for name in wanted]
    cpu_isa = probe.machine_facts().get("cpu_isa") if args.search_isa else None
    for runtime in runtimes:
        space = load_space(runtime.space, max(counts))  # a broken space fails now, not an hour in
        _check_default_baseline(space, counts)
        if args.search_isa:
            isa_space(runtime, space, cpu_isa)
    table.check_format(args.format)
    if args.plan and args.format not in ("markdown", "json"):
        raise UsageError(f"--plan prints text, or JSON with --format json; not {args.format}")
    budget = parse_duration(args.budget) if args.budget != "none" else None
    limit = parse_limit(args.max_disturbance)
    _check_output(args.output)  # the table is written at the end of the job: a bad path is refused now
    if args.plan:  # the storage is only read, and only where it exists: a missing one is an empty one
        missing = sqlite_missing(args.storage) is not None
        storage = optuna.storages.InMemoryStorage() if missing else open_storage(args.storage, create=False)
    else:
        storage = open_storage(args.storage)
    signature = cpu_signature()
    bar = bar_for(sys.stderr) if not args.plan else Bar()  # a bar on a terminal; plain lines elsewhere
    if not args.plan:
        _log(
            f"tuner {__version__} run: runtimes {', '.join(r.name for r in runtimes)}; cores {counts}; "
            f"{', '.join(modes)}; on {signature.model_name} ({signature.id}); storage {redact(args.storage)}"
            + (f"; budget {_said(args.budget)}" if budget else "")
        )
    job = Job(
        storage=storage,
        signature=signature,
        runtimes=runtimes,
        counts=counts,
        modes=modes,
        budget_s=budget,
        model=model,
        batch_size=batch,
        objective=args.objective,
        seed=args.seed,
        allow_precision=tuple(args.allow_precision),
        force_precision=args.force_precision,
        search_batch=search_batch,
        search_isa=args.search_isa,
        create_envs=not args.no_env_create,
        runner=runner,
        max_disturbance=limit,
        log=bar.lines(_log),
        bar=bar,
    )
    if args.plan:
        plan = job.plan()
        # The text names stored studies: printable, as every log line (JSON escapes them itself).
        text = json.dumps(plan.to_dict(), indent=2) if args.format == "json" else printable(plan.render())
        if args.output:
            _write_file(args.output, text + "\n")
        else:
            print(text)
        return 0
    job.run()
    _write_table(args, storage)
    print(f"figures of every study: tuner report --storage {redact(args.storage)}")
    for note in job.notes:
        print(f"note: {printable(note)}")
    if job.failures:
        raise TunerError(f"{len(job.failures)} part(s) of the job failed; first: {job.failures[0]}")
    return 0


def cmd_recommend(args: argparse.Namespace, runner: Runner | None = None) -> int:
    recommend.check_format(args.format)  # a bad --format fails before storage is opened
    # --cores as tune takes it, a list (1,2,4), here counts of other CPUs too: bounded by 4096, not this one.
    counts: list[int | None] = list(parse_core_counts(args.cores, 4096)) if args.cores is not None else [None]
    modes = parse_modes(args.mode)
    mode = modes[0] if len(modes) == 1 else None
    storage = open_storage(args.storage, create=False)
    found = [
        r
        for cores in counts
        for r in recommend.recommend(
            storage,
            cpu_signature(),
            args.cpu,
            cores,
            mode,
            load_runtime(args.runtime).name,
            _model_name(args),
            prefer_imported=args.prefer_imported,
            objective=args.objective,
            warn=_warn,
        )
    ]
    print(recommend.render(found, args.format, colour=colour_wanted(sys.stdout)))
    if any(r.borrowed for r in found) and args.format != "json":
        print("tuner: note: no verdict for this CPU; the advice above is BORROWED (see its source)", file=sys.stderr)
    return 0


def _model_name(args: argparse.Namespace) -> str:
    """How studies name the model ``--model`` gives: an application's name, or a model file's (hashed) label,
    with the input shape where ``--input-shape`` gives one."""
    return name_of(args.model, args.input_shape)


def cmd_exec(args: argparse.Namespace, runner: Runner | None = None) -> int:
    """Start the user's program as the recommendation says: its environment, the allocator preload and
    N pinned instances (tuner/launch.py); without a confirmed verdict, TensorFlow's defaults, said so."""
    program = args.program[1:] if args.program[:1] == ["--"] else args.program
    if not program:
        raise UsageError("exec: name the program to start after --, e.g. tuner exec -- python app.py")
    modes = parse_modes(args.mode)
    if len(modes) != 1:
        raise UsageError("exec: --mode must be train or infer (the recommendation differs by mode)")
    available = len(physical_cores())
    cores = available if args.cores is None else args.cores
    if not 1 <= cores <= available:
        raise UsageError(f"--cores: {cores} asked for, but only {available} physical cores are available")
    runtime = load_runtime(args.runtime).name
    model = _model_name(args)  # a bad --model is an error, not a fallback to the defaults
    settings, source = Settings(), "TensorFlow's defaults: no storage with verdicts yet"
    # The built-in storage missing means nothing tuned here yet: the defaults, said so. One named on purpose
    # (--storage, $TUNER_STORAGE) that is not there is a typo, which starting on the defaults would hide.
    if sqlite_missing(args.storage) is None or args.storage != DEFAULT_STORAGE:
        storage = open_storage(args.storage, create=False)  # an unreachable storage is an error, not a default
        try:
            found = recommend.recommend(
                storage,
                cpu_signature(),
                None,
                cores,
                modes[0],
                runtime,
                model,
                warn=_warn,
                objective=args.objective,
            )
            exact = [r for r in found if r.cores == cores and not r.borrowed]
            if not exact:
                raise TunerError(f"no confirmed verdict for {cores_text(cores)} of this CPU")
            settings, source = exact[0].settings, f"{exact[0].recommended}, {exact[0].source()}"
        except TunerError as error:
            source = f"TensorFlow's defaults: {one_line(error, 200)}"
    groups = partition(core_set(cores), settings.instances)
    # The program keeps its environment, less what the measured settings decide (an inherited OMP_NUM_THREADS
    # or LD_PRELOAD would run it otherwise than it was measured), plus those settings.
    env = {k: v for k, v in os.environ.items() if not k.startswith(recommend.DECIDED_PREFIXES)}
    dropped = sorted(set(os.environ) - set(env))
    env.update({k: v for k, v in recommend.environment(settings).items() if v is not None})
    if settings.instances > 1:
        env.setdefault("PYTHONUNBUFFERED", "1")  # instances' lines arrive as they are printed, prefixed
    print(f"tuner exec: {recommend.launch_summary(settings, cores)}; from {source}", file=sys.stderr, flush=True)
    if dropped:
        print(f"tuner exec: not passed on (the settings decide them): {', '.join(dropped)}", file=sys.stderr)
    for line in recommend.in_program(settings):
        print(f"tuner exec: the program must do this itself: {line}", file=sys.stderr)
    return launch(program, groups, env)


def cmd_export(args: argparse.Namespace, runner: Runner | None = None) -> int:
    _check_output(args.output)
    storage = open_storage(args.storage, create=False)
    _log(f"exporting the tuner studies and benchmark records of {redact(args.storage)} ...")
    data = transfer.export(storage)
    redacted = transfer.redact(data) if args.redact else None
    transfer.write(data, Path(args.output))
    trials = sum(len(study["trials"]) for study in data["studies"])
    print(f"exported {len(data['studies'])} studies ({trials} trials) from {redact(args.storage)} to {args.output}")
    if redacted is not None:
        print(redacted.describe())
    return 0


def cmd_import(args: argparse.Namespace, runner: Runner | None = None) -> int:
    data = transfer.read(Path(args.file))  # validated whole before the storage is touched
    made = sqlite_missing(args.storage)
    storage = open_storage(args.storage)
    trials = sum(len(study["trials"]) for study in data["studies"])
    _log(f"importing {len(data['studies'])} studies ({trials} trials) from {args.file}")
    try:
        done = transfer.import_into(storage, data, args.file, log=_log)
    finally:  # nothing landed (all refused, or a Ctrl-C before the first study): no empty database left behind
        if made is not None:
            remove_if_empty(storage, made)
    studies = [name for name in done.imported if name != benchmark.BENCH_STUDY]
    print(f"imported {len(studies)} studies and {done.records} benchmark records into {redact(args.storage)}")
    for name in done.kept:
        print(f"kept {one_line(name)}: it already exists in the target")
    for line in done.refused:
        print(f"tuner: warning: refused {line}", file=sys.stderr)
    if done.refused:
        raise TunerError(
            f"{len(done.refused)} malformed studies or records were not imported (the others were); "
            f"first: {done.refused[0]}"
        )
    return 0


def cmd_show(args: argparse.Namespace, runner: Runner | None = None) -> int:
    storage = open_storage(args.storage, create=False)
    summaries = summarize(storage, _warn)
    if args.format == "json":
        print(json.dumps(summaries, indent=2))
    elif not summaries:
        print(f"no tuner studies in {redact(args.storage)}")
    else:
        print(format_table(summaries, wide=args.wide, colour=colour_wanted(sys.stdout)))
        print(format_importance_lines(summaries))
    return 0


def cmd_env(args: argparse.Namespace, runner: Runner | None = None) -> int:
    if args.action == "list" and args.name is not None:
        raise UsageError(f"tuner env list takes no runtime name (got {args.name!r}): it lists them all")
    if args.action == "list":
        for name in runtime_names():
            runtime = load_runtime(name)
            path = runtime.env_dir
            if path is None:
                print(f"{name:18} the tuner's own environment ({sys.executable})")
                continue
            manifest = read_manifest(path)
            state = (
                f"{path}: {manifest['size_bytes'] / 2**20:.0f} MiB, framework {manifest['framework_version']}, "
                f"created {manifest['created']} in {manifest['seconds']:.0f} s"
                if manifest
                else f"{path}: not created ({runtime.installable() or f'tuner env create {name}'})"
            )
            foreign = runtime.foreign() if manifest else None  # built elsewhere (a shared $TUNER_ENVS)
            print(f"{name:18} {state}" + (f"; not run here: {foreign}" if foreign else ""))
        return 0
    if args.name is None:
        raise UsageError("tuner env create: name a runtime: " + ", ".join(runtime_names()))
    report = create_env(load_runtime(args.name), args.with_python, log=_log)
    print(report.line())
    return 0


def cmd_doctor(args: argparse.Namespace, runner: Runner | None = None) -> int:
    print("\n".join(doctor_report()))
    return 0


def add_disturbance_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-disturbance",
        default=f"{DEFAULT_LIMIT:g}",
        metavar="SHARE",
        help="a trial whose cores others used (processes, steal, quota throttling) for more than this share of "
        f"its timed window is measured again, at most twice, and never ranked disturbed (default {DEFAULT_LIMIT:g}; "
        "off: only record it)",
    )


def add_precision_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allow-precision",
        action="append",
        default=[],
        choices=("bf16",),
        help="also search this precision (Keras mixed_bfloat16); it changes the numerics, so it is off by default",
    )
    parser.add_argument(
        "--force-precision",
        action="store_true",
        help="search an allowed precision even on a CPU without its instructions (emulated, usually slower)",
    )
    parser.add_argument(
        "--search-batch",
        default=None,
        metavar="B1,B2,...",
        help="also search the batch size over these values (throughput per sample; the baselines keep --batch-size)",
    )
    parser.add_argument(
        "--search-isa",
        action="store_true",
        help="also search oneDNN's instruction-set cap (ONEDNN_MAX_CPU_ISA: default, avx2 ... avx512_core_amx; x86 "
        "only); caps this CPU lacks are taken out",
    )


class Parser(argparse.ArgumentParser):
    """Bad arguments become a ``UsageError``: one line and exit 1, like every other bad input."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


DESCRIPTION = (
    "Find the fastest CPU threading and launch settings for TensorFlow training and inference: search them "
    "with Optuna, confirm the winners against the defaults and the launchers' recipes, benchmark, and apply "
    "them (tuner exec). Start with: tuner run."
)
# Help for the options that are the same in every subcommand; the default is appended to every help text.
COMMON_HELP = {
    "model": "a Keras application (" + ", ".join(MODELS) + "; built without weights), a .keras file or a "
    "SavedModel folder",
    "input_shape": "one sample's input shape, e.g. 224,224,3, where the model does not say it (or to resize an "
    "application)",
    "objective": "throughput (samples/sec at the batch), latency (p50 request time, batch 1 by default) or p99 "
    "(99th-percentile request time, 100 timed steps per run)",
    "batch_size": "samples per step (per replica); default 32 for throughput, 1 for latency and p99",
    "seed": "seed of the sampler and of the bootstrap",
    "sampler": "Optuna sampler",
    "pruner": "Optuna pruner (stops a slow trial early)",
    "warmup": "warm-up batches per run, not counted",
    "timed": "timed batches per run",
    "device": "cpu, or gpu (one replica per GPU)",
    "json": "print JSON instead of a table",
    "storage": "Optuna RDB storage URL (default: $TUNER_STORAGE, else " + DEFAULT_STORAGE + ")",
    "output": "write to this file",
    "file": "an export file (tuner export)",
    "action": "create or list",
    "runtime": "framework runtime",
}


def _whole(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not re.fullmatch(r"[0-9]{1,12}", text.strip()) or not low <= int(text) <= high:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from {low} to {high}")
        return int(text)

    return parse


# Counts checked when the command line is read, naming the flag, before any probe or storage is touched:
# (least, most). The most: what a run can hold (a stored confirmation's steps, records.MAX_STEPS), what
# numpy's generators take as a seed (2**32 - 1: a larger one failed the importances after the search).
AT_LEAST = {
    "batch_size": (1, 1_000_000),
    "trials": (1, 100_000),
    "candidates": (1, 1_000),
    "rounds": (1, 1_000),
    "timed": (1, MAX_STEPS),
    "replicas": (1, 4096),
    "warmup": (0, MAX_STEPS),
    "seed": (0, 2**32 - 1),  # the samplers' and the bootstrap's generators take no negative seed
}


def _document(parser: argparse.ArgumentParser) -> None:
    """Every option gets a help text, and its default where it has one that says something."""
    for action in parser._actions:  # argparse has no public iterator over a parser's actions
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _document(child)
            continue
        if action.help == argparse.SUPPRESS or not action.option_strings or action.dest in ("help", "version"):
            continue
        if action.dest in AT_LEAST and action.type is int:
            action.type = _whole(*AT_LEAST[action.dest])
        action.help = action.help or COMMON_HELP.get(action.dest, action.dest.replace("_", " "))
        nothing = action.default is None or action.default is False or action.default in ([], argparse.SUPPRESS)
        shown = not nothing and action.dest != "storage"
        if shown and "default" not in action.help:
            action.help += f" (default: {action.default})"


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    """--model, --input-shape and --objective: which model, at which input shape, optimised for what (recommend
    and exec find the verdict by them)."""
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--input-shape", default=None)
    parser.add_argument("--objective", default="throughput", choices=tuple(OBJECTIVES))


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="tuner", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"tuner {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    tune = sub.add_parser("tune", help="search threading settings, then confirm the winners")
    add_model_flags(tune)
    tune.add_argument("--mode", default=None, help="train, infer or both (default both)")
    tune.add_argument(
        "--cores", default=None, help="core counts, e.g. 1,2,4 (default: 1, powers of two, whole sockets, all)"
    )
    tune.add_argument("--batch-size", type=int, default=None)
    tune.add_argument("--trials", type=int, default=20, help="complete trials per study, baselines included")
    tune.add_argument(
        "--budget",
        default=DEFAULT_BUDGET,
        help=f"wall time for all studies, e.g. 50m or 1h30m, or 'none' (default {DEFAULT_BUDGET})",
    )
    tune.add_argument("--storage", default=DEFAULT_STORAGE)
    tune.add_argument("--runtime", default="tensorflow", help="framework runtime: " + ", ".join(cpu_names()))
    tune.add_argument("--space", default=None, help="search-space name or TOML path (default: the runtime's)")
    tune.add_argument(
        "--allow-inert",
        action="append",
        default=[],
        metavar="KNOB",
        help="search KNOB although the runtime ignores it (recorded as inert)",
    )
    tune.add_argument("--sampler", default="tpe", choices=("tpe", "random"))
    tune.add_argument("--pruner", default="none", choices=("none", "median", "wilcoxon"))
    tune.add_argument("--seed", type=int, default=0)
    tune.add_argument("--candidates", type=int, help=f"top sampled settings to confirm (default {DEFAULT_CANDIDATES})")
    tune.add_argument(
        "--confirm-rounds",
        dest="rounds",
        metavar="N",
        type=int,
        default=None,
        help=f"interleaved confirmation rounds, at least {MIN_ROUNDS} (default {CONFIRM.rounds})",
    )
    tune.add_argument("--rounds", dest="rounds", type=int, default=None, help=argparse.SUPPRESS)  # old name
    tune.add_argument(
        "--no-confirm",
        action="store_true",
        help="search only (for many workers sharing a study); run once more without it to confirm",
    )
    tune.add_argument("--python", default=None, help="interpreter of the target environment (default: the runtime's)")
    tune.add_argument(
        "--format", default="text", choices=("text", "json"), help="the studies' summary: text, or json as show's"
    )
    add_precision_flags(tune)
    add_disturbance_flag(tune)
    tune.set_defaults(func=cmd_tune)

    run = sub.add_parser("run", help="the main job: tune every runtime and core count, benchmark, print the table")
    run.add_argument(
        "--budget", default=RUN_BUDGET, help=f"wall time for the whole job, or 'none' (default {RUN_BUDGET})"
    )
    run.add_argument(
        "--runtime",
        "--runtimes",
        dest="runtimes",
        metavar="NAMES",
        default=None,
        help="runtimes, comma-separated (default: every CPU runtime: " + ", ".join(cpu_names()) + ")",
    )
    run.add_argument(
        "--cores", default=None, help="core counts, e.g. 1,2 (default: 1, powers of two, whole sockets, all)"
    )
    run.add_argument("--mode", default=None, help="train, infer or both (default both)")
    add_model_flags(run)
    run.add_argument("--batch-size", type=int, default=None)
    run.add_argument("--storage", default=DEFAULT_STORAGE)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--no-env-create", action="store_true", help="skip runtimes whose environment is missing")
    run.add_argument("--format", default="markdown", help="table format: " + ", ".join(table.FORMATS))
    run.add_argument("--output", default=None, help="write the table (or the plan) to this file")
    run.add_argument(
        "--plan",
        action="store_true",
        help="print the studies this command would run, each one's share, trials, confirmation and expected "
        "time, and the total; measures nothing and writes nothing",
    )
    add_precision_flags(run)
    add_disturbance_flag(run)
    run.set_defaults(func=cmd_run)

    bench = sub.add_parser("benchmark", help="the full benchmark (tf_cnn_benchmarks' conventions) of named settings")
    bench.add_argument(
        "--runtime",
        default=None,
        help="framework runtime: "
        + ", ".join(runtime_names())
        + " (default: tensorflow; tensorflow-gpu for --device gpu)",
    )
    bench.add_argument(
        "--space", default=None, help="the search space a tune --space study used: its baselines and study"
    )
    bench.add_argument(
        "--cores",
        default=None,
        help="core counts, e.g. 1,2 (default: 1, powers of two, whole sockets, all; GPU: the host's)",
    )
    bench.add_argument("--mode", default=None, help="train, infer or both (default both)")
    add_model_flags(bench)
    bench.add_argument(
        "--settings",
        action="append",
        default=None,
        help="tf-default, heuristic (or another baseline), recommended (what the stored study's verdict recommends), "
        "tuned (its best sampled setting, even where the verdict kept tf-default), or a settings string such as "
        "'intra_op=2;inter_op=1' (repeatable; default tf-default, heuristic and recommended)",
    )
    bench.add_argument("--device", default="cpu", choices=("cpu", "gpu"))
    bench.add_argument(
        "--gpu-counts",
        dest="gpus",
        metavar="N1,N2",
        default="1",
        help="how many GPUs per row, one replica each (e.g. 1,2: two rows)",
    )
    bench.add_argument("--gpus", dest="gpus", default="1", help=argparse.SUPPRESS)  # its old name
    bench.add_argument("--replicas", type=int, default=1, help="on CPU: split it into this many logical devices")
    bench.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="per replica (default: the objective's on CPU, 32 or 1 for latency and p99; 64 per GPU)",
    )
    bench.add_argument("--warmup", type=int, default=benchmark.FULL_WARMUP)
    bench.add_argument("--timed", type=int, default=benchmark.FULL_TIMED)
    bench.add_argument("--rounds", type=int, default=1, help="interleaved rounds (timed batches each)")
    bench.add_argument("--storage", default=DEFAULT_STORAGE)
    bench.add_argument(
        "--format", default="text", choices=("text", "json"), help="results: a line each, or json: every stored record"
    )
    add_disturbance_flag(bench)
    bench.set_defaults(func=cmd_benchmark)

    tab = sub.add_parser("table", help="the reference table from stored benchmark results (measures nothing)")
    tab.add_argument(
        "--format",
        default="markdown",
        choices=table.FORMATS,
        help="markdown or html for people; csv or json: the data, numbers as numbers, every column",
    )
    tab.add_argument(
        "--wide",
        action="store_true",
        help="markdown on stdout: every column (default: the essential ones within 120 columns; --output files "
        "always have every column)",
    )
    tab.add_argument("--output", default=None, help="write to this file instead of stdout")
    tab.add_argument("--storage", default=DEFAULT_STORAGE)
    tab.set_defaults(func=cmd_table)

    rep = sub.add_parser("report", help="every study and benchmark as one self-contained HTML page of figures")
    rep.add_argument("--output", default="studies/report.html", help="HTML file (default studies/report.html)")
    rep.add_argument("--storage", default=DEFAULT_STORAGE)
    rep.set_defaults(func=cmd_report)

    rec = sub.add_parser("recommend", help="best known settings for this (or another) CPU, from stored verdicts")
    rec.add_argument(
        "--cores", default=None, help="core counts, e.g. 1,2 as tune takes them (default: every one with a verdict)"
    )
    rec.add_argument("--mode", default=None, help="train or infer (default: both)")
    rec.add_argument("--cpu", default=None, help="a CPU model name, as /proc/cpuinfo prints it (default: this one)")
    rec.add_argument("--runtime", default="tensorflow", help="framework runtime: " + ", ".join(runtime_names()))
    add_model_flags(rec)
    rec.add_argument(
        "--format",
        default="text",
        choices=recommend.FORMATS,
        help="text for people, json (the data), or shell or python that apply one recommendation",
    )
    rec.add_argument(
        "--prefer-imported",
        action="store_true",
        help="use imported verdicts before this storage's own (default: own first, imported ones say so)",
    )
    rec.add_argument("--storage", default=DEFAULT_STORAGE)
    rec.set_defaults(func=cmd_recommend)

    run_ = sub.add_parser(
        "exec",
        help="start a program with the recommended settings: environment, allocator, pinned instances",
        description="Start PROGRAM as this storage's confirmed verdict for the core count and mode says: the "
        "threads and oneDNN variables, the allocator preloaded, and N instances each pinned to its own cores "
        "(each told TUNER_INSTANCE, TUNER_INSTANCES and TUNER_CORES; output prefixed [i]). Ctrl-C and SIGTERM "
        "are forwarded; the exit status is the worst instance's. Without a verdict, TensorFlow's defaults.",
    )
    run_.add_argument("--cores", type=int, default=None, help="physical cores to use (default: all)")
    run_.add_argument("--mode", default="infer", help="train or infer (default: infer)")
    run_.add_argument("--runtime", default="tensorflow", help="framework runtime: " + ", ".join(runtime_names()))
    add_model_flags(run_)
    run_.add_argument("--storage", default=DEFAULT_STORAGE, help="where the verdicts are: " + COMMON_HELP["storage"])
    run_.add_argument("program", nargs=argparse.REMAINDER, help="-- PROGRAM ARGS")
    run_.set_defaults(func=cmd_exec)

    exp = sub.add_parser("export", help="write every tuner study and benchmark record to one JSON file")
    exp.add_argument("--output", required=True)
    exp.add_argument("--storage", default=DEFAULT_STORAGE)
    exp.add_argument(
        "--redact",
        action="store_true",
        help="to share: host names as host-N, no process ids or worker stderr, paths cut to their last part",
    )
    exp.set_defaults(func=cmd_export)

    imp = sub.add_parser("import", help="add the studies of an export file to a storage (validated first)")
    imp.add_argument("file")
    imp.add_argument("--storage", default=DEFAULT_STORAGE)
    imp.set_defaults(func=cmd_import)

    show = sub.add_parser("show", help="what was found, from storage, without measuring")
    show.add_argument("--storage", default=DEFAULT_STORAGE)
    show.add_argument("--format", default="text", choices=("text", "json"), help="text (a table) or json")
    show.add_argument("--json", action="store_const", const="json", dest="format", help="the same as --format json")
    show.add_argument("--wide", action="store_true", help="every column, however wide (default: fit 120 columns)")
    show.set_defaults(func=cmd_show)

    env = sub.add_parser("env", help="managed target environments for runtimes (under .envs/, or $TUNER_ENVS)")
    env.add_argument("action", choices=("create", "list"))
    env.add_argument("name", nargs="?", help="runtime whose environment to create")
    env.add_argument("--with-python", default=sys.executable, help="interpreter to build it from")
    env.set_defaults(func=cmd_env)

    doctor = sub.add_parser("doctor", help="read-only: this CPU, what disturbs timings, which runtimes run here")
    doctor.set_defaults(func=cmd_doctor)
    for child in sub.choices.values():  # --debug also after the subcommand, as the error lines suggest
        child.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        for action in child._actions:
            if action.dest == "storage":
                action.default = default_storage()
    _document(parser)
    return parser


# Commands that write no study, or write only atomically: a signal may stop them anywhere.
STOP_ANYWHERE = (cmd_table, cmd_report, cmd_recommend, cmd_export, cmd_show, cmd_env, cmd_doctor)

# What an interrupted command kept, in its own words (the search's resume is not everyone's).
RESUME = "finished trials are kept, run the same command to resume"
WRITTEN_WHOLE = "an --output file is as it was, or written whole if the signal came after it"
INTERRUPTED = {
    "tune": RESUME,
    "run": RESUME,
    "benchmark": "any rounds finished are stored as partial records; run it again for full ones",
    "import": "the studies imported so far are kept (one cut short is redone); run the same command to finish",
    "export": WRITTEN_WHOLE,
    "table": WRITTEN_WHOLE,
    "report": WRITTEN_WHOLE,
}


def _interrupt_line(command: str) -> str:
    said = INTERRUPTED.get(command)
    return "tuner: interrupted" + (f"; {said}" if said else "")


def _interrupted(error: BaseException) -> bool:
    """True when a KeyboardInterrupt (Ctrl-C or SIGTERM) is behind ``error``, e.g. Optuna's trial cleanup
    failing with UnboundLocalError because the interrupt landed half-way through it."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, KeyboardInterrupt):
            return True
        seen = seen.__context__
    return False


def main(argv: Sequence[str] | None = None, runner: Runner | None = None) -> int:
    """Run the CLI; ``runner`` replaces the subprocess runner (tests pass a replaying fake)."""
    code = _main(argv, runner)
    if argv is None:  # the process itself (the console script), not a test calling in
        _exit_on_signal(code)
    return code


def _exit_on_signal(code: int) -> None:
    """From here the command is done and has said so: a Ctrl-C or SIGTERM during the interpreter's teardown
    (half a second with TensorFlow or plotly loaded) ends the process with the command's own status, not as
    killed by the signal, silently, after the work was done."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda _signum, _frame: os._exit(code))


def _main(argv: Sequence[str] | None, runner: Runner | None) -> int:
    try:
        parser = build_parser()
        if not (sys.argv[1:] if argv is None else list(argv)):  # bare `tuner`: what it can do
            parser.print_help()
            return 0
        args = parser.parse_args(argv)
    except UsageError as error:
        print(f"tuner: error: {one_line(error, 2000)}", file=sys.stderr)
        return 1
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    logging.getLogger("optuna").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    try:
        # SIGTERM takes the same path as Ctrl-C. Commands that write studies stop only at safe places (see
        # tuner.interrupt); the read-only ones may stop anywhere.
        with interrupt.handling():
            if args.func in STOP_ANYWHERE:
                with interrupt.interruptible():
                    return int(args.func(args, runner))
            return int(args.func(args, runner))
    except TunerError as error:
        if args.debug:
            raise
        print(f"tuner: error: {one_line(error, 2000)}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # the reader went away (`tuner show | head`): nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as error:
        if args.debug:
            raise
        print(f"tuner: error: storage: {one_line(storage_cause(error), 300)}", file=sys.stderr)
        return 1
    except OSError as error:
        if args.debug:
            raise
        print(f"tuner: error: {type(error).__name__}: {one_line(error, 300)}", file=sys.stderr)
        return 1
    except Exception as error:  # a bug: still one line, and --debug shows where
        if _interrupted(error):  # Ctrl-C landed inside a library's cleanup, which then failed on its own
            print(_interrupt_line(args.command), file=sys.stderr)
            return 130
        if args.debug:
            raise
        reason = one_line((str(error).strip().splitlines() or [""])[0], 300)
        print(f"tuner: error: unexpected {type(error).__name__}: {reason} (run with --debug)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(_interrupt_line(args.command), file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

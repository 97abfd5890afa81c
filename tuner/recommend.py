"""Recommendations: the confirmed verdicts in storage, looked up by CPU signature, core count and mode.

An exact match is a study measured on the same CPU signature (or, with ``--cpu``, the same model name)
and core count. Without one, advice may be borrowed from the nearest signature: same vendor and the same
ISA family (the features that change kernel choice: AVX2, AVX-512, VNNI, BF16, AMX), nearest core count;
it is then labelled borrowed, with the CPU it came from. Nothing usable is an error, never a guess.

Outputs apply the settings before TensorFlow starts: shell ``export`` lines (TensorFlow reads
``TF_NUM_INTRAOP_THREADS`` and ``TF_NUM_INTEROP_THREADS`` when its own setting is 0, OpenMP builds read
``OMP_*``/``KMP_*``), a Python snippet with the ``tf.config.threading`` calls, or JSON with provenance.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import optuna

from tuner.confirm import DEFAULT
from tuner.errors import InvalidSettings, TunerError, UsageError, check_choice
from tuner.launch import shell_lines
from tuner.layout import paint, shorten, wrap
from tuner.records import BENCH_STUDY, MalformedRecord, StoredVerdict, StudyMeta, imported_from
from tuner.sanitize import one_line, shell_comment
from tuner.settings import DATA_FORMATS, ENV_ALIASES, ENV_KNOBS, ENV_NAMES, Settings
from tuner.signature import CpuSignature
from tuner.topology import core_set, cores_text, partition

FORMATS = ("text", "shell", "python", "json")
PROGRAM = "PROGRAM"  # the user's program in a generated launch function, replaced by "$@"
Warn = Callable[[str], None]
# The ISA features that decide which kernels run: a CPU with another set is not a stand-in.
ISA_FAMILY = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "sve", "sve2", "bf16", "i8mm")


@dataclass(frozen=True)
class Recommendation:
    model: str
    mode: str
    cores: int
    runtime: str
    settings: Settings
    recommended: str  # which candidate the verdict chose: tf-default unless another clearly won
    cpu: dict[str, Any]  # the signature the study was measured on
    borrowed: bool
    framework_version: str | None
    speedup: dict[str, float] | None  # the winner over tf-default, with its 95% interval
    verdict: str
    measured: str | None
    study: str
    imported: str | None = None  # the export file it came from, when it was imported rather than measured here
    objective: str = "throughput"  # what the study optimised

    def provenance(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "objective": self.objective,
            "mode": self.mode,
            "cores": self.cores,
            "runtime": self.runtime,
            "recommended": self.recommended,
            "settings": self.settings.params(),
            "environment": environment(self.settings, strict=False),
            "launch": {
                "instances": self.settings.instances,
                "allocator": self.settings.allocator,
                "allocator_missing": allocator_note(self.settings),
                "precision": self.settings.precision,
                "batch": self.settings.batch or None,  # None: the study's batch (not searched)
            },
            "cpu": self.cpu,
            "borrowed": self.borrowed,
            "framework_version": self.framework_version,
            "speedup_vs_tf_default": self.speedup,
            "verdict": self.verdict,
            "measured": self.measured,
            "study": self.study,
            "imported": self.imported,
        }

    def source(self) -> str:
        """Where the advice comes from, as one printable line (stored names may come from anywhere)."""
        where = f"{cores_text(self.cores)} of {self.cpu.get('model_name')} ({self.cpu.get('id')})"
        origin = f"; IMPORTED from {self.imported}" if self.imported else ""
        return one_line(("BORROWED from " if self.borrowed else "measured on ") + where + origin)


def environment(settings: Settings, strict: bool = True) -> dict[str, str | None]:
    """Variables that apply ``settings`` before TensorFlow starts; None means: leave it unset (TF's default).
    Names and values come from validated ``Settings`` only, never from stored text; the allocator's preload
    is this machine's own library (tuner/allocator.py). Where it is not installed, ``InvalidSettings`` says
    how to install it, or with ``strict`` off the preload is left out (``allocator_note`` says so)."""
    env: dict[str, str | None] = {
        "TF_NUM_INTRAOP_THREADS": str(settings.intra_op) if settings.intra_op else None,
        "TF_NUM_INTEROP_THREADS": str(settings.inter_op) if settings.inter_op else None,
    }
    env.update(dict.fromkeys(settings.knob_unset()))
    env.update(settings.knob_environ())
    if strict or allocator_note(settings) is None:
        env.update(settings.preload_environ())
    if settings.precision != "fp32":
        env[PRECISION_VARIABLE] = settings.precision  # for the program to read: no variable sets Keras' policy
    return env


def allocator_note(settings: Settings) -> str | None:
    """Why the allocator cannot be preloaded on this machine (with the install command), or None."""
    try:
        settings.preload_environ()
    except InvalidSettings as error:
        return str(error)
    return None


PRECISION_VARIABLE = "TUNER_PRECISION"
# Variables the measured settings decide: `tuner exec` does not pass a program's own values of them on.
# Every knob's own variable (TF_ENABLE_ONEDNN_OPTS, ONEDNN_MAX_CPU_ISA, OMP_*/KMP_*) and older names of them
# (DNNL_MAX_CPU_ISA) come from settings.py.
DECIDED_PREFIXES = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", *(ENV_NAMES.get(k, k) for k in ENV_KNOBS),
                    *(alias for names in ENV_ALIASES.values() for alias in names),
                    "LD_PRELOAD", "MALLOC_CONF", "TUNER_")  # fmt: skip


def in_program(settings: Settings) -> list[str]:
    """What no launcher can set from outside: the data format (when not Keras' default) and bf16."""
    calls = []
    if settings.data_format != "NHWC":
        calls.append(f'keras.backend.set_image_data_format("{DATA_FORMATS[settings.data_format]}")')
    if settings.precision != "fp32":
        calls.append(BF16_CALL)
    return calls


BF16_CALL = 'keras.mixed_precision.set_global_policy("mixed_bfloat16")'
BATCH_NOTE = "batch size: {} samples per step measured fastest per sample; no variable sets it: your program does"


def launch_summary(settings: Settings, cores: int) -> str:
    """'2 instances x 1 core, intra_op 1, inter_op 0, tcmalloc, bf16': the launch in words."""
    per = cores // settings.instances
    words = [f"{settings.instances} instance{'s' if settings.instances > 1 else ''} x {cores_text(per)}"]
    words += [f"intra_op {settings.intra_op or 'default'}", f"inter_op {settings.inter_op or 'default'}"]
    words += [f"allocator {settings.allocator}"] + (
        [f"precision {settings.precision} (changes numerics)"] if settings.precision != "fp32" else []
    )
    if settings.batch:  # searched with --search-batch: the program's own batch size, which no variable sets
        words.append(f"batch {settings.batch}{' per instance' if settings.instances > 1 else ''}")
    return ", ".join(words)


def isa_family(cpu: dict[str, Any]) -> tuple[str, ...]:
    return tuple(flag for flag in ISA_FAMILY if flag in cpu.get("isa", ()))


def verdicts(storage: optuna.storages.BaseStorage, warn: Warn = lambda line: None) -> list[Recommendation]:
    """Every study in storage with a confirmed verdict, as an (exact) recommendation. A study whose stored
    metadata or verdict is malformed is skipped with one ``warn`` line; the others are still used."""
    found = []
    for info in storage.get_all_studies():
        attrs = info.user_attrs
        if "tuner" not in attrs or "verdict" not in attrs or info.study_name == BENCH_STUDY:
            continue  # the records' study holds no verdict, whatever a forged import once wrote on it
        try:
            meta = StudyMeta.from_dict(attrs["tuner"])
            verdict = StoredVerdict.from_dict(attrs["verdict"])
            source = imported_from(attrs)
        except MalformedRecord as error:
            warn(f"study {one_line(info.study_name, 80)} skipped: {one_line(error)}")
            continue
        if meta.cores % verdict.settings.instances:  # only a forged or shared study: no search can sample it
            warn(
                f"study {one_line(info.study_name, 80)} skipped: its verdict's {verdict.settings.instances} instances "
                f"cannot share its {cores_text(meta.cores)} equally"
            )
            continue
        found.append(
            Recommendation(
                model=meta.model,
                mode=meta.mode,
                cores=meta.cores,
                runtime=meta.runtime,
                settings=verdict.settings,
                recommended=verdict.recommended,
                cpu=dict(meta.cpu),
                borrowed=False,
                framework_version=meta.probe.get("framework_version"),
                speedup=dict(verdict.speedup) if verdict.speedup else None,
                verdict=verdict.text,
                measured=verdict.measured,
                study=info.study_name,
                imported=source,
                objective=meta.objective,
            )
        )
    return found


def recommend(
    storage: optuna.storages.BaseStorage,
    signature: CpuSignature,
    cpu_name: str | None = None,
    cores: int | None = None,
    mode: str | None = None,
    runtime: str = "tensorflow",
    model: str = "resnet50",
    prefer_imported: bool = False,
    warn: Warn = lambda line: None,
    objective: str = "throughput",
) -> list[Recommendation]:
    """The best known settings per core count and mode for the CPU asked for (default: this machine's).
    Studies measured here win over imported ones (whatever their dates), unless ``prefer_imported``."""
    every = verdicts(storage, warn)
    pool = [
        r
        for r in every
        if r.runtime == runtime and r.model == model and r.objective == objective and (mode is None or r.mode == mode)
    ]
    if cpu_name is not None:
        exact = [r for r in pool if r.cpu.get("model_name", "").strip().lower() == cpu_name.strip().lower()]
    else:
        exact = [r for r in pool if r.cpu.get("id") == signature.id]
    if cores is not None:
        exact = [r for r in exact if r.cores == cores]
    if exact:
        return _latest(exact, prefer_imported)
    # Borrowed: only from the same vendor and ISA family, and only when a core count and a CPU were asked.
    if cpu_name is not None:
        like = [r for r in pool if r.cpu.get("model_name") and _similar_name(r.cpu["model_name"], cpu_name)]
    else:
        mine = {"vendor": signature.vendor, "isa": list(signature.isa)}
        like = [r for r in pool if r.cpu.get("vendor") == mine["vendor"] and isa_family(r.cpu) == isa_family(mine)]
    if like:
        wanted = cores if cores is not None else signature.physical_cores
        nearest = min(abs(r.cores - wanted) for r in like)
        chosen = [r for r in like if abs(r.cores - wanted) == nearest]
        return [_borrow(r) for r in _latest(chosen, prefer_imported)]
    what = (
        f"{model} {runtime}"
        + (f" {mode}" if mode else "")
        + (f" ({objective})" if objective != "throughput" else "")
        + (f" on {cores_text(cores)}" if cores else "")
    )
    cpu = cpu_name or f"{signature.model_name} ({signature.id})"
    others = sorted({(r.model, r.objective, r.runtime) for r in every} - {(model, objective, runtime)})
    flags = [
        f"--model {shlex.quote(one_line(m, 60))}"
        + (f" --objective {o}" if o != "throughput" else "")
        + (f" --runtime {shlex.quote(one_line(rt, 40))}" if rt != runtime else "")
        for m, o, rt in others
    ]
    hint = f"; verdicts are stored for: {', '.join(flags[:5])}" + (" ..." if len(flags) > 5 else "") if flags else ""
    raise TunerError(f"no confirmed verdict for {what} of {cpu}, nor of a CPU of the same vendor and ISA family{hint}")


def _similar_name(stored: str, asked: str) -> bool:
    """Same vendor word and family word (e.g. 'Intel Xeon', 'AMD EPYC'): the only stand-in a name allows."""
    return stored.lower().split()[:2] == asked.lower().split()[:2]


def _borrow(r: Recommendation) -> Recommendation:
    return Recommendation(**{**r.__dict__, "borrowed": True})


def _latest(found: Sequence[Recommendation], prefer_imported: bool = False) -> list[Recommendation]:
    """One recommendation per (cores, mode): this storage's own verdicts before imported ones (or the other
    way round with ``prefer_imported``), then the most recently confirmed."""
    best: dict[tuple[int, str], Recommendation] = {}
    for r in sorted(found, key=lambda r: ((r.imported is None) != prefer_imported, r.measured or "")):
        best[(r.cores, r.mode)] = r
    return [best[key] for key in sorted(best)]


def check_format(fmt: str) -> None:
    check_choice("--format", fmt, FORMATS)


def render(found: Sequence[Recommendation], fmt: str, colour: bool = False) -> str:
    """``found`` as text for people (each within ``layout.WIDTH``, the chosen settings coloured where
    ``colour`` is on), JSON with provenance, or one recommendation as shell or Python that applies it."""
    check_format(fmt)
    if fmt == "json":
        return json.dumps([r.provenance() for r in found], indent=2)
    if fmt == "text":
        return "\n\n".join("\n".join(_text(r, colour)) for r in found)
    if len(found) != 1:
        choices = ", ".join(f"--cores {r.cores} --mode {r.mode}" for r in found)
        raise UsageError(f"--format {fmt} applies one recommendation; {len(found)} match: choose one of {choices}")
    return _shell(found[0]) if fmt == "shell" else _python(found[0])


def _gain(r: Recommendation) -> str:
    if not r.speedup:
        return ""
    s = r.speedup
    return f"{s['value']:.2f}x tf-default [{s['low']:.2f}, {s['high']:.2f}]"


def _text(r: Recommendation, colour: bool = False) -> list[str]:
    """What to use (green where a setting clearly beat tf-default, yellow where tf-default is kept or the
    advice is borrowed), then its settings, launch, verdict and source, each line within ``layout.WIDTH``."""
    objective = "" if r.objective == "throughput" else f" ({r.objective})"
    target = shorten(one_line(f"{r.model} {r.mode}{objective} on {cores_text(r.cores)} ({r.runtime}):"), 70)
    chosen = paint(shorten(one_line(r.recommended), 38), "warn" if r.recommended == DEFAULT else "good", colour)
    lines = [f"{target} {chosen}" + (" " + paint("BORROWED", "warn", colour) if r.borrowed else "")]
    for label, text in (
        ("settings", r.settings.label()),
        ("launch", launch_summary(r.settings, r.cores)),
        ("verdict", r.verdict),
        ("source", f"{r.source()}, measured {r.measured}"),
    ):
        lines += wrap(one_line(text, 1000), indent=f"  {label + ':':10}", more=" " * 12)
    return lines


def _provenance(r: Recommendation, clean: Callable[[Any], str] = one_line) -> list[str]:
    """Comment lines: each stored string made one printable line, so none can end the comment (``clean``:
    ``shell_comment`` for shell output, where a pasted line may not be a comment at all)."""
    return [
        "# "
        + clean(
            f"tuner recommend: {r.model} {r.mode}, objective {r.objective}, {r.runtime} "
            f"(TensorFlow {r.framework_version})"
        ),
        "# " + clean(r.source()),
        "# " + clean(f"verdict ({r.measured}): {r.verdict}"),
    ]


def _launch_function(r: Recommendation, env: dict[str, str | None]) -> list[str]:
    """``tuner_launch PROGRAM ARGS``: the instances started as `tuner exec` starts them, pinned to this
    machine's cores, Ctrl-C and TERM passed on to all of them, the worst exit status returned."""
    groups = partition(core_set(r.cores), r.settings.instances)
    env_set = {k: v for k, v in env.items() if v is not None}
    unset = [k for k, v in env.items() if v is None]
    body = []
    for line in shell_lines([PROGRAM], groups, env_set, unset):
        if line == "wait":
            continue
        prefix = line.removesuffix(" &").removesuffix(f" {PROGRAM}")
        assert prefix != line, "shell_lines ends each instance's line with the program"
        body.append(f'    {prefix} "$@" & tuner_pids="$tuner_pids $!"')
    return [
        f"# CPUs as numbered on this machine ({cores_text(r.cores)} in package order)",
        "tuner_launch() {",
        '    tuner_pids=""',
        *body,
        "    trap 'kill -INT $tuner_pids 2>/dev/null' INT TERM",
        "    tuner_worst=0",
        "    for tuner_pid in $tuner_pids; do",
        '        wait "$tuner_pid"; tuner_status=$?',
        '        if [ "$tuner_status" -gt "$tuner_worst" ]; then tuner_worst=$tuner_status; fi',
        "    done",
        "    trap - INT TERM",
        '    return "$tuner_worst"',
        "}",
        "# usage: tuner_launch python app.py ARGS  (each instance gets TUNER_INSTANCE, TUNER_INSTANCES, TUNER_CORES)",
    ]


def _shell(r: Recommendation) -> str:
    lines = _provenance(r, shell_comment)
    lines.append("# " + launch_summary(r.settings, r.cores))
    env = environment(r.settings, strict=False)
    missing = allocator_note(r.settings)
    if missing:
        lines.append("# " + one_line(f"{missing}; then print this again for its preload"))
    if r.settings.instances > 1:
        lines += _launch_function(r, env)
    else:
        for name, value in env.items():
            lines.append(f"unset {name}" if value is None else f"export {name}={shlex.quote(value)}")
    lines.append(
        f"# or in the program, before TensorFlow runs anything: intra_op {r.settings.intra_op} and inter_op "
        f"{r.settings.inter_op} by tf.config.threading, as tuner recommend --format python writes it"
    )
    lines.append(f"# data format: {DATA_FORMATS[r.settings.data_format]}, by keras.backend.set_image_data_format")
    if r.settings.precision != "fp32":
        lines.append("# precision: mixed_bfloat16, by keras.mixed_precision.set_global_policy")
    if r.settings.batch:
        lines.append(f"# {BATCH_NOTE.format(r.settings.batch)}")
    # Every comment line, the tool's own words too, is safe where "#" starts no comment (interactive zsh).
    return "\n".join("# " + shell_comment(line[2:], 1000) if line.startswith("# ") else line for line in lines)


def _python(r: Recommendation) -> str:
    preload = {"LD_PRELOAD", "MALLOC_CONF"}  # too late once Python runs: `tuner exec` sets them (see below)
    env = {
        k: v
        for k, v in environment(r.settings, strict=False).items()
        if v is not None and not k.startswith("TF_NUM_") and k not in preload
    }
    unset = set(r.settings.knob_unset())
    lines = [
        # Fixed first line: Python reads an encoding declaration on line 1 or 2, so no stored text may stand
        # there ("coding: utf-7" in a CPU name would turn a comment into code).
        "# -*- coding: utf-8 -*-",
        "# Run this before anything imports TensorFlow: threads cannot change once it has started.",
        *_provenance(r),
        "import os",
        "",
    ]
    lines += [f"os.environ[{k!r}] = {v!r}" for k, v in env.items()]
    lines += [
        f"os.environ.pop({k!r}, None)"
        for k, v in environment(r.settings, strict=False).items()
        if v is None and k in unset
    ]
    lines += [
        "import keras",
        "import tensorflow as tf",
        "",
        f"tf.config.threading.set_intra_op_parallelism_threads({r.settings.intra_op})",
        f"tf.config.threading.set_inter_op_parallelism_threads({r.settings.inter_op})",
        f'keras.backend.set_image_data_format("{DATA_FORMATS[r.settings.data_format]}")',
    ]
    if r.settings.precision != "fp32":
        lines.append(BF16_CALL)
    if r.settings.batch:
        lines.append(f"# {BATCH_NOTE.format(r.settings.batch)}")
    if r.settings.allocator != "system" or r.settings.instances > 1:
        lines.append(f"# {launch_summary(r.settings, r.cores)}: the allocator is preloaded and instances pinned")
        lines.append("# before Python starts: launch the program with `tuner exec -- python app.py`")
    return "\n".join(lines)

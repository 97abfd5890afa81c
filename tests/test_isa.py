"""oneDNN's instruction-set cap (ONEDNN_MAX_CPU_ISA) as a knob: validated, taken out where the CPU lacks the
instructions, searched with --search-isa, applied by recommend and exec, and read back by the real probe."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from tests.helpers import one_error_line
from tuner import doctor
from tuner.capability import ISA_NEEDS, Capabilities, differing_caps, narrow, top_cap, unrunnable
from tuner.cli import main
from tuner.errors import InvalidSettings, SearchSpaceError, UsageError
from tuner.plan import Prepared, StudyOptions, isa_space
from tuner.replay import ReplayRunner
from tuner.runner import TrialSpec
from tuner.runtime import load as load_runtime
from tuner.settings import ONEDNN_ISAS, Settings
from tuner.signature import ISA_FLAGS
from tuner.space import load, with_isa
from tuner.storage import open_storage
from tuner.worker import onednn_verbose
from tuner.workload import Workload

# /proc/cpuinfo flags, as signature.ISA_FLAGS keeps them, of the CPUs this project's machines have and two more.
AVX2_EPYC = ["avx", "avx2", "fma"]
SKYLAKE_SP = ["avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl"]  # AVX-512 without VNNI or bf16
ZEN5 = ["avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx_vnni"]
GRAVITON = ["asimd", "asimddp", "sve", "bf16", "i8mm"]  # aarch64: no x86 cap applies
CLI = [sys.executable, "-c", "import sys; from tuner.cli import main; sys.exit(main())"]
SPACE = """
runtime = "tensorflow"
[knobs.intra_op]
type = "int"
low = 0
high = "cores"
[baselines.tf-default]
intra_op = 0
"""


def caps_choices(flags: list[str] | None) -> tuple[object, ...]:
    space = with_isa(load("tensorflow", 2))
    caps = Capabilities.from_probe({"onednn": True, "cpu_isa": flags} if flags is not None else {"onednn": True})
    return narrow(space, caps, 2)[0].distributions(2)["onednn_isa"].choices  # type: ignore[attr-defined,no-any-return]


def test_the_cap_is_validated_and_becomes_one_variable() -> None:
    capped = Settings.from_params({"intra_op": 2, "onednn_isa": "avx2"})
    # A cap is oneDNN's own variable, in its upper-case spelling; "default" leaves it unset, so a launcher unsets
    # it, and the older name oneDNN still reads where the new one is unset, whatever the value.
    assert capped.knob_environ() == {"ONEDNN_MAX_CPU_ISA": "AVX2"}
    assert capped.knob_unset() == ["DNNL_MAX_CPU_ISA"]
    assert Settings.from_params({"onednn_isa": "default"}).knob_unset() == ["ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"]
    # Anything but a known cap is refused before it could reach an environment: a stored or imported value too.
    for bad in ("AVX2", "avx512", "avx2; rm -rf ~", 2, True):
        with pytest.raises(InvalidSettings, match="onednn_isa must be"):
            Settings.from_params({"onednn_isa": bad})
    # Every cap has the CPU flags it needs, named as the signature keeps them (else no CPU could ever run it).
    assert set(ISA_NEEDS) == set(ONEDNN_ISAS)
    assert {flag for needs in ISA_NEEDS.values() for flag in needs} <= set(ISA_FLAGS)


def test_caps_the_cpu_lacks_or_runs_as_no_cap_are_taken_out_saying_why() -> None:
    # An AVX2-only EPYC runs avx2 at most: capped there it runs as uncapped, so no cap is left to search.
    assert caps_choices(AVX2_EPYC) == ("default",)
    assert top_cap(AVX2_EPYC) == "avx2" and differing_caps(AVX2_EPYC) == []
    # A Skylake-SP has AVX-512 but no VNNI: capping at avx2 may help where AVX-512 lowers its clock; avx512_core is
    # its highest cap, the same as none.
    assert caps_choices(SKYLAKE_SP) == ("default", "avx2")
    # This project's AVX-512 EPYC keeps every cap but AMX: AVX-VNNI (avx2_vnni) is not part of its AVX-512 caps,
    # so no cap includes all the others and none is known to run as no cap. An aarch64 server keeps none.
    assert caps_choices(ZEN5) == ("default", *[isa for isa in ONEDNN_ISAS if isa != "avx512_core_amx"])
    assert top_cap(ZEN5) is None
    assert caps_choices(GRAVITON) == ("default",)
    # A probe that did not read the flags takes nothing out.
    assert caps_choices(None) == ("default", *ONEDNN_ISAS)
    # The reason names the missing flags, so a user can check them in /proc/cpuinfo.
    reason = unrunnable({"onednn_isa": "avx512_core_vnni"}, Capabilities.from_probe({"cpu_isa": SKYLAKE_SP}))
    assert reason == (
        "isa_in_cpu",
        "this CPU has no avx512_vnni: capping oneDNN at avx512_core_vnni would run what a lower cap runs",
    )
    assert unrunnable({"onednn_isa": "avx512_core"}, Capabilities.from_probe({"cpu_isa": SKYLAKE_SP})) == (
        "isa_in_cpu",
        "avx512_core is the highest cap this CPU runs: capped there, oneDNN runs as with no cap (default)",
    )
    # The cap matters with oneDNN off too (Eigen's contractions call oneDNN's sgemm): never taken out for that.
    assert unrunnable({"onednn": False, "onednn_isa": "avx2"}, Capabilities.from_probe({"cpu_isa": ZEN5})) is None


def test_bf16_under_a_cap_without_bf16_instructions_needs_force_precision() -> None:
    zen5 = Capabilities.from_probe({"cpu_isa": ZEN5, "bf16_instructions": True}, ("bf16",))
    # The CPU has bf16, but capped at AVX2 oneDNN cannot use it: bf16 would be emulated, as on a CPU without it.
    assert unrunnable({"precision": "bf16", "onednn_isa": "avx2"}, zen5) == (
        "bf16_instructions",
        "oneDNN capped at avx2 has no bf16 instructions: bf16 would be emulated (--force-precision)",
    )
    # Capped where bf16 is kept, or uncapped, it runs; --force-precision searches the emulated one too.
    assert unrunnable({"precision": "bf16", "onednn_isa": "avx512_core_bf16"}, zen5) is None
    forced = Capabilities.from_probe({"cpu_isa": ZEN5, "bf16_instructions": True}, ("bf16",), force_precision=True)
    assert unrunnable({"precision": "bf16", "onednn_isa": "avx2"}, forced) is None


def test_doctor_names_the_caps_this_cpu_can_run() -> None:
    # A Skylake-SP has one cap to search, and its highest runs as none; an AVX2-only CPU and an aarch64 server
    # have nothing to search.
    assert doctor.caps_line(tuple(SKYLAKE_SP)) == (
        "oneDNN caps    to search here: avx2; avx512_core runs as no cap (ONEDNN_MAX_CPU_ISA, --search-isa)"
    )
    assert doctor.caps_line(tuple(AVX2_EPYC)).startswith("oneDNN caps    to search here: none; avx2 runs as no cap")
    # On aarch64 it says why: the caps searched are x86's.
    assert doctor.caps_line(tuple(GRAVITON)) == (
        "oneDNN caps    none searched on aarch64 (--search-isa takes x86 caps only)"
    )


def test_with_isa_keeps_every_baseline_at_the_default_and_is_added_once() -> None:
    space = with_isa(load("tensorflow", 2))
    # A baseline runs as it would without the tuner: no cap. (Left out, the sampler would pick one for it.)
    assert {params["onednn_isa"] for params in space.baselines(2).values()} == {"default"}
    with pytest.raises(SearchSpaceError, match="searches it already; leave --search-isa out"):
        with_isa(space)


def test_search_isa_is_refused_on_a_runtime_without_the_knob() -> None:
    runtime = dataclasses.replace(load_runtime("tensorflow"), name="plain", honours=("intra_op", "inter_op"))
    ready = Prepared(runtime, load("tensorflow", 2), {}, ReplayRunner.from_rates(lambda s: 1.0))
    # A runtime that does not declare the knob is not given it: one line naming the flag and the runtime, both
    # where the command checks its arguments and where a study's space is made.
    with pytest.raises(UsageError, match="--search-isa: runtime plain does not declare the onednn_isa knob"):
        isa_space(runtime, ready.space)
    # On a CPU where no cap runs otherwise than none (AVX2 alone, or aarch64), there is nothing to search.
    stock = load_runtime("tensorflow")
    with pytest.raises(UsageError, match=r"no oneDNN cap runs otherwise than no cap on this CPU \(avx2 at most\)"):
        isa_space(stock, ready.space, AVX2_EPYC)
    # On aarch64 the reason is that the caps searched are x86's, not that the CPU lacks them.
    with pytest.raises(UsageError, match=r"searched on x86 CPUs only .* nothing to search on this CPU"):
        isa_space(stock, ready.space, GRAVITON)
    with pytest.raises(UsageError, match="--search-isa: runtime plain does not declare the onednn_isa knob"):
        StudyOptions(search_isa=True).space(ready, Workload("tiny", "infer"))


def skylake_rate(spec: TrialSpec) -> float:
    """A CPU whose AVX-512 clock is low enough that oneDNN's AVX2 kernels are 1.2x faster (threads matter little)."""
    return 1200.0 if dict(spec.settings.env_knobs).get("onednn_isa") == "avx2" else 1000.0


def test_tune_finds_a_faster_cap_and_exec_applies_it(
    tmp_path: Path, storage_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("tuner.probe.machine_facts", lambda: {"allocators": ["system"], "cpu_isa": SKYLAKE_SP})
    space = tmp_path / "threads.toml"
    space.write_text(SPACE)
    runner = ReplayRunner.from_rates(skylake_rate, noise=0.01)
    argv = ["tune", "--model", "tiny", "--cores", "1", "--mode", "infer", "--space", str(space), "--trials", "8"]
    assert main([*argv, "--search-isa", "--storage", storage_url], runner=runner) == 0
    out = capsys.readouterr().out
    # The caps a Skylake-SP lacks and its highest (the same as none) were never measured, and the study says so
    # with the flags they need. (The probe runs without the knob: None.)
    measured = {dict(spec.settings.env_knobs).get("onednn_isa") for spec in runner.calls}
    assert measured == {None, "default", "avx2"}
    assert "onednn_isa=avx512_core_vnni taken out: this CPU has no avx512_vnni" in out
    (summary,) = optuna.get_all_study_summaries(open_storage(storage_url))
    assert "avx2_vnni" in summary.user_attrs["runnable"]["excluded"][0]
    assert main(["recommend", "--storage", storage_url, "--model", "tiny", "--format", "json"]) == 0
    (advice,) = json.loads(capsys.readouterr().out)
    # The AVX2 cap is 1.2x faster with 1% noise: confirmed and recommended.
    assert advice["settings"]["onednn_isa"] == "avx2"
    assert main(["recommend", "--storage", storage_url, "--model", "tiny", "--format", "shell"]) == 0
    # The shell lines set oneDNN's own variable, as the trials did.
    assert "export ONEDNN_MAX_CPU_ISA=AVX2" in capsys.readouterr().out
    assert main(["show", "--storage", storage_url]) == 0
    # The study has a row of its own, and show says what it searched beside the runtime's own knobs.
    (row,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("tiny ")]
    assert "infer, ISA cap searched" in row
    assert "+isa-1c-" in summary.study_name
    # `tuner exec` runs the program with the measured cap, whatever the user's shell set under either name.
    shell = {**os.environ, "ONEDNN_MAX_CPU_ISA": "SSE41", "DNNL_MAX_CPU_ISA": "AVX512_CORE"}
    app = "import os; print(os.environ.get('ONEDNN_MAX_CPU_ISA'), os.environ.get('DNNL_MAX_CPU_ISA'))"
    exec_argv = [*CLI, "exec", "--model", "tiny", "--cores", "1", "--mode", "infer", "--storage", storage_url]
    done = subprocess.run([*exec_argv, "--", sys.executable, "-c", app], capture_output=True, text=True, env=shell)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["AVX2", "None"]
    assert "DNNL_MAX_CPU_ISA" in done.stderr and "ONEDNN_MAX_CPU_ISA" in done.stderr  # named as dropped
    # `tuner benchmark --settings recommended` takes the verdict of this study, the target's only confirmed one.
    runner.calls.clear()
    bench = ["benchmark", "--model", "tiny", "--cores", "1", "--mode", "infer", "--settings", "recommended"]
    assert main([*bench, "--warmup", "1", "--timed", "4", "--storage", storage_url], runner=runner) == 0
    assert "+isa-1c-" in capsys.readouterr().err
    assert [dict(spec.settings.env_knobs).get("onednn_isa") for spec in runner.calls][-1] == "avx2"
    # Its tuned record says the study searched the cap, and the table says so beside the figure: a +isa study's
    # tuned figure is not what the plain space reaches.
    assert main(["table", "--wide", "--storage", storage_url]) == 0
    assert "ISA cap searched)" in capsys.readouterr().out


def test_bad_search_isa_use_is_one_line(storage_url: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    space = tmp_path / "capped.toml"
    space.write_text(SPACE.replace("intra_op = 0\n", 'intra_op = 0\nonednn_isa = "default"\n')
                     + '[knobs.onednn_isa]\ntype = "categorical"\nchoices = ["default", "avx2"]\n')  # fmt: skip
    argv = ["tune", "--model", "tiny", "--cores", "1", "--mode", "infer", "--space", str(space), "--search-isa"]
    assert main([*argv, "--storage", storage_url], runner=ReplayRunner.from_rates(lambda s: 1.0)) == 1
    # A space that searches the cap already gets one line, and nothing is stored.
    assert "knobs.onednn_isa: the space searches it already" in one_error_line(capsys.readouterr().err)
    assert optuna.get_all_study_summaries(open_storage(storage_url)) == []


def test_verbose_lines_of_both_onednn_generations_are_read(tmp_path: Path) -> None:
    log = tmp_path / "onednn.log"
    log.write_text(
        "onednn_verbose,info,oneDNN v3.2.0 (commit 12345)\n"
        "onednn_verbose,info,cpu,runtime:OpenMP,nthr:2\n"
        "onednn_verbose,info,cpu,isa:Intel AVX-512 with AVX512BW, AVX512VL, and AVX512DQ extensions\n"
    )
    # intel-tensorflow 2.14's oneDNN prints no version field; the ISA's own commas stay in it.
    assert onednn_verbose(str(log)) == {
        "onednn_runtime": "OpenMP",
        "onednn_isa": "Intel AVX-512 with AVX512BW, AVX512VL, and AVX512DQ extensions",
    }
    log.write_text("onednn_verbose,v1,info,cpu,runtime:threadpool,nthr:1\nonednn_verbose,v1,info,cpu,isa:Intel AVX2\n")
    # Stock TensorFlow 2.21's oneDNN marks its lines v1.
    assert onednn_verbose(str(log)) == {"onednn_runtime": "threadpool", "onednn_isa": "Intel AVX2"}
    # No log: nothing read back, nothing invented.
    assert onednn_verbose(str(tmp_path / "missing.log")) == {"onednn_runtime": None, "onednn_isa": None}

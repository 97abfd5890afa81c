"""Real runtimes read back what they applied: stock TensorFlow loads no OpenMP; intel-tensorflow honours OMP/KMP.

The intel-tensorflow environment is built here if it is missing (about 250 MB from PyPI, under a minute),
so the README's test command needs nothing else; where the runtime cannot be installed, the reason is the
skip message.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tuner.envs import create
from tuner.errors import TunerError
from tuner.policy import MeasurementPolicy
from tuner.probe import probe
from tuner.runner import SubprocessRunner, TrialSpec
from tuner.runtime import Runtime, load
from tuner.settings import Settings
from tuner.topology import physical_cores
from tuner.workload import Workload

pytestmark = pytest.mark.tensorflow
QUICK = MeasurementPolicy("quick", warmup=1, timed=2, timeout_s=300.0)
CORE = tuple(physical_cores()[:1])


@pytest.fixture(scope="module")
def intel() -> Iterator[Runtime]:
    runtime = load("intel-tensorflow")
    why = runtime.installable()
    if why:
        pytest.skip(why)
    create(runtime, log=lambda line: None)
    yield runtime


def test_stock_tensorflow_runs_on_its_threadpool_with_no_openmp() -> None:
    facts = probe(SubprocessRunner(), load("tensorflow"), CORE)
    # oneDNN's own verbose line says threadpool, and no OpenMP library is mapped into the process:
    # this is why the stock runtime refuses OMP_*/KMP_* knobs.
    assert facts["onednn_runtime"] == "threadpool"
    assert facts["openmp"] is None
    assert facts["inert"] == ["OMP_NUM_THREADS", "KMP_BLOCKTIME", "KMP_AFFINITY"]
    # oneDNN also says which instruction set its kernels are for: every x86 CPU this runs on has at least AVX2.
    assert "AVX" in facts["onednn_isa"]


def test_the_instruction_set_cap_reaches_onednn_on_any_cpu() -> None:
    # Capped at AVX2, oneDNN makes AVX2 kernels whatever the CPU (AVX-512 or not): the path an AVX2-only CPU runs,
    # read back from oneDNN itself, so both CPUs this suite runs on take it. (On an AVX2-only CPU the cap is moot.)
    facts = probe(SubprocessRunner(), load("tensorflow"), CORE, {"onednn": True, "onednn_isa": "avx2"})
    assert facts["onednn"] is True
    assert facts["onednn_isa"] == "Intel AVX2"


def test_intel_tensorflow_reads_back_omp_and_kmp_values(intel: Runtime) -> None:
    knobs = (("OMP_NUM_THREADS", 1), ("KMP_BLOCKTIME", 0), ("KMP_AFFINITY", "granularity=fine,compact,1,0"))
    spec = TrialSpec(Settings(1, 1, "NHWC", env_knobs=knobs), Workload("tiny", "infer"), CORE, QUICK)
    facts = SubprocessRunner(python=intel.python()).run(spec).facts
    # The OpenMP build loads libiomp5, and its own API reports exactly the values the trial set.
    assert facts["openmp"] == "libiomp5"
    assert facts["omp_max_threads"] == 1
    assert facts["kmp_blocktime"] == 0
    assert facts["framework_version"].startswith("2.14")


def test_intel_tensorflow_probe_confirms_its_declaration(intel: Runtime) -> None:
    facts = probe(SubprocessRunner(python=intel.python()), intel, CORE)
    # The probe's distinctive KMP_BLOCKTIME comes back from the runtime, and oneDNN runs on OpenMP.
    assert facts["openmp"] == "libiomp5" and facts["kmp_blocktime"] == 7 and facts["inert"] == []
    assert facts["onednn_runtime"] is not None and facts["onednn_runtime"].lower() in ("omp", "openmp")


def test_stock_interpreter_declared_as_openmp_runtime_is_refused() -> None:
    # A runtime that claims OpenMP knobs but whose environment holds stock TensorFlow is caught by the probe.
    with pytest.raises(TunerError, match="loaded no OpenMP library"):
        probe(SubprocessRunner(), load("intel-tensorflow"), CORE)


def test_tiny_study_on_intel_tensorflow_stores_read_back_values(intel: Runtime, tmp_path: object) -> None:
    import optuna
    from optuna.trial import TrialState

    from tuner.cli import main

    url = f"sqlite:///{tmp_path}/intel.db"
    args = ["tune", "--runtime", "intel-tensorflow", "--model", "tiny", "--cores", "1", "--mode", "infer",
            "--trials", "5", "--no-confirm", "--budget", "none", "--storage", url]  # fmt: skip
    assert main(args) == 0
    storage = optuna.storages.RDBStorage(url)
    (summary,) = storage.get_all_studies()
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    # Five complete trials, the three baselines among them (defaults, the table's heuristic, Intel's advice):
    # the read-back is the point here, so the search is not confirmed (confirmation runs trials the same way).
    assert len(complete) >= 5
    assert {t.user_attrs.get("baseline") for t in complete} >= {"tf-default", "heuristic", "intel-advice"}
    for trial in complete:
        facts = trial.user_attrs["measurement"]["facts"]
        blocktime = trial.params["KMP_BLOCKTIME"]
        # Every trial's metadata shows OpenMP loaded and the sampled values as the runtime itself reports them.
        assert facts["openmp"] == "libiomp5"
        assert facts["kmp_blocktime"] == (2_147_483_647 if blocktime == "infinite" else blocktime)
        assert facts["omp_max_threads"] == trial.params["OMP_NUM_THREADS"]
    # The study records the probe's proof, and importances were stored after it.
    assert study.user_attrs["tuner"]["probe"]["openmp"] == "libiomp5"
    assert "importances" in study.user_attrs

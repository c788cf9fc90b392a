"""Tests of examples/hpo_bdt: the dataset, the BDT job, batch suggestions, and a real run."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

EXAMPLE_DIR = Path(__file__).resolve().parents[2] / "examples" / "hpo_bdt"
MAIN = EXAMPLE_DIR / "main.py"


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dataset() -> ModuleType:
    # Unique module names: other examples may also have a main.py or a dataset.py.
    return _load("hpo_bdt_dataset", EXAMPLE_DIR / "dataset.py")


@pytest.fixture(scope="module")
def hpo(dataset: ModuleType) -> ModuleType:
    # main.py does `from dataset import ...` (its sibling, shipped with the workflow); point
    # that name at our copy only while main.py is being imported.
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "dataset", dataset)
        return _load("hpo_bdt_main", MAIN)


def test_dataset_is_deterministic_for_a_seed(dataset: ModuleType) -> None:
    x1, y1 = dataset.make_events(3_000, seed=7)
    x2, y2 = dataset.make_events(3_000, seed=7)
    x3, _ = dataset.make_events(3_000, seed=8)
    assert x1.shape == (3_000, len(dataset.FEATURES))
    assert x1.dtype == np.float32
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(x1, x3)
    assert np.isfinite(x1).all()
    # Imbalanced: about a quarter signal, both classes present.
    assert 0.2 < y1.mean() < 0.3


def test_load_dataset_splits_caches_and_protects(dataset: ModuleType) -> None:
    data = dataset.load_dataset(2_000, seed=1)
    assert dataset.load_dataset(2_000, seed=1) is data  # cached: a worker generates once
    assert len(data.x_train) == len(data.y_train) == 1_400
    assert len(data.x_val) == len(data.y_val) == 600
    assert set(np.unique(data.y_val)) == {0, 1}
    for array in data:
        assert not array.flags.writeable
    x, _ = dataset.make_events(2_000, seed=1)
    np.testing.assert_array_equal(np.concatenate([data.x_val, data.x_train]), x)


def test_default_bdt_separates_signal_from_background(hpo: ModuleType, dataset: ModuleType) -> None:
    # Outside a running workflow a @work function runs in-process like a plain function;
    # its defaults are xgboost's own, i.e. an untuned BDT.
    auc = hpo.train_bdt(n_events=8_000, seed=2)
    assert isinstance(auc, float)
    assert 0.7 < auc <= 1.0
    y_val = dataset.load_dataset(8_000, seed=2).y_val
    guess = roc_auc_score(y_val, np.random.default_rng(0).random(len(y_val)))
    assert abs(guess - 0.5) < 0.05
    assert hpo.train_bdt(n_events=8_000, seed=2) == auc  # deterministic (nthread=1, seeded)


def _assert_valid_points(hpo: ModuleType, batch: list[dict], n: int) -> None:
    assert len(batch) == n
    assert len({json.dumps(p, sort_keys=True) for p in batch}) == n, "points must be distinct"
    for p in batch:
        assert set(p) == set(hpo.PBOUNDS)
        assert isinstance(p["max_depth"], int)
        assert 2 <= p["max_depth"] <= 10
        for name, value in p.items():
            low, high = hpo.PBOUNDS[name]
            assert low <= value <= high, (name, value)
    json.dumps(batch)  # plain Python, JSON-friendly job kwargs


def test_batch_suggestion_gives_distinct_points_within_bounds(hpo: ModuleType) -> None:
    optimizer = hpo.make_optimizer(seed=5)
    first = hpo.suggest_batch(optimizer, 5, seed=1)  # no data yet: random initial design
    _assert_valid_points(hpo, first, 5)

    def fake_auc(p: dict) -> float:
        return 0.9 - (p["eta"] - 0.15) ** 2 - 0.002 * (p["max_depth"] - 5) ** 2

    for p in first:
        optimizer.register(params=p, target=fake_auc(p))
    batch = hpo.suggest_batch(optimizer, 4, seed=2)
    _assert_valid_points(hpo, batch, 4)
    # The constant liar's fake results stay in the scratch optimizer.
    assert len(optimizer.space) == 5
    # Same state and seed, same batch.
    assert hpo.suggest_batch(optimizer, 4, seed=2) == batch


@pytest.mark.slow
def test_main_runs_end_to_end_on_the_embedded_engine(
    hpo: ModuleType, tmp_path: Path, script_env: dict[str, str]
) -> None:
    # script_env: private TASKLIFT_HOME under tmp_path, TASKLIFT_QUIET=1, TASKLIFT_WORKERS=2.
    cmd = [sys.executable, str(MAIN), "--json", "--iterations", "2", "--points", "4"]
    cmd += ["--n-events", "6000", "--seed", "3"]
    start = time.monotonic()
    # Run from an unrelated directory: the workflow ships the example's directory, not the CWD.
    proc = subprocess.run(
        cmd, cwd=tmp_path, env=script_env, capture_output=True, text=True, timeout=180, check=False
    )
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)  # exactly one JSON object, nothing else on stdout
    assert 0.5 < out["best_target"] <= 1.0
    assert set(out["best_params"]) == set(hpo.PBOUNDS)
    for name, value in out["best_params"].items():
        low, high = hpo.PBOUNDS[name]
        assert low <= value <= high, (name, value)
    assert out["best_params"]["max_depth"] in range(2, 11)
    assert out["n_jobs"] == 8
    assert out["n_failed"] == 0
    assert out["iterations"] == 2
    assert [h["iteration"] for h in out["history"]] == [1, 2]
    best_so_far = [h["best_so_far"] for h in out["history"]]
    assert best_so_far == sorted(best_so_far)
    assert best_so_far[-1] == out["best_target"]
    assert elapsed < 120, f"end-to-end run took {elapsed:.0f} s"


def test_help_lists_the_flags() -> None:
    proc = subprocess.run(
        [sys.executable, str(MAIN), "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    for flag in ("--iterations", "--points", "--n-events", "--seed", "--json", "--service",
                 "--backend"):  # fmt: skip
        assert flag in proc.stdout

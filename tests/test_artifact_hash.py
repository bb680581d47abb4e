"""``artifact_hash`` (``pipelines.release.registry.hash_folder``) covers content, not the wall
clock: two builds of the same index or ranker differ only in ``created_at`` / ``*_seconds`` /
``examples_per_s`` and hash alike (issue 17: a rerun registers what an undisturbed run
registers); a change of anything else still shows, and versions registered with the older
every-byte hash still load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.core.settings import Settings
from pipelines.release import registry
from tests.helpers import make_bundle

DAY = "2026-01-01"


def write_artifact(folder: Path, created_at: str, seconds: float, recall: float = 0.97) -> Path:
    """An index-like folder: a binary, a meta with wall-clock keys, a config with a curve."""
    (folder / "model").mkdir(parents=True)
    (folder / "index.faiss").write_bytes(b"faiss")
    meta = {"created_at": created_at, "build_seconds": seconds, "tune_seconds": seconds / 2,
            "kind": "flat", "recall": recall, "tuning": [{"recall": recall}]}  # fmt: skip
    (folder / "meta.json").write_text(json.dumps(meta))
    curve = [{"epoch": 0, "examples_per_s": 1e5 * seconds, "train_loss": 0.25}]
    (folder / "model" / "config.json").write_text(json.dumps({"lr": 0.1, "history": curve}))
    (folder / "model" / "plain.json").write_text(json.dumps({"n": 3}, indent=1))
    return folder


def test_wall_clock_keys_do_not_change_the_hash(tmp_path: Path) -> None:
    a = write_artifact(tmp_path / "a", "2026-01-01T00:00:01+00:00", 1.5)
    b = write_artifact(tmp_path / "b", "2026-01-02T10:11:12+00:00", 7.25)
    assert registry.hash_folder(a) == registry.hash_folder(b)
    assert registry.hash_folder(a, stable=False) != registry.hash_folder(b, stable=False)
    c = write_artifact(tmp_path / "c", "2026-01-01T00:00:01+00:00", 1.5, recall=0.5)
    assert registry.hash_folder(c) != registry.hash_folder(a)
    (b / "index.faiss").write_bytes(b"FAISS")
    assert registry.hash_folder(b) != registry.hash_folder(a)


def test_files_without_wall_clock_keys_hash_as_before(tmp_path: Path) -> None:
    """A JSON file without wall-clock keys is hashed byte for byte (its hash is what it was)."""
    a = write_artifact(tmp_path / "a", "2026-01-01T00:00:01+00:00", 1.5)
    plain = a / "model" / "plain.json"
    before = registry.hash_folder(plain)
    assert before == registry.hash_folder(plain, stable=False)
    plain.write_text(json.dumps({"n": 3}))  # the same JSON in other bytes: another hash
    assert registry.hash_folder(plain) != before


def register_bundle_with_timed_index(settings: Settings) -> str:
    """:func:`tests.helpers.make_bundle` with an index whose meta holds ``created_at`` /
    ``build_seconds``: the bundle version."""
    wall_clock = {"created_at": "2026-01-01T00:00:00+00:00", "build_seconds": 0.5}
    return make_bundle(settings, DAY, index_meta=wall_clock)


def set_wall_clock(meta_path: Path, created_at: str, seconds: float) -> None:
    meta = json.loads(meta_path.read_text())
    meta.update(created_at=created_at, build_seconds=seconds)
    meta_path.write_text(json.dumps(meta))


def test_a_rebuilt_index_meta_loads_a_changed_recall_does_not(mlflow_settings: Settings) -> None:
    version = register_bundle_with_timed_index(mlflow_settings)
    meta_path = Path(registry.load_bundle(mlflow_settings, version)["paths"]["index"]) / "meta.json"
    set_wall_clock(meta_path, "2026-03-03T03:03:03+00:00", 9.0)
    registry.load_bundle(mlflow_settings, version)  # no "content differs"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "recall": 0.5}))
    with pytest.raises(registry.BundleError, match="content differs"):
        registry.load_bundle(mlflow_settings, version)


def test_bundle_registered_with_the_every_byte_hash_still_loads(
    mlflow_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    stable_hash = registry.hash_folder
    with monkeypatch.context() as m:  # a registry of before: every byte of the index hashed
        m.setattr(registry, "hash_folder", lambda folder: stable_hash(folder, stable=False))
        version = register_bundle_with_timed_index(mlflow_settings)
    bundle = registry.load_bundle(mlflow_settings, version)
    meta_path = Path(bundle["paths"]["index"]) / "meta.json"
    assert registry.hash_folder(meta_path.parent) != bundle["index"]["artifact_hash"]
    set_wall_clock(meta_path, "2026-03-03T03:03:03+00:00", 9.0)  # its bytes changed
    with pytest.raises(registry.BundleError, match="content differs"):
        registry.load_bundle(mlflow_settings, version)

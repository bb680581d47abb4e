"""Item index beyond one machine's memory (issue 19): the memory budget, IVF with on-disk
inverted lists (build, recall gate, save/load, publish, missing or truncated lists), GPU wiring."""

from __future__ import annotations

import gc
import os
from pathlib import Path

import faiss
import numpy as np
import pytest

from pipelines.core import schema
from pipelines.core.settings import Settings
from pipelines.retrieval import faiss_index as fi
from pipelines.retrieval.faiss_index import (
    IVFDATA_FILE,
    IndexRecallError,
    ItemIndex,
    build_index,
    choose_kind,
    memory_bytes,
)
from tests.test_index import brute_force, clustered

TINY_MB = 0.01  # forces the on-disk path for 5k x 32 (in memory: ~0.7 MB)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(items (5000, 32), tuning queries (200, 32), held-out queries (100, 32))``."""
    return clustered(5000, 32, seed=1), clustered(200, 32, seed=2), clustered(100, 32, seed=3)


@pytest.fixture(scope="module")
def ondisk(data, tmp_path_factory) -> ItemIndex:
    x, q, _ = data
    work = tmp_path_factory.mktemp("work")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fi, "ONDISK_BLOCK", 2000)  # three blocks merged: ids must stay global
        return build_index(
            x, np.arange(5000) * 7, sample_queries=q, recall_target=0.9, model_version="od1",
            memory_budget_mb=TINY_MB, workdir=work,
        )  # fmt: skip


def test_default_budget_keeps_todays_choice():
    budget = Settings.from_env({"RECLOOP_HOME": "/tmp/unused"}).index_memory_budget_mb
    assert budget == 4096
    for n in (10, 4000, 49_999, 50_000, 1_000_000, 5_000_000, 5_000_001, 10_000_000):
        for dim in (16, 64, 128) if n <= 5_000_000 else (16, 64):
            assert choose_kind(n, dim=dim, memory_budget_mb=budget) == choose_kind(n)
    assert choose_kind(20_000_000, dim=64, memory_budget_mb=budget) == "ivf_ondisk"
    assert choose_kind(4000, dim=32, memory_budget_mb=TINY_MB) == "ivf_ondisk"
    assert choose_kind(10**8, recall_target=1.0, memory_budget_mb=1) == "flat"  # exact asked
    # IVF-Flat ~ (4 D + 8) bytes an item + the quantizer; on disk: the quantizer only
    assert 0.26e9 < memory_bytes("ivf", 1_000_000, 64) < 0.28e9
    assert memory_bytes("ivf_ondisk", 1_000_000, 64) < 2e6
    with pytest.raises(ValueError, match="RECLOOP_INDEX_MEMORY_BUDGET_MB"):
        Settings.from_env({"RECLOOP_HOME": "/tmp/unused", "RECLOOP_INDEX_MEMORY_BUDGET_MB": "0"})


def test_default_build_is_unchanged(data, tmp_path):
    x, q, _ = data
    plain = build_index(x[:4000], sample_queries=q, model_version="v1")
    budget = build_index(x[:4000], sample_queries=q, model_version="v1", memory_budget_mb=4096)
    assert budget.kind == plain.kind == "flat"
    assert set(budget.meta) == set(plain.meta)  # no new keys in a default artifact
    a, b = plain.save(tmp_path / "a"), budget.save(tmp_path / "b")
    assert sorted(os.listdir(a)) == sorted(os.listdir(b)) == ["index.faiss", "meta.json"]
    assert (a / "index.faiss").read_bytes() == (b / "index.faiss").read_bytes()


def test_ondisk_recall_gate_and_same_lists_as_in_memory(data, ondisk, capfd):
    x, q, held_out = data
    assert ondisk.kind == "ivf_ondisk" and ondisk.recall >= 0.9
    assert isinstance(fi.ondisk_lists(ondisk.index), faiss.OnDiskInvertedLists)
    assert ondisk.meta["ivfdata"] == IVFDATA_FILE and ondisk.meta["memory_budget_mb"] == TINY_MB
    # recall against exact search on queries the tuning never saw, at the recorded nprobe
    found, _ = ondisk.search(held_out, 10)
    exact, _ = brute_force(x, held_out, 10)
    hits = [len(set(f) & set(e * 7)) for f, e in zip(found, exact, strict=True)]
    assert np.mean(hits) / 10 >= 0.9
    # the same trained IVF-Flat held in memory answers identically
    mem = build_index(
        x, np.arange(5000) * 7, sample_queries=q, kind="ivf", params=ondisk.params, seed=0
    )
    m_ids, m_scores = mem.search(held_out, 10)
    d_ids, d_scores = ondisk.search(held_out, 10)
    assert np.array_equal(m_ids, d_ids)
    np.testing.assert_allclose(m_scores, d_scores, rtol=1e-6)
    assert capfd.readouterr().out == ""  # faiss's progress lines kept off stdout


def test_ondisk_save_load_identical_and_republish(data, ondisk, tmp_path, capfd):
    _, _, held_out = data
    folder = ondisk.save(tmp_path)
    assert sorted(os.listdir(folder)) == [
        "index.faiss", "index.ivfdata", "item_ids.npy", "meta.json",
    ]  # fmt: skip
    assert (folder / IVFDATA_FILE).stat().st_size == ondisk.meta["ivfdata_bytes"]
    loaded = ItemIndex.load(folder)
    lists = fi.ondisk_lists(loaded.index)
    assert lists.read_only and Path(lists.filename) == folder / IVFDATA_FILE
    for k in (1, 10, 25):
        a, b = ondisk.search(held_out, k), loaded.search(held_out, k)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert loaded.meta == ondisk.meta and loaded.recall == ondisk.recall
    ten = loaded.search(held_out, 10)[0]
    # a copied folder still loads (the lists are named relative to index.faiss)
    moved = tmp_path / "elsewhere"
    folder.rename(moved)
    loaded = ItemIndex.load(moved)
    assert np.array_equal(loaded.search(held_out, 10)[0], ten)
    # re-saving a loaded index (its lists mapped from the folder it replaces) works, and a
    # publication killed between its renames is recovered with its lists
    again = loaded.save(tmp_path)
    loaded = ItemIndex.load(again)
    assert loaded.save(tmp_path) == again
    os.replace(again, tmp_path / f"{schema.BACKUP_PREFIX}{again.name}")
    assert np.array_equal(ItemIndex.load(again).search(held_out, 10)[0], ten)
    assert capfd.readouterr().out == ""


def test_missing_or_truncated_lists_name_the_file(ondisk, tmp_path):
    folder = ondisk.save(tmp_path)
    data_path = folder / IVFDATA_FILE
    good = data_path.read_bytes()
    data_path.unlink()
    with pytest.raises(ValueError, match=f"{data_path}: .*missing"):
        ItemIndex.load(folder)
    data_path.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match=f"{data_path}: {len(good) // 2} bytes"):
        ItemIndex.load(folder)
    data_path.write_bytes(good)
    (folder / "index.faiss").write_bytes(b"not a faiss index")
    with pytest.raises(ValueError, match=str(folder / "index.faiss")):
        ItemIndex.load(folder)


def test_build_folder_is_temporary(data, tmp_path):
    x, q, _ = data
    idx = build_index(x, sample_queries=q, recall_target=0.9, memory_budget_mb=TINY_MB,
                      workdir=tmp_path)  # fmt: skip
    (lists_dir,) = [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-index-build-")]
    assert sorted(os.listdir(lists_dir)) == [IVFDATA_FILE]  # the merged blocks are gone
    del idx
    gc.collect()
    assert not lists_dir.exists()
    with pytest.raises(IndexRecallError):  # a failed gate leaves nothing behind either
        build_index(x, sample_queries=q, recall_target=0.99, params={"nprobe": 1},
                    memory_budget_mb=TINY_MB, workdir=tmp_path)  # fmt: skip
    assert list(tmp_path.iterdir()) == []


def test_gpu_build_when_present(data, tmp_path, monkeypatch):
    """With GPUs the coarse k-means runs on them (faked here by a CPU index: no GPU on CI)."""
    x, q, _ = data
    moved = []

    def to_gpus(index):
        moved.append(index)
        return index

    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 2)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", to_gpus, raising=False)
    idx = build_index(x, sample_queries=q, recall_target=0.9, memory_budget_mb=TINY_MB,
                      workdir=tmp_path, model_version="g1")  # fmt: skip
    assert idx.meta["gpus"] == 2 and idx.recall >= 0.9 and len(moved) == 1
    # the k-means assigned through it: it holds the final centroids, one per list
    assert isinstance(moved[0], faiss.IndexFlatIP) and moved[0].ntotal == idx.params["nlist"]
    assert fi._ivf(idx.index).clustering_index is None  # not saved with the index
    assert ItemIndex.load(idx.save(tmp_path / "root")).meta["gpus"] == 2


def test_dag_task_uses_the_budget(data, tmp_path, monkeypatch):
    """``build_index`` (the DAG task) builds on disk under RECLOOP_INDEX_MEMORY_BUDGET_MB and
    leaves only the published folder under ``artifacts/index``."""
    from types import SimpleNamespace

    from pipelines.retrieval import index as task

    _, q, held_out = data
    x = clustered(10_000, 32, seed=4)  # 1.25 MiB of vectors: above a 1 MiB budget
    model = SimpleNamespace(item_embeddings=lambda: x, user_embeddings=lambda: q)
    art = SimpleNamespace(
        model=model, meta={"version": "two_tower-7"},
        items=SimpleNamespace(ids=[f"i{j}" for j in range(len(x))]),
    )  # fmt: skip
    monkeypatch.setattr(task, "load_artifact", lambda settings, name, date: art)
    env = {"RECLOOP_HOME": str(tmp_path), "RECLOOP_INDEX_MEMORY_BUDGET_MB": "1"}
    out = task.build_item_index(Settings.from_env(env), "2026-01-07")
    assert out["kind"] == "ivf_ondisk" and out["recall"] >= 0.95 and out["memory_budget_mb"] == 1
    gc.collect()
    root = Path(out["path"]).parent
    assert sorted(p.name for p in root.iterdir()) == ["index-two_tower-7"]
    ids, _ = ItemIndex.load(Path(out["path"])).search(held_out, 10)
    assert ids.dtype.kind == "U" and (ids != "").all()
    default = task.build_item_index(Settings.from_env({"RECLOOP_HOME": str(tmp_path)}), "d")
    assert default["kind"] == "flat" and "memory_budget_mb" not in default

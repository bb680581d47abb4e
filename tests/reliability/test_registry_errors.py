"""Issue 17, case 6: a transient MLflow error is not taken for "alias unset".

``registry.get_alias`` answers None only when the alias (or the registered model) does not
exist; a store error ("database is locked") is retried with backoff and raised after the last
try. The service (:class:`serving.bundle.BundleManager`) keeps the bundles it serves on a store
error (the challenger is not dropped, the champion stays), and a version that failed to load is
tried again: at the next check when the store failed, after ``retry_rejected_s`` when the bundle
itself was bad (never rejected for ever). Faults are injected by making the MLflow client raise.
"""

from __future__ import annotations

import types

import pytest
from mlflow.exceptions import MlflowException

from pipelines.core.settings import Settings
from pipelines.release import registry
from serving import bundle as bundle_mod
from serving.bundle import BundleManager


def flaky(monkeypatch: pytest.MonkeyPatch, settings: Settings, failures: int | None) -> list[int]:
    """Make the MLflow client's alias lookup raise "database is locked" for its first
    ``failures`` calls (None: always); returns the call counter ``[n]``."""
    c = registry.client(settings)
    real = c.get_model_version_by_alias
    calls = [0]

    def lookup(name: str, alias: str):
        calls[0] += 1
        if failures is None or calls[0] <= failures:
            raise MlflowException("(sqlite3.OperationalError) database is locked")
        return real(name, alias)

    monkeypatch.setattr(c, "get_model_version_by_alias", lookup)
    monkeypatch.setattr(registry, "ALIAS_BACKOFF_S", 0.0, raising=False)
    return calls


def test_get_alias_retries_a_store_error(ab_registry, monkeypatch: pytest.MonkeyPatch) -> None:
    settings, champ, _ = ab_registry
    calls = flaky(monkeypatch, settings, failures=2)
    assert registry.get_alias(settings, "champion") == champ  # not None: retried
    assert calls[0] == 3


def test_get_alias_raises_after_the_retries(ab_registry, monkeypatch: pytest.MonkeyPatch) -> None:
    settings, _, _ = ab_registry
    calls = flaky(monkeypatch, settings, failures=None)
    with pytest.raises(MlflowException, match="database is locked"):
        registry.get_alias(settings, "champion")
    assert calls[0] == registry.ALIAS_ATTEMPTS > 1


def test_unset_alias_is_none_at_once(ab_registry, monkeypatch: pytest.MonkeyPatch) -> None:
    settings, _, _ = ab_registry
    registry.client(settings).delete_registered_model_alias(registry.BUNDLE, "challenger")
    calls = flaky(monkeypatch, settings, failures=0)
    assert registry.get_alias(settings, "challenger") is None
    assert registry.get_alias(settings, "champion", name="no-such-model") is None
    assert calls[0] == 2  # not retried: "unset" is an answer


def fake_loads(monkeypatch: pytest.MonkeyPatch, fail: dict[str, list[Exception]]) -> list[str]:
    """``serving.bundle.load`` returns a stand-in bundle (no artifacts read), raising the
    exceptions queued in ``fail[version]`` first; smoke test and warm-up do nothing."""
    loaded: list[str] = []

    def load(settings: Settings, version: str):
        if fail.get(version):
            raise fail[version].pop(0)
        loaded.append(version)
        return types.SimpleNamespace(version=version)

    monkeypatch.setattr(bundle_mod, "load", load)
    monkeypatch.setattr(bundle_mod, "smoke_score", lambda b, n=4: None)
    monkeypatch.setattr(bundle_mod, "warm_up", lambda s, b: None)
    return loaded


def versions(mgr: BundleManager) -> dict[str, str | None]:
    return {a: (b.version if b else None) for a, b in mgr.arms.items()}


def test_service_keeps_its_bundles_on_a_store_error(
    ab_registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, champ, chall = ab_registry
    fake_loads(monkeypatch, {})
    mgr = BundleManager(settings)
    mgr.check()
    assert versions(mgr) == {"champion": champ, "challenger": chall}
    flaky(monkeypatch, settings, failures=None)  # the store fails for good
    out = mgr.check()
    assert versions(mgr) == {"champion": champ, "challenger": chall}  # nothing dropped
    assert all(o.startswith("registry error") for o in out.values()), out


def test_no_champion_at_start_is_retried(ab_registry, monkeypatch: pytest.MonkeyPatch) -> None:
    settings, champ, chall = ab_registry
    fake_loads(monkeypatch, {})
    flaky(monkeypatch, settings, failures=2 * registry_attempts())  # both arms fail at start
    mgr = BundleManager(settings)
    mgr.check()
    assert not mgr.ready()[0]
    mgr.check()  # the store answers again: no restart needed
    assert versions(mgr) == {"champion": champ, "challenger": chall}


def registry_attempts() -> int:
    return getattr(registry, "ALIAS_ATTEMPTS", 1)


def test_a_failed_load_is_retried(ab_registry, monkeypatch: pytest.MonkeyPatch) -> None:
    settings, champ, chall = ab_registry
    locked = MlflowException("(sqlite3.OperationalError) database is locked")
    fail = {chall: [locked, ValueError("corrupt index")]}
    loaded = fake_loads(monkeypatch, fail)
    mgr = BundleManager(settings)
    mgr.check()  # the store fails while loading the challenger
    assert versions(mgr) == {"champion": champ, "challenger": None}
    mgr.check()  # tried again at once: the bundle is not at fault; now the bundle itself fails
    assert versions(mgr)["challenger"] is None
    assert mgr.check()["challenger"].startswith("rejected")  # within the cooldown: not retried
    monkeypatch.setattr(mgr, "retry_rejected_s", 0.0, raising=False)  # the cooldown passed
    mgr.check()
    assert versions(mgr) == {"champion": champ, "challenger": chall}
    assert loaded == [champ, chall]

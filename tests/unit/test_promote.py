import os
from pathlib import Path

import pytest
from iterseg.errors import PromotionError
from iterseg.promote import current_latest, promote

pytestmark = pytest.mark.unit


def test_promote_moves_forward_and_replaces_the_link(tmp_path: Path) -> None:
    for date in ("2026-01-01", "2026-02-01"):
        (tmp_path / date).mkdir()
    assert promote(tmp_path, "2026-01-01")
    assert os.readlink(tmp_path / "latest") == "2026-01-01"  # relative link
    assert promote(tmp_path, "2026-02-01")
    assert current_latest(tmp_path) == "2026-02-01"
    assert (tmp_path / "latest").resolve() == (tmp_path / "2026-02-01").resolve()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".latest")] == []


def test_latest_never_moves_back(tmp_path: Path) -> None:
    for date in ("2026-01-01", "2026-02-01"):
        (tmp_path / date).mkdir()
    promote(tmp_path, "2026-02-01")
    assert not promote(tmp_path, "2026-01-01")
    assert current_latest(tmp_path) == "2026-02-01"


def test_promote_uses_rename_over_the_old_link(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The old link is replaced by rename(2), never removed first."""
    for date in ("2026-01-01", "2026-02-01"):
        (tmp_path / date).mkdir()
    promote(tmp_path, "2026-01-01")
    calls: list[str] = []
    real_unlink = Path.unlink

    def spy_unlink(self: Path, missing_ok: bool = False) -> None:
        calls.append(self.name)
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", spy_unlink)
    monkeypatch.setattr(os, "remove", lambda p: calls.append(str(p)))
    monkeypatch.setattr(os, "unlink", lambda p: calls.append(str(p)))
    promote(tmp_path, "2026-02-01")
    assert "latest" not in calls
    assert current_latest(tmp_path) == "2026-02-01"


def test_real_directory_named_latest_is_refused(tmp_path: Path) -> None:
    (tmp_path / "2026-01-01").mkdir()
    (tmp_path / "latest").mkdir()
    with pytest.raises(PromotionError, match="not a link"):
        promote(tmp_path, "2026-01-01")


def test_missing_iteration_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PromotionError, match="no such iteration"):
        promote(tmp_path, "2026-01-01")

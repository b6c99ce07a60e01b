from pathlib import Path

import pytest

from clients.settings import Settings


def test_defaults_put_objects_under_the_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STACKFLOWS_DATA_DIR", str(tmp_path))
    assert Settings().storage_root == (tmp_path / "objects").as_uri()


def test_nested_sections_read_from_prefixed_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STACKFLOWS_STORAGE__ROOT", "gs://lab-bucket/runs/")
    monkeypatch.setenv("STACKFLOWS_MODEL__MIN_GENE_OVERLAP", "0.8")
    s = Settings()
    assert s.storage_root == "gs://lab-bucket/runs"
    assert s.model.min_gene_overlap == 0.8


def test_dotenv_file_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("STACKFLOWS_BATCH__BACKEND=cloud\n")
    assert Settings().batch.backend == "cloud"

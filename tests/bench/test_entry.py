"""``python -m bench``'s plumbing: rendering a saved run, the subset flag, one real child."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import __main__ as entry
from bench import suite
from bench.report import END, KEYS, START, Measured, assemble
from tests.bench.test_report import RUN

FAKE = suite.Bench("fake", "tests.bench.fake_bench", ("p6_request_size_ratio",))


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    result = assemble({"export": Measured(values={"p6_request_size_ratio": 40.0})}, RUN, "not run")
    path = tmp_path / "run.json"
    path.write_text(json.dumps(result))
    return path


def test_json_from_a_saved_run_prints_one_object(saved: Path, capsys: pytest.CaptureFixture):
    assert entry.main(["--json", "--from", str(saved)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(KEYS) <= set(printed)
    assert printed["p6_request_size_ratio"] == 40.0


def test_update_readme_fills_the_markers(saved: Path, tmp_path: Path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{START}\nstale\n{END}\nrest\n")
    assert entry.main(["--update-readme", str(readme), "--from", str(saved)]) == 0
    text = readme.read_text()
    assert text.startswith(f"intro\n{START}\n`python -m bench --quick`, 2026-01-02")
    assert "| P6 float32 tensor request vs JPEG request, bytes | ≥ 10× | 40.00x |" in text
    assert "stale" not in text and text.endswith(f"{END}\nrest\n")


def test_update_readme_without_markers_fails_and_leaves_the_file(saved: Path, tmp_path: Path):
    readme = tmp_path / "README.md"
    readme.write_text("no markers\n")
    assert entry.main(["--update-readme", str(readme), "--from", str(saved)]) == 2
    assert readme.read_text() == "no markers\n"


def test_a_saved_file_that_is_not_a_result_is_refused(tmp_path: Path):
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"p3_predict_p50_ratio": 1.0}))
    assert entry.main(["--markdown", "--from", str(path)]) == 2


def test_only_selects_by_key_prefix_and_by_name():
    assert [b.name for b in suite.select("p3,p4")] == ["api"]
    # What trains on the pretrained bases brings the step that builds them.
    assert [b.name for b in suite.select("p1")] == ["bases", "p1_speed", "p1_heads"]
    assert [b.name for b in suite.select("p2")] == ["bases", "p2"]
    assert [b.name for b in suite.select("p5,label_moves")] == ["p5", "label_moves"]
    assert [b.name for b in suite.select(None)] == [b.name for b in suite.SUITE]
    # --quick leaves out what reports no key of the table, unless --only names it.
    assert "label_moves" not in [b.name for b in suite.select(None, quick=True)]
    assert [b.name for b in suite.select("label_moves", quick=True)] == ["label_moves"]
    with pytest.raises(ValueError, match="p9"):
        suite.select("p9")


def test_every_key_is_reported_by_exactly_one_bench():
    reported = [key for bench in suite.SUITE for key in bench.keys]
    assert sorted(reported) == sorted(KEYS)


def test_a_child_writes_its_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(suite, "SUITE", (FAKE,))
    result = tmp_path / "result.json"
    assert suite._child("fake", result, quick=True) == 0
    measured = Measured.from_json(json.loads(result.read_text()))
    assert measured.values == {"p6_request_size_ratio": 42.0}
    assert measured.details == {"quick": True}


def test_a_failing_child_reports_its_keys_null_with_the_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(suite, "SUITE", (FAKE,))
    monkeypatch.setenv("FAKE_BENCH", "fail")
    result = tmp_path / "result.json"
    assert suite._child("fake", result, quick=False) == 1
    measured = Measured.from_json(json.loads(result.read_text()))
    assert measured.values == {"p6_request_size_ratio": None}
    assert measured.reasons["p6_request_size_ratio"] == (
        "fake failed: RuntimeError: the fake benchmark was told to fail"
    )


def test_a_child_process_that_leaves_no_result_is_reported(tmp_path: Path):
    # The child process only knows the real suite: an unknown name exits before measuring.
    unknown = suite.Bench("no_such_bench", "tests.bench.fake_bench", ("p6_request_size_ratio",))
    with (tmp_path / "printed.txt").open("w") as output:
        measured = suite.run(unknown, quick=True, output=output, timeout=120)
    assert measured.values == {"p6_request_size_ratio": None}
    assert measured.reasons["p6_request_size_ratio"] == (
        "no_such_bench exited with 2 without a result"
    )

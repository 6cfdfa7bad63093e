"""benchmarks/results_file.py: the one layout of the results files and its merge rule, and proc_tree's child runs."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from proc_tree import child_result  # noqa: E402
from results_file import combined, invocation_args, read_runs, record_run  # noqa: E402


def test_a_run_is_keyed_by_its_arguments_and_date(tmp_path):
    out = tmp_path / "r" / "x.json"
    record_run(out, {"v": 1}, "x.py", ["--cases", "3", "--out", str(out)], date="2026-01-01")
    record_run(out, {"v": 2}, "x.py", ["--cases", "3", f"--out={out}"], date="2026-01-01")  # same: replaces
    record_run(out, {"v": 3}, "x.py", ["--cases", "3"], date="2026-01-02")  # another day: added
    runs = record_run(out, {"v": 4}, "x.py", ["--cases", "4", "--work", "/tmp/w"], date="2026-01-02")
    assert [r["v"] for r in runs] == [2, 3, 4] == [r["v"] for r in read_runs(out)]
    assert runs[0] == {"v": 2, "args": ["--cases", "3"], "command": "python benchmarks/x.py --cases 3",
                       "date": "2026-01-01"}
    assert runs[2]["args"] == ["--cases", "4"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["x.json"]  # no temporary file left


def test_combined_newest_wins_and_merged_fields_gather_rows():
    runs = [{"machine": "a", "by_size": {"128": 1, "256": 2}, "rows": [{"b": "tiny", "m": "cache", "s": 1.0},
                                                                         {"b": "vit_b", "m": "cache", "s": 9.0}]},
            {"machine": "b", "by_size": {"256": 3}, "rows": [{"b": "tiny", "m": "cache", "s": 0.5},
                                                             {"b": "tiny", "m": "online", "s": 2.0}]}]
    view = combined(runs, (("by_size", ()), ("rows", ("b", "m"))))
    assert view["machine"] == "b"
    assert view["by_size"] == {"128": 1, "256": 3}
    assert view["rows"] == [{"b": "tiny", "m": "cache", "s": 0.5}, {"b": "vit_b", "m": "cache", "s": 9.0},
                            {"b": "tiny", "m": "online", "s": 2.0}]
    assert combined(runs)["rows"] == runs[1]["rows"]  # without a merge rule, the newest run's field whole
    assert combined([]) == {}


def test_invocation_args_drop_where_it_wrote():
    assert invocation_args(["-np", "2", "--out", "o.json", "--work=/w", "--race-work", "r", "--x"]) == [
        "-np", "2", "--x"]


def test_another_layout_is_refused_naming_the_file(tmp_path):
    bad = tmp_path / "old.json"
    bad.write_text(json.dumps({"rows": []}))
    with pytest.raises(ValueError, match=f"{bad}: not a results file"):
        read_runs(bad)
    assert read_runs(tmp_path / "missing.json") == []


def test_child_results_and_failures(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parents[1] / 'benchmarks')!r})\n"
                      "from proc_tree import serve_one\n"
                      "assert serve_one(sys.argv[1:] or None, lambda a, n: {'a': a, 'n': n * 2})\n")
    assert child_result([sys.executable, str(script), "tiny", "21"], None, "tiny") == {"a": "tiny", "n": 42}
    with pytest.raises(SystemExit, match=r"(?s)error: no arguments failed:\n.*AssertionError"):
        child_result([sys.executable, str(script)], None, "no arguments")

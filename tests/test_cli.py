"""Commands on run folders that were damaged by hand: one clear line, never a traceback."""

from pathlib import Path

from conftest import run_cli


def test_report_on_a_broken_run_folder(tmp_path: Path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "records.jsonl").write_text('{"name": "a"}\n')
    (run / "config.yaml").write_text("budget: [1\n")
    proc = run_cli("report", str(run))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "config.yaml cannot be read as YAML" in proc.stderr.strip().splitlines()[-1]
    (run / "config.yaml").write_text("reference: null\n")
    proc = run_cli("report", str(run))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr
    assert "records.jsonl line 1 is not a yoloq record" in proc.stderr
    proc = run_cli("check", str(run))
    assert proc.returncode == 2 and "no accuracy budget" in proc.stderr
    assert run_cli("report", str(tmp_path / "missing")).returncode == 2

"""--overwrite replaces a run only once the new run has succeeded."""

from tunelab.cli import main


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_failed_overwrite_restores_the_previous_run(text_config, write_config, tmp_path, capsys):
    run_dir = tmp_path / "run"
    text_config["train"]["epochs"] = 1
    assert main(["train", str(write_config(text_config)), "--output", str(run_dir), "--quiet"]) == 0
    before = _snapshot(run_dir)

    broken = dict(text_config, data={**text_config["data"], "test": str(tmp_path / "missing.csv")})
    assert main(["train", str(write_config(broken, "broken.yaml")), "--output", str(run_dir), "--overwrite"]) == 2
    assert "missing.csv" in capsys.readouterr().err
    assert _snapshot(run_dir) == before
    assert not any(p.name.endswith(".previous") for p in tmp_path.iterdir())


def test_successful_overwrite_replaces_the_run(text_config, write_config, tmp_path):
    run_dir = tmp_path / "run"
    text_config["train"]["epochs"] = 1
    assert main(["train", str(write_config(text_config)), "--output", str(run_dir), "--quiet"]) == 0
    text_config["seed"] = 7
    assert main(["train", str(write_config(text_config)), "--output", str(run_dir), "--overwrite", "--quiet"]) == 0
    assert "seed: 7" in (run_dir / "config.yaml").read_text()
    assert not any(p.name.endswith(".previous") for p in tmp_path.iterdir())

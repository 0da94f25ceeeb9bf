from tunelab.cli import main


def test_text_run_end_to_end(text_config, write_config, tmp_path, capsys):
    config = write_config(text_config)
    run_dir = tmp_path / "run"
    assert main(["train", str(config), "--output", str(run_dir), "--quiet"]) == 0
    for name in ("config.yaml", "metrics.jsonl", "results.json", "report.html", "model/model.safetensors"):
        assert (run_dir / name).exists(), name

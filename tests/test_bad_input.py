"""Every bad input ends with exit code 2 and one line naming the offending key or file."""
from __future__ import annotations

import pytest


def _one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("dglkd: error: ")
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.mark.parametrize(
    "override, needles",
    [
        ({"trian": {"epochs": 3}}, ["trian", "unknown key", "allowed:", "train"]),
        ({"train": {"epochs": "many"}}, ["train.epochs", "integer", "many"]),
        ({"train": {"epoch": 3}}, ["train.epoch", "allowed:", "epochs"]),
        ({"data": {"name": "coraa"}}, ["data.name", "coraa", "cora", "citeseer"]),
        ({"data": {"name": "cora", "features": "tfidf"}}, ["data.features", "tfidf", "binary"]),
        ({"teacher": {"model": "gcnn"}}, ["teacher.model", "gcnn", "gat", "sage"]),
        ({"student": {"model": "mlp", "hiden": 3}}, ["student.hiden", "allowed:", "hidden"]),
        ({"method": {"name": "distill"}}, ["method.name", "distill", "glnn", "kd"]),
        ({"method": {"name": "glnn", "lamda": 0.5}}, ["method.lamda", "allowed:", "lam"]),
        ({"method": {"name": "glnn", "lam": 2}}, ["method.lam", "less than or equal"]),
        ({"device": "gpu"}, ["device", "gpu", "cpu"]),
        ({"n_runs": 0}, ["n_runs", "greater than or equal to 1"]),
    ],
)
def test_config_errors_name_the_key(cli, write_config, small_cora, tmp_path, override, needles):
    for key, value in override.items():
        small_cora[key] = value
    code, _, err = cli("distill", write_config(small_cora), "--out", tmp_path / "runs")
    _one_line_error(code, err, *needles)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.parametrize(
    "override, needles",
    [
        ("train.epochs=ten", ["train.epochs", "ten"]),
        ("train", ["--set", "key=value"]),
        ("train.epochs.x=3", ["train.epochs", "is not a section"]),
    ],
)
def test_set_errors(cli, write_config, small_cora, tmp_path, override, needles):
    code, _, err = cli("distill", write_config(small_cora), "--out", tmp_path, "--set", override)
    _one_line_error(code, err, *needles)


def test_missing_config_file(cli, tmp_path):
    code, _, err = cli("distill", tmp_path / "nope.yaml")
    _one_line_error(code, err, "config file not found", "nope.yaml")


def test_not_yaml(cli, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    code, _, err = cli("distill", bad)
    _one_line_error(code, err, "bad.yaml", "not valid YAML")


def test_missing_npz_file_names_it(cli, write_config, small_cora, tmp_path):
    small_cora["data"] = {"name": "npz", "path": str(tmp_path / "absent.npz")}
    code, _, err = cli("distill", write_config(small_cora), "--out", tmp_path / "runs")
    _one_line_error(code, err, "absent.npz", "not found")


def test_npz_without_path_names_the_key(cli, write_config, small_cora, tmp_path):
    small_cora["data"] = {"name": "npz"}
    code, _, err = cli("distill", write_config(small_cora), "--out", tmp_path / "runs")
    _one_line_error(code, err, "data.path", "required")


def test_missing_ogb_dataset_offline(cli, write_config, small_cora, tmp_path, monkeypatch):
    import urllib.request

    def offline(*_args, **_kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    small_cora["data"] = {"name": "ogbn-arxiv", "root": str(tmp_path / "ogb")}
    code, _, err = cli("distill", write_config(small_cora), "--out", tmp_path / "runs")
    _one_line_error(code, err, "ogbn-arxiv", str(tmp_path / "ogb"), "arxiv.zip")


def test_resume_needs_a_run_folder(cli, tmp_path):
    code, _, err = cli("distill", "--resume", tmp_path)
    _one_line_error(code, err, "--resume", "config.yaml")


def test_distill_needs_a_config(cli):
    code, _, err = cli("distill")
    _one_line_error(code, err, "CONFIG")

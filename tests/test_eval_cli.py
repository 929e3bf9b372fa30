"""guider-eval: a trained run evaluated again from its folder, without retraining."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from guider.eval_cli import main
from guider.pipeline import run


def last_eval(folder):
    (path,) = sorted(folder.glob("eval-*.json"))[-1:]
    return json.loads(path.read_text())


def test_reproduces_the_training_runs_metrics_even_after_a_move(tiny_cfg, tmp_path, capsys):
    trained = run(tiny_cfg("train.epochs=3"), tmp_path / "run")
    moved = tmp_path / "elsewhere" / "run"
    shutil.move(str(tmp_path / "run"), moved)
    assert main([str(moved), "device=cpu"]) == 0
    result = last_eval(moved)
    assert result["test"] == trained["test"] and result["valid"] == trained["valid"]
    assert result["epoch"] == trained["best_epoch"]
    assert "[evaluated again]" in capsys.readouterr().out


def test_other_eval_settings_apply(tiny_cfg, tmp_path):
    run(tiny_cfg("train.epochs=2"), tmp_path)
    out = tmp_path / "e.json"
    assert main([str(tmp_path), "eval.topk=[7]", "eval.valid_metric=NDCG@7", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["test"]) == {"Recall@7", "Precision@7", "NDCG@7", "MAP@7"}


def test_refuses_model_settings_and_missing_folders(tiny_cfg, tmp_path, capsys):
    run(tiny_cfg("train.epochs=1"), tmp_path / "run")
    assert main([str(tmp_path / "run"), "backbone.n_layers=1"]) == 1
    assert "the model's own settings come from the run" in capsys.readouterr().err
    assert main([str(tmp_path / "nothing")]) == 1
    assert "config.yaml not found" in capsys.readouterr().err


def test_refuses_changed_data_unless_asked(short_cfg, tmp_path, capsys):
    folder = tmp_path / "data" / "tiktok"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = ["userID\titemID\tx_label"]
    for u in range(30):
        items = rng.choice(40, 6, replace=False)
        rows += [f"{u}\t{i}\t{label}" for i, label in zip(items, [0, 0, 0, 0, 1, 2])]
    (folder / "tiktok.inter").write_text("\n".join(rows) + "\n")
    cfg = short_cfg("dataset=tiktok", f"data_dir={tmp_path / 'data'}", "train.epochs=1")
    run(cfg, tmp_path / "run")
    assert main([str(tmp_path / "run")]) == 0  # the same data: fine
    rows[-1] = rows[-1].rsplit("\t", 2)[0] + "\t39\t2" if not rows[-1].endswith("\t39\t2") else \
        rows[-1].rsplit("\t", 2)[0] + "\t38\t2"
    (folder / "tiktok.inter").write_text("\n".join(rows) + "\n")
    assert main([str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert "differ from those the run" in err and "--allow-other-data" in err
    assert main([str(tmp_path / "run"), "--allow-other-data"]) == 0

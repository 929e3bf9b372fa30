"""guider-eval: a trained run evaluated again from its folder, without retraining."""

from __future__ import annotations

import json
import shutil

import numpy as np

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


def test_recommendations_are_the_evaluators_ranking_with_original_ids(short_cfg, tmp_path):
    import pandas as pd
    import torch

    from guider.evaluation import recommend
    from guider.evaluation.ranking import build_eval_set

    # hand-made: 2 users x 4 items; user 0 trained on items 0, 1; user 1 on items 3, 2
    scores = torch.tensor([[9.0, 1.0, 3.0, 2.0], [5.0, 6.0, 7.0, 8.0]])
    es = build_eval_set(np.array([0, 0, 1, 1]), np.array([0, 1, 3, 2]), np.array([0, 1]),
                        np.array([2, 1]), 2, 4)
    recs = recommend(lambda u: scores[u], es, 2)
    assert recs["user"].tolist() == [0, 0, 1, 1] and recs["rank"].tolist() == [1, 2, 1, 2]
    assert recs["item"].tolist() == [2, 3, 1, 0]  # trained items are never recommended
    assert recs["score"].tolist() == [3.0, 2.0, 6.0, 5.0]

    # a run with eval.save_topk and id mapping files in the dataset folder
    folder = tmp_path / "data" / "tiktok"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = ["userID\titemID\tx_label"]
    for u in range(20):
        items = np.concatenate([[u, u + 10], rng.choice(30, 8, replace=False)])
        items = list(dict.fromkeys(items.tolist()))[:6]  # every item occurs: ids contiguous
        rows += [f"{u}\t{i}\t{label}" for i, label in zip(items, [0, 0, 0, 0, 1, 2])]
    (folder / "tiktok.inter").write_text("\n".join(rows) + "\n")
    (folder / "u_id_mapping.csv").write_text(
        "user_id\tuserID\n" + "".join(f"U{u}\t{u}\n" for u in range(20)))
    (folder / "i_id_mapping.csv").write_text(
        "asin\titemID\n" + "".join(f"A{i:03d}\t{i}\n" for i in range(30)))
    cfg = short_cfg("dataset=tiktok", f"data_dir={tmp_path / 'data'}", "train.epochs=2",
                    "eval.save_topk=5")
    metrics = run(cfg, tmp_path / "run")
    path = tmp_path / "run" / metrics["recommendations"]
    frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    assert len(frame) == 20 * 5 and set(frame["rank"]) == {1, 2, 3, 4, 5}
    assert (frame["user_id"] == "U" + frame["user"].astype(str)).all()
    assert (frame["item_id"] == frame["item"].map(lambda i: f"A{i:03d}")).all()
    train = {tuple(map(int, r.split("\t")[:2])) for r in rows[1:] if r.endswith("\t0")}
    assert not any((u, i) in train for u, i in zip(frame["user"], frame["item"]))
    # guider-eval writes the same lists from best.pt
    assert main([str(tmp_path / "run"), "eval.save_topk=5"]) == 0
    again = last_eval(tmp_path / "run")["recommendations"]
    other = pd.read_parquet(again) if again.endswith(".parquet") else pd.read_csv(again)
    pd.testing.assert_frame_equal(frame, other)


def test_an_older_guider_config_is_read_in_the_current_form():
    from guider.identity import config_hash, current_form

    old = {"seed": 0, "denoise": {"name": "guider", "teacher": "lightgcn", "teacher_dim": 32,
                                  "teacher_layers": 3, "teacher_reg": 1e-3, "teacher_lr": 1e-3}}
    new = current_form(old)
    assert new["denoise"]["teacher"] == {"name": "lightgcn", "embedding_dim": 32, "n_layers": 3,
                                         "reg_weight": 1e-3}
    assert "teacher_dim" not in new["denoise"] and new["denoise"]["teacher_lr"] == 1e-3
    assert config_hash(new) == config_hash(old)  # one run, one identity, either form
    assert current_form({"denoise": {"name": "tce"}}) == {"denoise": {"name": "tce"}}


def test_a_whole_noise_group_can_be_switched(tiny_cfg, tmp_path, capsys):
    """A run trained with injected noise, evaluated under noise=none: the same data before noise
    (the digest is taken before injection), the clean split's masks, the noise section replaced."""
    run(tiny_cfg("noise=random", "noise.ratio=0.2", "train.epochs=2"), tmp_path / "run")
    out = tmp_path / "clean.json"
    assert main([str(tmp_path / "run"), "noise=none", "--out", str(out)]) == 0
    clean = json.loads(out.read_text())
    same = tmp_path / "same.json"
    assert main([str(tmp_path / "run"), "--out", str(same)]) == 0
    noisy = json.loads(same.read_text())
    assert clean["noise"]["type"] == "none" and noisy["noise"]["type"] == "random"
    assert clean["test"] != noisy["test"]  # the injected pairs are no longer masked
    assert main([str(tmp_path / "run"), "noise=bogus"]) == 1
    assert "choose one of" in capsys.readouterr().err

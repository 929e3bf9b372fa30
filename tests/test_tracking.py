"""The logger group: MLflow and TensorBoard records read back through their own readers, a
failing tracker that costs nothing, a missing package that fails before any work."""

from __future__ import annotations

import json

import pytest

from guider import tracking
from guider.pipeline import run

EPOCHS = 3


def test_mlflow_records_params_metrics_and_artifacts(tiny_cfg, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)  # the default store and artifacts go under ./outputs
    sweep = tmp_path / "my-sweep"
    sweep.mkdir()
    (sweep / "multirun.yaml").write_text("{}\n")  # a Hydra sweep folder
    metrics = run(tiny_cfg("logger=mlflow", f"train.epochs={EPOCHS}"), sweep / "run-a")
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("my-sweep")  # named after the sweep folder
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.run_name == "run-a" and found.info.status == "FINISHED"
    assert found.data.params["backbone.name"] == "lightgcn"
    assert found.data.params["train.epochs"] == str(EPOCHS)
    history = client.get_metric_history(found.info.run_id, "valid/Recall_at_20")
    assert [m.step for m in history] == list(range(EPOCHS))
    assert found.data.metrics["test/Recall_at_20"] == pytest.approx(metrics["test"]["Recall@20"])
    artifacts = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert {"metrics.json", "history.csv", "config.yaml"} <= artifacts
    assert "checkpoints" not in artifacts


def test_tensorboard_event_files_read_back(tiny_cfg, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    metrics = run(tiny_cfg("logger=tensorboard", f"train.epochs={EPOCHS}"), tmp_path)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert [e.step for e in events.Scalars("valid/Recall@20")] == list(range(EPOCHS))
    assert len(events.Scalars("train/loss")) == EPOCHS
    (test,) = events.Scalars("test/Recall@20")
    assert test.value == pytest.approx(metrics["test"]["Recall@20"])
    assert "test/NDCG@20" in scalars


def read_wandb_records(path) -> list:
    """The protobuf records of an offline wandb run file: a 7-byte file header (":W&B", magic,
    version), then LevelDB-log framed records (crc32, little-endian length, type: 1 full, 2
    first, 3 middle, 4 last) in 32 KiB blocks whose tails shorter than a header are padding."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, records, parts = 32768, 7, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # padding at the end of a block
            pos += block - pos % block
            continue
        length = int.from_bytes(data[pos + 4:pos + 6], "little")
        kind = data[pos + 6]
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        parts = chunk if kind in (1, 2) else parts + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(parts)
            records.append(record)
    return records


def item_key(item) -> str:
    return item.key or "/".join(item.nested_key)


def test_wandb_offline_records_config_history_and_summary(tiny_cfg, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    sweep = tmp_path / "my-sweep"
    sweep.mkdir()
    (sweep / "multirun.yaml").write_text("{}\n")
    metrics = run(tiny_cfg("logger=wandb", f"train.epochs={EPOCHS}"), sweep / "run-a")
    (run_file,) = (sweep / "run-a" / "wandb").glob("offline-run-*/run-*.wandb")
    records = read_wandb_records(run_file)
    kinds = [r.WhichOneof("record_type") for r in records]
    (info,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert info.display_name == "run-a" and info.run_group == "my-sweep"
    assert info.project == "guider"
    config = {item_key(i): json.loads(i.value_json) for r in records
              if r.WhichOneof("record_type") == "config" for i in r.config.update}
    config.update({item_key(i): json.loads(i.value_json) for i in info.config.update})
    config = {k: v["value"] if isinstance(v, dict) and "value" in v else v
              for k, v in config.items()}
    assert config["backbone.name"] == "lightgcn"
    assert config["train.epochs"] == EPOCHS
    history = [r.history for r in records if r.WhichOneof("record_type") == "history"]
    assert [h.step.num for h in history] == list(range(EPOCHS))
    history = [{item_key(i): json.loads(i.value_json) for i in h.item} for h in history]
    assert all("valid/Recall_at_20" in h and "train/loss" in h for h in history)
    summary = {item_key(i): json.loads(i.value_json) for r in records
               if r.WhichOneof("record_type") == "summary" for i in r.summary.update}
    assert summary["test/Recall_at_20"] == pytest.approx(metrics["test"]["Recall@20"])
    assert "exit" in kinds  # finished
    assert metrics["status"] == "completed"


def test_wandb_runs_one_after_another_in_one_process_are_complete_on_disk(tiny_cfg, tmp_path,
                                                                        monkeypatch):
    """A sweep runs its jobs in one process: each run's file is complete when its run returns
    (wandb's finish alone can return before its service has written the file), and the next
    run starts after the previous one's teardown."""
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    for name in ("run-a", "run-b"):
        run(tiny_cfg("logger=wandb", "train.epochs=2"), tmp_path / name)
        (run_file,) = (tmp_path / name / "wandb").glob("offline-run-*/run-*.wandb")
        kinds = [r.WhichOneof("record_type") for r in read_wandb_records(run_file)]
        assert kinds.count("run") == 1 and kinds.count("history") == 2 and kinds[-1] == "exit"


def test_a_failing_tracker_never_costs_the_run(tiny_cfg, tmp_path, monkeypatch, caplog):
    def broken(self, row):
        raise RuntimeError("tracking server unreachable")

    monkeypatch.setattr(tracking.Tracker, "_log_eval", broken)
    metrics = run(tiny_cfg(f"train.epochs={EPOCHS}"), tmp_path)
    assert metrics["status"] == "completed"
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "completed"
    assert "tracking server unreachable" in caplog.text and "tracking is off" in caplog.text


def test_a_missing_package_fails_before_any_work_naming_the_extra(tiny_cfg, tmp_path,
                                                                   monkeypatch):
    class Missing(tracking.Tracker):
        def __init__(self, *args):
            raise ImportError("No module named 'mlflow'")

    monkeypatch.setitem(tracking.TRACKERS, "mlflow", Missing)
    with pytest.raises(ValueError, match=r"pip install 'guider\[mlflow\]'"):
        run(tiny_cfg("logger=mlflow"), tmp_path / "run")
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_wandb_mode_is_checked(tiny_cfg, tmp_path):
    with pytest.raises(ValueError, match="logger.mode='cloud'"):
        run(tiny_cfg("logger=wandb", "logger.mode=cloud"), tmp_path)

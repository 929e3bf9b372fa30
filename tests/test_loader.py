"""MMRec-format loading (guider.data.loader, guider.data.load_data): every malformed input is a
DataError that names the file and the problem."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from guider.config import DatasetConfig, NoiseConfig
from guider.data import DataError, load_data, load_mmrec
from guider.data.loader import read_inter

from .helpers import HEADER, ROWS, write_inter


def load(folder, features=None, required=None, name="toy"):
    return load_mmrec(folder, name, None, features or {}, required)


def expect_error(folder, *fragments, **kw):
    with pytest.raises(DataError) as info:
        load(folder, **kw)
    msg = str(info.value)
    for frag in fragments:
        assert frag in msg, f"{frag!r} not in {msg!r}"
    return msg


# ---------------------------------------------------------------------------------------------
# a valid folder
# ---------------------------------------------------------------------------------------------


def test_valid_file_with_extra_columns_loads_with_correct_splits(tmp_path):
    write_inter(tmp_path / "toy.inter")
    data = load(tmp_path)
    assert (data.name, data.n_users, data.n_items) == ("toy", 3, 4)
    got = {name: sorted(zip(s.users.tolist(), s.items.tolist()))
           for name, s in (("train", data.train), ("valid", data.valid), ("test", data.test))}
    assert got == {
        "train": [(0, 0), (0, 1), (1, 1), (1, 3), (2, 2)],
        "valid": [(0, 2), (2, 0)],
        "test": [(0, 3), (1, 0)],
    }
    for s in (data.train, data.valid, data.test):
        assert s.users.dtype == np.int64 and s.items.dtype == np.int64
    assert data.features == {}
    assert not data.has_noise_labels and not data.train_noise.any()


def test_only_required_columns_is_enough_and_column_order_is_free(tmp_path):
    rows = [(r[4], r[1], r[0]) for r in ROWS]
    write_inter(tmp_path / "toy.inter", rows, ["x_label", "itemID", "userID"])
    data = load(tmp_path)
    assert (data.n_users, data.n_items, len(data.train), len(data.valid), len(data.test)) == (3, 4, 5, 2, 2)


def test_custom_inter_file_name(tmp_path):
    write_inter(tmp_path / "other.txt")
    data = load_mmrec(tmp_path, "toy", "other.txt", {})
    assert len(data.train) == 5


def test_features_loaded_and_float16_cast_to_float32(tmp_path):
    write_inter(tmp_path / "toy.inter")
    img = (np.arange(4 * 3).reshape(4, 3) / 4).astype(np.float16)
    txt = np.ones((4, 2), dtype=np.float32)
    np.save(tmp_path / "image_feat.npy", img)
    np.save(tmp_path / "text_feat.npy", txt)
    data = load(tmp_path, {"image": "image_feat.npy", "text": "text_feat.npy"},
                required=["image", "text"])
    assert data.modalities == ["image", "text"]
    assert data.features["image"].dtype == np.float32
    np.testing.assert_array_equal(data.features["image"], img.astype(np.float32))
    assert data.features["text"].dtype == np.float32 and data.features["text"].shape == (4, 2)
    assert "absent_modalities" not in data.info


def test_missing_feature_file_not_required_is_recorded(tmp_path):
    write_inter(tmp_path / "toy.inter")
    np.save(tmp_path / "image_feat.npy", np.zeros((4, 3), dtype=np.float32))
    feats = {"image": "image_feat.npy", "text": "text_feat.npy"}
    for required in (None, ["image"], []):
        data = load(tmp_path, feats, required=required)
        assert data.modalities == ["image"]
        assert data.info["absent_modalities"] == ["text"]


# ---------------------------------------------------------------------------------------------
# malformed .inter files
# ---------------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    msg = expect_error(tmp_path, "not found", "toy.inter")
    assert str(tmp_path) in msg


def test_missing_column(tmp_path):
    write_inter(tmp_path / "toy.inter", [r[:4] for r in ROWS], HEADER[:4])
    expect_error(tmp_path, "toy.inter", "missing column", "x_label")


def test_missing_two_columns_names_both(tmp_path):
    write_inter(tmp_path / "toy.inter", [(r[0], r[2]) for r in ROWS], ["userID", "rating"])
    expect_error(tmp_path, "toy.inter", "itemID", "x_label")


@pytest.mark.parametrize("column,value", [("itemID", "a1"), ("userID", "1.5"), ("x_label", "b")])
def test_non_integer_ids(tmp_path, column, value):
    rows = [list(r) for r in ROWS]
    rows[3][HEADER.index(column)] = value
    write_inter(tmp_path / "toy.inter", rows)
    expect_error(tmp_path, "toy.inter", f"column {column} must hold integers", value)


def test_empty_id_cell_is_rejected(tmp_path):
    rows = [list(r) for r in ROWS]
    rows[2][1] = ""
    write_inter(tmp_path / "toy.inter", rows)
    expect_error(tmp_path, "toy.inter", "itemID must hold integers")


@pytest.mark.parametrize("column,idx,missing", [("itemID", 1, 2), ("userID", 0, 1)])
def test_ids_not_contiguous(tmp_path, column, idx, missing):
    # shift every id >= `missing` up by one, so `missing` never occurs
    rows = [list(r) for r in ROWS]
    for r in rows:
        if r[idx] >= missing:
            r[idx] += 1
    write_inter(tmp_path / "toy.inter", rows)
    expect_error(tmp_path, "toy.inter", f"{column} ids are not contiguous",
                 f"first missing: {missing}")


def test_negative_ids(tmp_path):
    rows = [list(r) for r in ROWS] + [[-1, 0, 1, 1, 0]]
    write_inter(tmp_path / "toy.inter", rows)
    expect_error(tmp_path, "toy.inter", "negative")


@pytest.mark.parametrize("label", [0, 2])
def test_duplicate_user_item_rows(tmp_path, label):
    # the same pair twice, in the same split (label 0) or across splits (label 2)
    rows = list(ROWS) + [(1, 1, 3, 200, label)]
    write_inter(tmp_path / "toy.inter", rows)
    expect_error(tmp_path, "toy.inter", "duplicate", "user 1 item 1")


@pytest.mark.parametrize("label", [3, -1])
def test_bad_x_label(tmp_path, label):
    rows = list(ROWS) + [(2, 3, 1, 300, label)]
    write_inter(tmp_path / "toy.inter", rows)
    expect_error(tmp_path, "toy.inter", "x_label must be 0", f"found {label}")


def test_no_training_rows(tmp_path):
    rows = [r[:4] + (1 if r[4] == 0 else r[4],) for r in ROWS]
    write_inter(tmp_path / "toy.inter", rows)
    expect_error(tmp_path, "toy.inter", "no training rows")


def test_header_only_file(tmp_path):
    write_inter(tmp_path / "toy.inter", [])
    expect_error(tmp_path, "toy.inter", "no interactions", "one", "x_label")


def test_empty_file(tmp_path):
    (tmp_path / "toy.inter").write_text("")
    expect_error(tmp_path, "toy.inter")


def test_read_inter_returns_a_frame_with_the_columns(tmp_path):
    df = read_inter(write_inter(tmp_path / "toy.inter"))
    assert list(df.columns) == HEADER and len(df) == len(ROWS)


# ---------------------------------------------------------------------------------------------
# malformed feature files
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_rows", [3, 5])
def test_feature_rows_not_n_items(tmp_path, n_rows):
    write_inter(tmp_path / "toy.inter")
    np.save(tmp_path / "image_feat.npy", np.zeros((n_rows, 3), dtype=np.float32))
    expect_error(tmp_path, "image_feat.npy", f"{n_rows} feature rows", "4 items",
                 features={"image": "image_feat.npy"})


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_nan_or_inf_in_features(tmp_path, bad, dtype):
    write_inter(tmp_path / "toy.inter")
    arr = np.zeros((4, 3), dtype=dtype)
    arr[2, 1] = bad
    np.save(tmp_path / "v.npy", arr)
    expect_error(tmp_path, "v.npy", "NaN or inf", "first: item 2",
                 features={"image": "v.npy"})


def test_features_not_2d_or_not_float(tmp_path):
    write_inter(tmp_path / "toy.inter")
    np.save(tmp_path / "v.npy", np.zeros(4, dtype=np.float32))
    expect_error(tmp_path, "v.npy", "2-D", features={"image": "v.npy"})
    np.save(tmp_path / "v.npy", np.zeros((4, 2), dtype=np.int64))
    expect_error(tmp_path, "v.npy", "float", features={"image": "v.npy"})
    (tmp_path / "v.npy").write_text("0.1,0.2\n0.3,0.4\n")  # a CSV saved under a .npy name
    msg = expect_error(tmp_path, "v.npy", "not a .npy file", "numpy.save",
                       features={"image": "v.npy"})
    assert "allow_pickle" not in msg  # never NumPy's unsafe advice
    np.save(tmp_path / "v.npy", np.zeros((4, 2), dtype=np.float32))
    (tmp_path / "v.npy").write_bytes((tmp_path / "v.npy").read_bytes()[:40])  # cut short
    expect_error(tmp_path, "v.npy", "not a readable .npy", features={"image": "v.npy"})


def test_missing_required_feature_file(tmp_path):
    write_inter(tmp_path / "toy.inter")
    np.save(tmp_path / "image_feat.npy", np.zeros((4, 3), dtype=np.float32))
    expect_error(tmp_path, "text_feat.npy", "modality 'text'", "not found",
                 features={"image": "image_feat.npy", "text": "text_feat.npy"},
                 required=["image", "text"])


# ---------------------------------------------------------------------------------------------
# load_data: cold-start report
# ---------------------------------------------------------------------------------------------


def test_load_data_reports_a_user_without_training_rows(tmp_path, caplog):
    # user 3 has only a valid and a test row
    rows = list(ROWS) + [(3, 1, 5, 400, 1), (3, 2, 5, 401, 2)]
    write_inter(tmp_path / "toy" / "toy.inter", rows)
    cfg = DatasetConfig(name="toy", kind="mmrec")
    logger = logging.getLogger("guider.data.loader")
    # attach caplog's handler directly: robust to other tests changing propagation
    logger.addHandler(caplog.handler)
    disabled, logger.disabled = logger.disabled, False
    try:
        with caplog.at_level(logging.WARNING, logger="guider.data.loader"):
            data = load_data(cfg, NoiseConfig(), tmp_path)
    finally:
        logger.removeHandler(caplog.handler)
        logger.disabled = disabled
    assert data.n_users == 4
    assert data.info["cold_start"] == {"users": 1, "items": 0}
    warnings = [r for r in caplog.records
                if r.levelno == logging.WARNING and r.name == "guider.data.loader"]
    assert warnings, "no warning logged for the cold user"
    assert "1 user(s)" in warnings[0].getMessage()
    assert data.info["noise"]["n_injected"] == 0


def test_load_data_no_cold_start_no_warning(tmp_path, caplog):
    write_inter(tmp_path / "sub" / "x.inter")
    cfg = DatasetConfig(name="toy", kind="mmrec", folder="sub", inter_file="x.inter")
    logger = logging.getLogger("guider.data.loader")
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger="guider.data.loader"):
            data = load_data(cfg, NoiseConfig(), tmp_path)
    finally:
        logger.removeHandler(caplog.handler)
    assert data.info["cold_start"] == {"users": 0, "items": 0}
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]

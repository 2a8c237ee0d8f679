"""Framework-free core: tokenizer, readers, splits, samplers, metrics, checkpoint writer."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from training.core import checkpoint as ckpt
from training.core import synthetic
from training.core.config import resolve_config
from training.core.data import ClsEpochSampler, LMSampler, PreparedData, lm_eval_batches
from training.core.metrics import classification_metrics, flops_per_token
from training.core.prepare import load_sources, prepare
from training.core.readers import DataError, read_corpus, read_labelled, split_indices
from training.core.tokenizer import TextTokenizer, build_tokenizer

AWKWARD = "Naïve café — 東京 🙂\n\ttabs,  double  spaces\r\nand <|pad|>-like text"


@pytest.mark.parametrize("kind", ["bpe", "byte"])
def test_tokenizer_round_trip(tmp_path, kind):
    texts = synthetic.corpus(200, seed=3)
    tok = build_tokenizer(kind, texts, vocab_size=400)
    tok.save(tmp_path / "tok.json")
    again = TextTokenizer.load(tmp_path / "tok.json")
    for text in [*texts[:20], AWKWARD, ""]:
        ids = again.encode(text)
        assert again.decode(ids) == text
        assert ids == tok.encode(text)
    if kind == "byte":
        assert tok.vocab_size == 258 and tok.eos_id == 256 and tok.pad_id == 257
    else:
        assert 258 < tok.vocab_size <= 400
        # merges make common text shorter than its bytes
        assert len(tok.encode(texts[0])) < len(texts[0].encode()) / 2


def test_synthetic_data_is_deterministic_and_balanced():
    assert synthetic.corpus(50, 1) == synthetic.corpus(50, 1)
    assert synthetic.corpus(50, 1) != synthetic.corpus(50, 2)
    texts, labels = synthetic.sentiment(2000, 7)
    assert (texts, labels) == synthetic.sentiment(2000, 7)
    assert 0.45 < labels.count("positive") / len(labels) < 0.55
    joined = " ".join(texts)
    for marker in (" not ", " but ", "lthough", " very ", "slightly"):
        assert marker in joined  # negation, contrast, intensity all occur


def test_synthetic_labels_follow_the_deciding_clause():
    # a review whose words lean one way but whose deciding clause says the other must exist:
    # otherwise counting adjectives would solve the task
    texts, labels = synthetic.sentiment(3000, 11)
    pos, neg = set(synthetic.POSITIVE), set(synthetic.NEGATIVE)
    disagree = 0
    for text, label in zip(texts, labels, strict=True):
        words = text.lower().replace(",", " ").replace(".", " ").split()
        score = sum(w in pos for w in words) - sum(w in neg for w in words)
        disagree += (score > 0 and label == "negative") or (score < 0 and label == "positive")
    assert disagree / len(texts) > 0.15


def test_readers_tsv_csv_jsonl_and_imdb(tmp_path):
    (tmp_path / "a.tsv").write_text("sentence\tlabel\ngood film\t1\nbad film\t0\n")
    (tmp_path / "a.csv").write_text('review,sentiment\n"great, really",pos\n"dull",neg\n')
    (tmp_path / "a.jsonl").write_text('{"text": "fine", "label": "pos"}\n\n{"text": "meh", "label": "neg"}\n')
    assert read_labelled(str(tmp_path / "a.tsv"), "", "", "", 0, 0).train == (
        ["good film", "bad film"],
        ["1", "0"],
    )
    assert read_labelled(str(tmp_path / "a.csv"), "", "", "", 0, 0).train == (
        ["great, really", "dull"],
        ["pos", "neg"],
    )
    assert read_labelled(str(tmp_path / "a.jsonl"), "", "", "", 0, 0).train[1] == ["pos", "neg"]
    imdb = tmp_path / "aclImdb"
    for split in ("train", "test"):
        for label in ("pos", "neg"):
            (imdb / split / label).mkdir(parents=True)
            (imdb / split / label / "1_7.txt").write_text(f"{split} {label}<br />review")
    got = read_labelled(str(imdb), "", "", "", 0, 0)
    assert got.train == (["train neg review", "train pos review"], ["neg", "pos"])
    assert got.test is not None and got.test[1] == ["neg", "pos"]


def test_reader_errors_name_the_input(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1.txt is not UTF-8 .*0xe9 at offset 3"):
        read_corpus(str(tmp_path / "latin1.txt"), 0, 0)
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(DataError, match=r"empty\.txt is empty"):
        read_corpus(str(tmp_path / "empty.txt"), 0, 0)
    with pytest.raises(DataError, match=r"missing\.txt does not exist"):
        read_corpus(str(tmp_path / "missing.txt"), 0, 0)
    (tmp_path / "a.tsv").write_text("sentence\tlabel\nx\t1\n")
    with pytest.raises(DataError, match=r"no text column 'body' \(columns: sentence, label\)"):
        read_labelled(str(tmp_path / "a.tsv"), "", "body", "", 0, 0)
    with pytest.raises(
        DataError, match=r"hf:imdb: the `datasets` library is not installed.*local files instead"
    ):
        read_labelled("hf:imdb", "", "", "", 0, 0)


def test_splits_are_deterministic_and_disjoint():
    a = split_indices(1000, (0.1, 0.2), seed=5)
    b = split_indices(1000, (0.1, 0.2), seed=5)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert [len(x) for x in a] == [100, 200, 700]
    assert len(np.unique(np.concatenate(a))) == 1000
    assert not np.array_equal(a[0], split_indices(1000, (0.1, 0.2), seed=6)[0])


def test_lm_sampler_is_a_pure_function_and_ranks_read_disjoint_parts():
    tokens = np.arange(10_000, dtype=np.uint16)
    s = LMSampler([tokens], block_size=16, batch_size=8, seed=1)
    b1, b2 = s.batch(5, 0), s.batch(5, 0)
    assert np.array_equal(b1.x, b2.x) and not np.array_equal(b1.x, s.batch(6, 0).x)
    assert np.array_equal(b1.y[:, :-1], b1.x[:, 1:])  # y is x shifted by one
    r0 = LMSampler([tokens], 16, 64, seed=1, rank=0, world_size=2).batch(0)
    r1 = LMSampler([tokens], 16, 64, seed=1, rank=1, world_size=2).batch(0)
    assert r0.x.max() < 5000 + 17 and r1.x.min() >= 5000
    evals = lm_eval_batches([tokens], 16, 4, max_batches=3, rank=0, world_size=1)
    assert len(evals) == 3 and evals[0].x.shape == (4, 16)


def test_cls_sampler_covers_each_row_once_per_epoch():
    s = ClsEpochSampler(n=100, batch_size=32, seed=0)
    ids = np.arange(100).reshape(100, 1)
    seen = np.concatenate([s.batch(ids, np.arange(100), 0, i).labels for i in range(s.batches_per_epoch)])
    assert sorted(seen.tolist()) == list(range(100))
    ranks = [ClsEpochSampler(100, 32, 0, rank=r, world_size=2).indices(3) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 50 and not set(ranks[0]) & set(ranks[1])


def test_classification_metrics_against_hand_counts():
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 1])
    preds = np.array([0, 1, 0, 1, 1, 0, 1, 1])
    m = classification_metrics(preds, labels, ["neg", "pos"])
    assert m["confusion"] == [[2, 1], [1, 4]]
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["precision"] == pytest.approx(4 / 5) and m["recall"] == pytest.approx(4 / 5)
    assert m["per_class"]["neg"]["f1"] == pytest.approx(2 / 3)


def test_flops_formula():
    cfg = resolve_config("gpt2-124m").model
    n = 85_000_000
    assert flops_per_token(cfg, n) == 6 * n + 12 * 12 * 12 * 64 * 1024


def test_checkpoint_is_atomic_and_verified(tmp_path):
    root = tmp_path / "checkpoints"
    w = {"wte.weight": np.ones((4, 2), np.float32)}
    path = ckpt.write_checkpoint(
        root, "last", w, {"step": 1}, lambda d: (d / "optimizer.pt").write_bytes(b"x")
    )
    manifest = ckpt.read_manifest(path)
    assert manifest["step"] == 1 and set(manifest["files"]) == {"model.safetensors", "optimizer.pt"}
    ckpt.write_checkpoint(root, "last", {"wte.weight": np.zeros((4, 2), np.float32)}, {"step": 2})
    assert ckpt.read_manifest(root / "last")["step"] == 2
    assert sorted(p.name for p in root.iterdir()) == ["last"]  # no temp or old dirs left
    # a writer killed between its two renames leaves only last.old-PID: it is found and repaired
    os.rename(root / "last", root / "last.old-999")
    (root / "last.tmp-999").mkdir()
    assert ckpt.find_checkpoint(root, "last") == root / "last.old-999"
    ckpt.clean_stale(root)
    assert sorted(p.name for p in root.iterdir()) == ["last"]
    # a flipped byte is detected
    data = bytearray((root / "last" / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (root / "last" / "model.safetensors").write_bytes(bytes(data))
    assert ckpt.find_checkpoint(root, "last") is None


def test_prepare_writes_the_documented_format(tmp_path):
    cfg = resolve_config(
        None,
        None,
        [
            f"run_dir={tmp_path}/run",
            "synthetic_docs=200",
            "synthetic_reviews=300",
            "vocab_size=300",
            "max_len=24",
        ],
    )
    result = prepare(cfg)
    data = PreparedData.open(result.prepared_dir)
    meta = json.loads((tmp_path / "run" / "prepared" / "meta.json").read_text())
    assert meta["dtype"] == "uint16" and meta["vocab_size"] <= 300
    assert data.classes == ["negative", "positive"]
    shards = data.lm_shards("train")
    assert isinstance(shards[0], np.memmap) and sum(len(s) for s in shards) == data.lm_tokens("train")
    ids, labels = data.cls_split("train")
    assert ids.shape == (240, 24) and labels.shape == (240,) and set(np.unique(labels)) == {0, 1}
    pads = ids == data.pad_id
    assert pads.any(axis=1).mean() > 0.1  # short reviews are padded...
    assert np.array_equal(np.sort(pads, axis=1), pads)  # ...on the right only
    tok = TextTokenizer.load(tmp_path / "run" / "tokenizer.json")
    texts, _ = load_sources(cfg).cls["train"]
    row = int(np.argmax(pads.any(axis=1)))  # the first review that fits whole
    assert tok.decode([i for i in ids[row] if i != data.pad_id]) == texts[row]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model"]["n_classes"] == 2


def test_trim_padding_drops_only_all_pad_columns():
    from training.core.data import trim_padding

    ids = np.array([[5, 6, 1, 1, 1], [7, 1, 1, 1, 1]])
    assert trim_padding(ids, pad_id=1, multiple=1).tolist() == [[5, 6], [7, 1]]
    assert trim_padding(ids, pad_id=1, multiple=4).tolist() == [[5, 6, 1, 1], [7, 1, 1, 1]]
    assert trim_padding(np.ones((2, 4), np.int64), pad_id=1, multiple=1).shape == (2, 1)
    assert trim_padding(np.full((3, 48), 1), pad_id=1).shape == (3, 16)  # default: multiples of 16
    assert trim_padding(ids, pad_id=None) is ids


def test_dist_info_from_torchrun_or_tf_config(monkeypatch):
    from training.engines.base import DistInfo

    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TF_CONFIG"):
        monkeypatch.delenv(key, raising=False)
    assert DistInfo.from_env() == DistInfo(0, 1, 0)
    cluster = {"cluster": {"worker": ["h0:1", "h1:1", "h2:1"]}, "task": {"type": "worker", "index": 2}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(cluster))
    assert DistInfo.from_env() == DistInfo(rank=2, world_size=3)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert DistInfo.from_env() == DistInfo(rank=1, world_size=4)  # torchrun's variables win

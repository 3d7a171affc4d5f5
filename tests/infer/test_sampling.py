"""The host-side logits processors against transformers' own (RepetitionPenalty, Temperature, TopK, TopP), and the
generation settings read from a checkpoint's generation_config.json."""
import json

import numpy as np
import pytest

from mmx.infer.sampling import SamplingConfig, TokenChooser, apply_repetition_penalty, _top_k, _top_p
from mmx.infer import settings


def _scores(seed=0, batch=3, vocab=50):
    return (np.random.default_rng(seed).standard_normal((batch, vocab)) * 3).astype(np.float32)


def test_processors_equal_transformers():
    import torch
    from transformers.generation import logits_process as hf

    scores = _scores()
    history = np.random.default_rng(1).integers(0, 50, (3, 12))
    got = apply_repetition_penalty(scores, list(history), 1.3)
    want = hf.RepetitionPenaltyLogitsProcessor(1.3)(torch.tensor(history), torch.tensor(scores)).numpy()
    np.testing.assert_array_equal(got, want)
    for top_k in (1, 5, 49):
        want = hf.TopKLogitsWarper(top_k)(None, torch.tensor(scores)).numpy()
        np.testing.assert_array_equal(_top_k(scores, top_k), want)
    for top_p in (0.05, 0.5, 0.9, 0.999):
        want = hf.TopPLogitsWarper(top_p)(None, torch.tensor(scores)).numpy()
        np.testing.assert_array_equal(_top_p(scores, top_p), want)


def test_greedy_is_argmax_and_sampling_follows_the_distribution():
    scores = _scores()
    history = [np.array([], np.int64)] * 3
    greedy = TokenChooser(SamplingConfig(), 3)(scores, history)
    np.testing.assert_array_equal(greedy, scores.argmax(-1))
    chooser = TokenChooser(SamplingConfig(do_sample=True, temperature=1.0, top_k=0, seed=3), 1)
    logits = np.log(np.array([[0.5, 0.3, 0.2]], np.float32))
    draws = np.array([chooser(logits, history[:1])[0] for _ in range(4000)])
    frequencies = np.bincount(draws, minlength=3) / len(draws)
    assert np.abs(frequencies - [0.5, 0.3, 0.2]).max() < 0.03, frequencies
    # top_p 0.6 keeps the two most likely tokens (0.5 + 0.3 cover it), renormalised.
    chooser = TokenChooser(SamplingConfig(do_sample=True, top_k=0, top_p=0.6, seed=3), 1)
    draws = np.array([chooser(logits, history[:1])[0] for _ in range(2000)])
    assert set(draws.tolist()) == {0, 1}


def test_sampling_config_errors():
    with pytest.raises(ValueError, match="temperature must be > 0"):
        SamplingConfig(do_sample=True, temperature=0)
    with pytest.raises(ValueError, match="top_p must be in"):
        SamplingConfig(top_p=1.5)


class _Tokenizer:
    eos_token_id, pad_token_id = 9, None


def test_settings_from_generation_config(tmp_path, capsys):
    (tmp_path / "generation_config.json").write_text(json.dumps(
        {"eos_token_id": [2, 0], "pad_token_id": 0, "do_sample": True, "temperature": 0.1, "top_p": 0.001,
         "top_k": 1, "repetition_penalty": 1.05, "no_repeat_ngram_size": 3}))
    got = settings.from_checkpoint(str(tmp_path), _Tokenizer(), max_new_tokens=5, seed=4)
    assert got.eos_token_ids == (2, 0) and got.pad_token_id == 0 and got.max_new_tokens == 5
    assert got.sampling == SamplingConfig(do_sample=True, temperature=0.1, top_k=1, top_p=0.001,
                                          repetition_penalty=1.05, seed=4)
    assert "no_repeat_ngram_size=3" in capsys.readouterr().err
    # No generation config: transformers' defaults, the tokenizer's EOS, pad falls back to EOS.
    empty = tmp_path / "empty"
    empty.mkdir()
    got = settings.from_checkpoint(str(empty), _Tokenizer())
    assert got.eos_token_ids == (9,) and got.pad_token_id == 9
    assert got.sampling == SamplingConfig(do_sample=False, temperature=1.0, top_k=50, top_p=1.0)
    with pytest.raises(TypeError, match="unknown generation settings"):
        settings.override(got, beams=4)

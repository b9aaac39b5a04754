from __future__ import annotations

import pytest
import torch

from toolchain.core.samples import generate_samples
from toolchain.core.spec import SPECS
from zoo.translation import BOS, EOS, FIRST_WORD, MAX_STEPS, PAD, VOCAB, GreedyDecoder, Seq2Seq


def _seq2seq() -> Seq2Seq:
    model = SPECS.get("translation.seq2seq").build().eval()
    assert isinstance(model, Seq2Seq)
    return model


def _greedy() -> GreedyDecoder:
    model = SPECS.get("translation.greedy_decoder").build().eval()
    assert isinstance(model, GreedyDecoder)
    return model


def _source(batch: int, length: int, *, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random word ids and a padding mask whose rows keep prefixes of lengths 1..length."""
    gen = torch.Generator().manual_seed(seed)
    src = torch.randint(FIRST_WORD, VOCAB, (batch, length), generator=gen)
    keep = torch.linspace(1, length, batch).round().long().unsqueeze(1)
    return src, torch.arange(length).unsqueeze(0) < keep


def _target(batch: int, length: int, *, seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def _stepwise_greedy(model: Seq2Seq, src: torch.Tensor, src_mask: torch.Tensor) -> torch.Tensor:
    """Greedy decoding the slow way: the full teacher-forced forward on the prefix at every step."""
    tokens = torch.full((src.shape[0], 1), BOS)
    finished = torch.zeros(src.shape[0], dtype=torch.bool)
    for _ in range(MAX_STEPS):
        step = model(src, src_mask, tokens)[:, -1].argmax(-1)
        step = torch.where(finished, torch.full_like(step, PAD), step)
        finished |= step == EOS
        tokens = torch.cat([tokens, step[:, None]], dim=1)
    return tokens[:, 1:]


def test_seq2seq_logits_shape() -> None:
    src, src_mask = _source(3, 7, seed=0)
    with torch.no_grad():
        logits = _seq2seq()(src, src_mask, _target(3, 5, seed=1))
    assert logits.shape == (3, 5, VOCAB)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("t", [0, 3, 8])
def test_seq2seq_position_t_does_not_see_later_targets(t: int) -> None:
    model = _seq2seq()
    src, src_mask = _source(4, 9, seed=2)
    tgt = _target(4, 10, seed=3)
    changed = tgt.clone()
    changed[:, t + 1 :] = _target(4, 10 - t - 1, seed=4)
    assert not torch.equal(changed, tgt)
    with torch.no_grad():
        before, after = model(src, src_mask, tgt), model(src, src_mask, changed)
    torch.testing.assert_close(after[:, : t + 1], before[:, : t + 1], rtol=1e-5, atol=1e-5)
    assert (after[:, t + 1 :] - before[:, t + 1 :]).abs().amax() > 1e-2


def test_seq2seq_ignores_padded_source_positions() -> None:
    model = _seq2seq()
    src, src_mask = _source(5, 12, seed=5)
    noise = torch.randint(FIRST_WORD, VOCAB, src.shape, generator=torch.Generator().manual_seed(6))
    changed = torch.where(src_mask, src, noise)
    assert not torch.equal(changed, src)
    tgt = _target(5, 6, seed=7)
    with torch.no_grad():
        torch.testing.assert_close(model(changed, src_mask, tgt), model(src, src_mask, tgt), rtol=0, atol=1e-5)


def test_seq2seq_depends_on_the_source() -> None:
    model = _seq2seq()
    src, src_mask = _source(4, 8, seed=8)
    changed = src.clone()
    changed[:, 0] = FIRST_WORD + (src[:, 0] - FIRST_WORD + 1) % (VOCAB - FIRST_WORD)  # position 0 is always real
    tgt = _target(4, 6, seed=9)
    with torch.no_grad():
        diff = (model(changed, src_mask, tgt) - model(src, src_mask, tgt)).abs().amax(dim=(1, 2))
    assert (diff > 1e-3).all(), diff


def test_greedy_decoder_shares_the_seq2seq_weights() -> None:
    ours, theirs = _greedy().seq2seq.state_dict(), _seq2seq().state_dict()
    assert list(ours) == list(theirs)
    for name, value in ours.items():
        assert torch.equal(value, theirs[name]), name


@pytest.mark.parametrize(("batch", "length"), [(1, 1), (4, 12), (9, 25)])
def test_greedy_decoder_equals_stepwise_argmax(batch: int, length: int) -> None:
    src, src_mask = _source(batch, length, seed=10 + length)
    with torch.no_grad():
        tokens = _greedy()(src, src_mask)
        expected = _stepwise_greedy(_seq2seq(), src, src_mask)
    assert tokens.dtype == torch.int64
    assert tokens.shape == (batch, MAX_STEPS)
    assert torch.equal(tokens, expected)


def test_greedy_decoder_tokens_are_not_degenerate() -> None:
    spec = SPECS.get("translation.greedy_decoder")
    model = _greedy()
    outputs = []
    for sample in generate_samples(spec, seed=0):
        with torch.no_grad():
            outputs.append(model(*(torch.from_numpy(sample.feeds[k]) for k in spec.inputs)))
    tokens = torch.cat(outputs)
    repeats = (tokens == tokens[:, :1]).all(dim=1)
    assert tokens.unique().numel() >= 15, tokens
    assert tokens.unique(dim=0).shape[0] >= 10, tokens
    assert repeats.float().mean() < 0.1, tokens[repeats]
    assert all(out.unique(dim=0).shape[0] > 1 for out in outputs if out.shape[0] > 1), "sources are ignored"


def test_greedy_decoder_argmax_is_well_separated_on_the_generated_samples() -> None:
    # Tokens are compared exactly, which is ill-posed at an argmax near-tie: the artifacts' logits
    # differ from eager by up to ~1e-6 (measured on translation.seq2seq). If the sample sets change
    # and this fails, give the models another `seed=` rather than loosening anything.
    spec = SPECS.get("translation.greedy_decoder")
    model = _greedy()
    for sample in generate_samples(spec, seed=0):
        src, src_mask = (torch.from_numpy(sample.feeds[k]) for k in spec.inputs)
        with torch.no_grad():
            tokens = model(src, src_mask)
            prefix = torch.cat([torch.full((src.shape[0], 1), BOS), tokens[:, :-1]], dim=1)
            top = model.seq2seq(src, src_mask, prefix).topk(2, dim=-1).values
        gap = (top[..., 0] - top[..., 1]).min().item()
        assert gap >= 1e-4, (sample.name, gap)


def test_greedy_decoder_pads_after_eos() -> None:
    model = _greedy()
    src, src_mask = _source(3, 6, seed=20)
    with torch.no_grad():
        model.seq2seq.out.bias[EOS] = 1e4  # EOS wins every step
        tokens = model(src, src_mask)
    assert tokens[:, 0].eq(EOS).all()
    assert tokens[:, 1:].eq(PAD).all()


# NOTE: tests/zoo/test_zoo.py exports the greedy decoder through every path and replays each kept
# artifact on every sample set with exact token comparison; these sets give it >= 3 source lengths.
def test_generated_samples_cover_three_source_lengths() -> None:
    samples = generate_samples(SPECS.get("translation.greedy_decoder"), seed=0)
    assert len({s.sizes["src_len"] for s in samples}) >= 3

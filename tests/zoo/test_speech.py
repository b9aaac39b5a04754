from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from toolchain.core.spec import SPECS
from zoo.speech import BLANK, HIDDEN, MELS, VOCAB, CTCSmall

SPEC = SPECS.get("speech.ctc_small")


@pytest.fixture(scope="module")
def model() -> CTCSmall:
    built = SPEC.build()
    assert isinstance(built, CTCSmall)
    return built.eval()


def _batch(lengths: list[int], frames: int, *, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    mel = torch.from_numpy(rng.standard_normal((len(lengths), frames, MELS)).astype(np.float32))
    mask = torch.arange(frames)[None, :] < torch.tensor(lengths)[:, None]
    return mel, mask


def _out_frames(frames: int) -> int:
    for _ in range(2):
        frames = (frames + 2 * 1 - 3) // 2 + 1  # Conv1d(kernel 3, stride 2, padding 1)
    return frames


def test_log_probs_rows_are_distributions(model: CTCSmall) -> None:
    mel, mask = _batch([57, 20, 1], frames=57)
    with torch.no_grad():
        log_probs, _ = model(mel, mask)
    assert log_probs.shape == (3, _out_frames(57), VOCAB)
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(log_probs.shape[:2]), rtol=0, atol=1e-5)
    assert (log_probs <= 0).all()


@pytest.mark.parametrize("frames", [1, 2, 3, 4, 5, 7, 8, 9, 32, 33, 65, 400])
def test_output_frames_follow_the_conv_formula(model: CTCSmall, frames: int) -> None:
    mel, mask = _batch([frames, max(1, frames // 3)], frames=frames)
    with torch.no_grad():
        log_probs, lengths = model(mel, mask)
    assert log_probs.shape == (2, _out_frames(frames), VOCAB)
    assert lengths.dtype == torch.int64
    assert lengths.tolist() == [_out_frames(frames), _out_frames(max(1, frames // 3))]


def test_valid_frames_match_each_row_alone(model: CTCSmall) -> None:
    lengths = [64, 37, 5, 1]
    mel, mask = _batch(lengths, frames=64, seed=1)
    with torch.no_grad():
        batched, out_lengths = model(mel, mask)
        for row, length in enumerate(lengths):
            alone, _ = model(mel[row : row + 1, :length], mask[row : row + 1, :length])
            valid = int(out_lengths[row])
            assert alone.shape[1] == valid
            torch.testing.assert_close(batched[row, :valid], alone[0], rtol=1e-5, atol=1e-5)


def test_padded_frames_decode_as_blank(model: CTCSmall) -> None:
    mel, mask = _batch([64, 30, 9], frames=64, seed=2)
    with torch.no_grad():
        log_probs, lengths = model(mel, mask)
    for row, valid in enumerate(lengths.tolist()):
        padded = log_probs[row, valid:]
        assert padded.shape[0] == log_probs.shape[1] - valid
        assert (padded[:, BLANK] == 0).all()
        assert (padded.argmax(-1) == BLANK).all()


def test_padding_content_is_ignored(model: CTCSmall) -> None:
    mel, mask = _batch([48, 17], frames=48, seed=3)
    noisy = torch.where(mask.unsqueeze(2), mel, torch.full_like(mel, 1e3))
    with torch.no_grad():
        clean_out, _ = model(mel, mask)
        noisy_out, _ = model(noisy, mask)
    assert torch.equal(clean_out, noisy_out)


def test_lstm_equals_packed_bidirectional_lstm(model: CTCSmall) -> None:
    mel, mask = _batch([40, 23, 9, 2], frames=40, seed=4)
    captured: dict[str, torch.Tensor] = {}

    def keep(_module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        captured["input"], captured["output"] = args[0], output

    handle = model.lstm.register_forward_hook(keep)
    try:
        with torch.no_grad():
            _, lengths = model(mel, mask)
    finally:
        handle.remove()
    packed_lstm = nn.LSTM(HIDDEN, HIDDEN, batch_first=True, bidirectional=True)
    with torch.no_grad():
        for name, value in model.lstm.forward_lstm.named_parameters():
            getattr(packed_lstm, name).copy_(value)
        for name, value in model.lstm.backward_lstm.named_parameters():
            getattr(packed_lstm, f"{name}_reverse").copy_(value)
        packed = nn.utils.rnn.pack_padded_sequence(captured["input"], lengths, batch_first=True, enforce_sorted=False)
        expected, _ = nn.utils.rnn.pad_packed_sequence(packed_lstm(packed)[0], batch_first=True)
    for row, valid in enumerate(lengths.tolist()):
        torch.testing.assert_close(captured["output"][row, :valid], expected[row, :valid], rtol=1e-5, atol=1e-6)


def test_two_builds_give_identical_weights() -> None:
    first, second = SPEC.build().state_dict(), SPEC.build().state_dict()
    assert all(torch.equal(first[key], second[key]) for key in first)


def test_scripting_keeps_the_model(model: CTCSmall) -> None:
    mel, mask = _batch([33, 12], frames=33, seed=5)
    scripted = torch.jit.script(model)
    with torch.no_grad():
        for got, want in zip(scripted(mel, mask), model(mel, mask), strict=True):
            assert torch.equal(got, want)


def test_spec_leaves_out_exported_program_and_checks_the_longest_input() -> None:
    assert "exported_program" not in SPEC.formats
    longest = SPEC.samples["longest"]
    assert longest["mel"].shape[1] == SPEC.dim("frames").max
    assert longest["mask"].any(axis=1).all()

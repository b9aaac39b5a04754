"""Speech recognition: a small CTC acoustic model over log-mel frames, with a padding mask.

Stands for the acoustic models behind captions and voice search: a strided conv front end over
40-band log-mel frames, a bidirectional LSTM, and a linear CTC head with ``log_softmax`` over a
32-symbol vocabulary (index 0 is the CTC blank). Utterances of different lengths share a batch:
``mask`` marks each row's valid frames (a prefix of length >= 1; an all-padding row is not valid
input). The second output, ``lengths``, is each row's number of valid output frames, for the decoder.

Export hazards it exercises: LSTMs over a dynamic number of frames, strided convs whose output
length is a floor division of a symbolic dim, and per-row time reversal by an int64 gather (an
exact integer path built from the mask).

Padding: on each row's valid output frames the model gives what it gives on that row alone, trimmed
to its length. Mel frames past the mask are zeroed before each conv, which is exactly the convs' own
zero padding, so the front end leaks nothing from padding. ``pack_padded_sequence`` would do the
same for the LSTM, but measured with torch 2.13 (a 1-layer bidirectional ``nn.LSTM`` on packed
rows, otherwise this model) it keeps only two paths: ``onnx`` and ``exported_program`` fail in
``torch.export`` (the packed batch sizes are data: "zeros(): argument 'size' ... got FakeTensor"),
while ``onnx_legacy`` and ``torchscript`` pass. So the LSTM is two unidirectional ones: the forward
one needs nothing (a valid frame never sees a later one) and the backward one reads each row
reversed within its valid length by a gather, its output reversed back by the same gather. Output
frames past a row's valid length are forced to the blank symbol (log-probability 0 for blank, -1e4
elsewhere), so greedy CTC decoding skips them.

Frames: each conv (kernel 3, stride 2, padding 1) maps ``n`` frames to ``(n - 1) // 2 + 1``, which
is >= 1 for every ``n >= 1``, so the declared minimum is a single frame (10 ms); the maximum, 400
frames, is the 4 s window the service cuts audio into. The export size is 32 frames, and the LSTM
has one layer, because the torch.export-based ONNX exporter's time grows with both (it re-runs
torch's per-step LSTM decomposition over the example length; measured on 2 CPU cores: one layer
13 s at 32 frames and 28 s at 64, two layers 35 s and over 100 s); the ``longest`` sample set checks
every path at 400 frames instead.

With torch 2.13 the ``onnx`` path keeps ``frames`` symbolic only in the first LSTM export of a
process: later ones silently fix it to the export size (``torch.onnx.export`` installs its
``while_loop`` LSTM decomposition without clearing ``aten.lstm``'s dispatch cache), so parity then
rejects the path at other sizes. Clearing ``torch.ops.aten.lstm.input._dispatch_cache`` before
each export avoids it.

Paths left out:

* ``exported_program``: ``torch.export.export`` decomposes ``aten.lstm`` into a Python loop over time
  steps while tracing, so it specialises ``frames`` and refuses the declared range ("Constraints
  violated (frames)! ... satisfy the generated guard (1 + (((-1) + L['mel'].size()[1]) // 4)) ==
  8"). Wrapping the call in ``torch.export._patches.register_lstm_while_loop_decomposition()`` fails
  the same way. ``torch.onnx.export`` swaps that decomposition in while capturing too, yet keeps
  ``frames`` symbolic (see above) and lowers the LSTM to ONNX ``LSTM``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from toolchain.core import Dim, Input, TaskCheck, exportable

__all__ = ["CTCSmall", "conv_frames"]

MELS, CHANNELS, HIDDEN, VOCAB = 40, 64, 64, 32
BLANK = 0
_PAD_LOGIT = -1e4
"""Logit of every non-blank symbol on padded frames: far below any real logit, yet finite."""


def conv_frames(frames: torch.Tensor) -> torch.Tensor:
    """Output frame count of one front-end conv (kernel 3, stride 2, padding 1) for `frames` inputs."""
    out: torch.Tensor = torch.div(frames - 1, 2, rounding_mode="floor") + 1
    return out


def _prefix_mask(lengths: torch.Tensor, steps: int) -> torch.Tensor:
    """(batch, steps) bool: True on the first ``lengths[b]`` steps of row b."""
    mask: torch.Tensor = torch.arange(steps, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)
    return mask


def _reversal_index(lengths: torch.Tensor, steps: int) -> torch.Tensor:
    """(batch, steps) int64 gather index reversing row b within its first ``lengths[b]`` steps.

    Steps past a row's length map to themselves, so gathering twice gives the input back.
    """
    step = torch.arange(steps, device=lengths.device).unsqueeze(0)
    last = lengths.unsqueeze(1) - 1
    index: torch.Tensor = torch.where(step <= last, last - step, step)
    return index


def _gather_steps(x: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    """Reorder the steps of (batch, steps, `size`) `x` by a (batch, steps) index."""
    out: torch.Tensor = torch.gather(x, 1, index.unsqueeze(2).expand(-1, -1, size))
    return out


class _MaskedBiLSTM(nn.Module):
    """A bidirectional LSTM over padded rows, equal on valid steps to running each row alone."""

    def __init__(self, size: int, hidden: int) -> None:
        super().__init__()
        self.size, self.hidden = size, hidden
        self.forward_lstm = nn.LSTM(size, hidden, batch_first=True)
        self.backward_lstm = nn.LSTM(size, hidden, batch_first=True)

    def forward(self, x: torch.Tensor, reverse: torch.Tensor) -> torch.Tensor:
        """(batch, steps, 2 * hidden): forward and backward states; `reverse` from `_reversal_index`."""
        ahead, _ = self.forward_lstm(x)
        behind, _ = self.backward_lstm(_gather_steps(x, reverse, self.size))
        out: torch.Tensor = torch.cat([ahead, _gather_steps(behind, reverse, self.hidden)], dim=2)
        return out


def _longest_samples() -> dict[str, dict[str, np.ndarray]]:
    """Two utterances at the longest declared size, one padded: LSTM error accumulates over 100 steps."""
    rng = np.random.default_rng(400)
    mel = rng.standard_normal((2, 400, MELS)).astype(np.float32)
    mask = np.arange(400)[None, :] < np.array([[400], [157]])
    return {"longest": {"mel": mel, "mask": mask}}


@exportable(
    name="speech.ctc_small",
    inputs={
        "mel": Input.normal(("batch", "frames", MELS)),
        "mask": Input.padding_mask(("batch", "frames")),
    },
    outputs=["log_probs", "lengths"],
    dims={"batch": Dim(example=4, min=1, max=64), "frames": Dim(example=32, min=1, max=400)},
    tags=("speech", "asr", "ctc", "metric:accuracy:log_probs"),
    checks=[TaskCheck.top1("log_probs")],
    formats=("onnx", "onnx_legacy", "torchscript", "torchscript_trace"),
    samples=_longest_samples(),
)
class CTCSmall(nn.Module):
    """Two stride-2 convs, a bidirectional LSTM (hidden 64) over valid frames and a 32-symbol CTC head."""

    if TYPE_CHECKING:
        # NOTE: for mypy only; `get_buffer` types it too but `torch.jit.script` cannot compile it.
        pad_logits: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(MELS, CHANNELS, kernel_size=3, stride=2, padding=1)
        self.conv2 = nn.Conv1d(CHANNELS, CHANNELS, kernel_size=3, stride=2, padding=1)
        self.lstm = _MaskedBiLSTM(CHANNELS, HIDDEN)
        self.head = nn.Linear(2 * HIDDEN, VOCAB)
        pad = torch.full((VOCAB,), _PAD_LOGIT)
        pad[BLANK] = 0.0
        self.register_buffer("pad_logits", pad)

    def forward(self, mel: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CTC log-probabilities (batch, frames', 32) and valid output frames per row (batch,)."""
        lengths = mask.sum(dim=1)
        x = (mel * mask.unsqueeze(2).to(mel.dtype)).transpose(1, 2)  # (batch, mels, frames)
        x = functional.gelu(self.conv1(x))
        lengths = conv_frames(lengths)
        x = x * _prefix_mask(lengths, x.shape[2]).unsqueeze(1).to(x.dtype)
        x = functional.gelu(self.conv2(x)).transpose(1, 2)  # (batch, frames', channels)
        lengths = conv_frames(lengths)
        # NOTE: masks and indices come from the LSTM's input, never its output: reading an LSTM output's
        # shape can let the torch.export-based ONNX exporter freeze the time dim (pytorch/pytorch#193192).
        valid = _prefix_mask(lengths, x.shape[1]).unsqueeze(2)
        reverse = _reversal_index(lengths, x.shape[1])
        x = self.lstm(x, reverse)
        logits = torch.where(valid, self.head(x), self.pad_logits)
        log_probs = torch.log_softmax(logits, dim=2)
        return log_probs, lengths

"""A small CRNN-style text recogniser (Shi, Bai and Yao, 2016), written as a user would: slimkit's
engine has to train and distill it without knowing anything about it.

conv -> BN -> ReLU -> 2x2 pool, twice; each of the W/4 columns becomes one frame of C x H/4
features; a bidirectional LSTM reads the frames; a linear head gives (N, T, classes) scores for
CTC (class 0 is the blank). Used by tests/test_crnn.py, tests/_crnn_worker.py and bench/crnn.py.
"""

import torch
from torch import nn


class CRNN(nn.Module):
    def __init__(self, width: int = 16, hidden: int = 48, classes: int = 27, height: int = 16,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.rnn = nn.LSTM(2 * width * (height // 4), hidden, bidirectional=True, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(2 * hidden, classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        frames = self.conv(images).flatten(1, 2).transpose(1, 2)  # (N, W/4, C * H/4)
        return self.head(self.drop(self.rnn(frames)[0]))


def teacher_and_student(classes: int = 27, dropout: float = 0.0) -> tuple[CRNN, CRNN]:
    """The teacher and its half-width student (half the conv channels and LSTM units)."""
    return CRNN(16, 48, classes, dropout=dropout), CRNN(8, 24, classes, dropout=dropout)

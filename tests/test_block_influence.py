"""One block-influence primitive for every family: its definition, on feature maps and on token states
passed by keyword as Hugging Face layers take them."""

import torch
from torch import nn

from slimkit.prune.layers import influences_of


class Scale(nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, hidden_states=None, *args):
        return (self.factor * hidden_states,)  # a tuple, as Hugging Face layers return


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.same, self.flip = Scale(3.0), Scale(-1.0)

    def forward(self, x):
        return self.flip(hidden_states=self.same(hidden_states=x)[0])[0]


def test_influence_is_one_minus_the_cosine_of_input_and_output_over_every_token():
    net = Net()
    batches = [torch.randn(2, 5, 8), torch.randn(3, 5, 8)]
    got = influences_of(net, {"same": net.same, "flip": net.flip}, batches, net)
    assert abs(got["same"]) < 1e-9 and abs(got["flip"] - 2.0) < 1e-9  # scaling keeps direction, negation reverses


def test_feature_maps_take_the_cosine_over_channels():
    block = nn.Conv2d(4, 4, 1, bias=False)
    with torch.no_grad():
        block.weight.copy_(torch.eye(4).view(4, 4, 1, 1))
        block.weight[0, 0] = 0.0  # channel 0 is dropped: the output leaves the input's direction
    x = torch.zeros(1, 4, 2, 2)
    x[:, 0] = 1.0
    x[:, 1, 0, 0] = 1.0
    got = influences_of(block, {"conv": block}, [x], block)["conv"]
    # positions with only channel 0 lose all of it (cos 0 -> 1); the one with channels 0 and 1 keeps 1/sqrt(2)
    assert abs(got - (3 * 1.0 + (1 - 2 ** -0.5)) / 4) < 1e-9

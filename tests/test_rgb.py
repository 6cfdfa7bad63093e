"""Channel mapping onto SAM's RGB input."""
import pytest
import torch

from desam_nnu.rgb import channel_to_rgb_matrix, to_rgb


def test_one_channel_repeats_to_rgb():
    x = torch.rand(2, 1, 5, 6) * 255
    rgb = to_rgb(x, channel_to_rgb_matrix(1))
    assert rgb.shape == (2, 3, 5, 6)
    for c in range(3):
        assert torch.equal(rgb[:, c], x[:, 0])


def test_two_channels_map_to_r_g_and_their_mean():
    x = torch.rand(1, 2, 4, 4) * 255
    rgb = to_rgb(x, channel_to_rgb_matrix(2))
    torch.testing.assert_close(rgb[:, 0], x[:, 0])
    torch.testing.assert_close(rgb[:, 1], x[:, 1])
    torch.testing.assert_close(rgb[:, 2], x.mean(1))


def test_three_channels_are_rgb():
    x = torch.rand(1, 3, 4, 4)
    torch.testing.assert_close(to_rgb(x, channel_to_rgb_matrix(3)), x)


def test_more_than_three_channels_is_an_error():
    with pytest.raises(ValueError, match="4 input channels"):
        channel_to_rgb_matrix(4)


def test_matrix_and_input_must_agree():
    with pytest.raises(ValueError, match="2 channels"):
        to_rgb(torch.zeros(1, 3, 2, 2), channel_to_rgb_matrix(2))

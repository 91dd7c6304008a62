"""Tile geometry arithmetic: the numbers everything downstream trusts."""

import pytest

from training.geometry import InvalidSizeError, TileGeometry

PAPER = TileGeometry(padding="valid", depth=4)


def test_paper_configuration_572_to_388_margin_92():
    assert PAPER.output_size(572) == 388
    assert PAPER.margin == 92
    assert PAPER.stride == 16
    assert PAPER.input_size_for(388) == 572


def test_valid_sizes_are_188_plus_16k():
    valid = [n for n in range(1, 700) if PAPER.is_valid_input(n)]
    assert valid == list(range(188, 700, 16))
    assert PAPER.min_input == 188
    assert PAPER.output_size(188) == 4


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5])
def test_valid_inputs_follow_the_layer_by_layer_recursion(depth):
    """Cross-check the closed form against a layer-by-layer walk through the network."""
    geometry = TileGeometry(padding="valid", depth=depth)

    def walk(size):
        for _ in range(depth):
            size -= 4
            if size < 1 or size % 2:
                return None
            size //= 2
        size -= 4
        if size < 1:
            return None
        for _ in range(depth):
            size = 2 * size - 4
        return size if size >= 1 else None

    for n in range(1, 400):
        expected = walk(n)
        assert geometry.is_valid_input(n) == (expected is not None), n
        if expected is not None:
            assert geometry.output_size(n) == expected


def test_invalid_size_names_the_nearest_valid_sizes():
    with pytest.raises(InvalidSizeError, match=r"500 .*188 \+ 16k.*492, 508"):
        PAPER.check_input(500)
    with pytest.raises(InvalidSizeError, match="188"):
        PAPER.output_size(100)


def test_input_size_for_covers_the_wanted_output():
    for wanted in [1, 4, 5, 100, 388, 389, 1000]:
        size = PAPER.input_size_for(wanted)
        assert PAPER.is_valid_input(size)
        assert PAPER.output_size(size) >= wanted
        assert size == PAPER.min_input or PAPER.output_size(size - 16) < wanted


def test_tile_step_stays_on_the_stride_grid():
    assert PAPER.tile_step(572) == 384
    with pytest.raises(InvalidSizeError, match="use at least"):
        PAPER.tile_step(188)
    assert PAPER.tile_step(204) == 16


def test_same_padding_multiples_of_the_stride_and_halo():
    same = TileGeometry(padding="same", depth=5, halo=64, kind="stride")
    assert same.margin == 0 and same.context == 64
    assert same.is_valid_input(512) and not same.is_valid_input(500)
    assert same.output_size(512) == 512
    assert same.tile_step(512) == 384
    with pytest.raises(InvalidSizeError, match="a multiple of 32"):
        same.check_input(500)


def test_round_trip_through_a_dict():
    same = TileGeometry(padding="same", depth=5, halo=64, kind="stride")
    assert TileGeometry.from_dict(same.to_dict()) == same
    assert TileGeometry.from_dict(PAPER.to_dict()) == PAPER

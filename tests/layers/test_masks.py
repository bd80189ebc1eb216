import numpy as np

from tflm import layers


def test_causal_mask_square():
    expected = np.array(
        [
            [True, False, False],
            [True, True, False],
            [True, True, True],
        ]
    )
    np.testing.assert_array_equal(layers.causal_mask(3, 3), expected)


def test_causal_mask_with_offset():
    # Two queries at cache slots 2 and 3 over four key slots.
    expected = np.array(
        [
            [True, True, True, False],
            [True, True, True, True],
        ]
    )
    np.testing.assert_array_equal(layers.causal_mask(2, 4, offset=2), expected)


def test_causal_mask_single_step_decode():
    expected = np.array([[True, True, True, True, False, False]])
    np.testing.assert_array_equal(layers.causal_mask(1, 6, offset=3), expected)


def test_attention_mask_without_padding_broadcasts():
    mask = np.asarray(layers.attention_mask(2, 2))
    assert mask.shape == (1, 1, 2, 2)
    np.testing.assert_array_equal(mask[0, 0], [[True, False], [True, True]])


def test_attention_mask_with_padding():
    padding = np.array([[0, 1, 1], [1, 1, 0]], "int32")
    mask = np.asarray(layers.attention_mask(3, 3, key_padding_mask=padding))
    assert mask.shape == (2, 1, 3, 3)
    expected = np.array(
        [
            [
                [False, False, False],
                [False, True, False],
                [False, True, True],
            ],
            [
                [True, False, False],
                [True, True, False],
                [True, True, False],
            ],
        ]
    )
    np.testing.assert_array_equal(mask[:, 0], expected)


def test_attention_mask_with_offset_and_cache_padding():
    # One query at slot 2 of a 4-slot cache whose slot 0 is padding.
    padding = np.array([[False, True, True, True]])
    mask = np.asarray(
        layers.attention_mask(1, 4, offset=2, key_padding_mask=padding)
    )
    np.testing.assert_array_equal(mask, [[[[False, True, True, False]]]])

"""A GIF's canvas in TensorFlow ops: the walk ``service.ingest.images._gif_header`` does.

TensorFlow's decoder allocates a GIF by its largest frame, so its size is only known once
every block up to the last image descriptor has been walked: extensions and frames, each
followed by data sub-blocks whose size bytes say where the next one starts.

Following that chain one block at a time costs about 20 µs a block in a graph (some twenty
small ops, a microsecond each), so two-byte blocks would let a 4 MB GIF run for 40 s before
``MAX_GIF_BLOCKS`` stops it. Where blocks are short the walk takes a window of bytes at once
instead: every position's successor is computed together, and log2(window) rounds of
pointer doubling follow the chain across the whole window, at about 1 µs a byte. Legitimate
encoders fill their blocks (255 bytes), which one at a time walks fastest. The walk is
bounded by ``MAX_GIF_FRAMES`` (some 0.3 ms a frame) and ``MAX_GIF_BLOCKS``.
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

from service.ingest.images import MAX_GIF_BLOCKS, MAX_GIF_FRAMES

_EXTENSION, _IMAGE = 0x21, 0x2C
_HOPS = 8  # blocks followed one at a time in one loop iteration
_DENSE_BYTES = 32  # blocks this short on average: a window is cheaper
_WINDOW_BITS = 10
_WINDOW = 1 << _WINDOW_BITS
# What the next loop iteration does.
_STEP_BY_STEP, _WINDOWED, _FRAME = 0, 1, 2


class GifCanvas(NamedTuple):
    """What the walk found: the canvas, and the counts its bounds are judged by."""

    width: tf.Tensor  # int64: 0 where no frame is complete (giflib allocates nothing)
    height: tf.Tensor
    frames: tf.Tensor
    raster: tf.Tensor  # the frames' pixels in all
    blocks: tf.Tensor  # extensions, image descriptors and non-empty data sub-blocks


class _State(NamedTuple):
    """The walk's loop variables. ``pos`` is a block's first byte (an extension, an image
    descriptor; anything else ends the walk) or, ``in_sub``, a data sub-block's size byte
    (0 ends the sub-blocks)."""

    pos: tf.Tensor
    in_sub: tf.Tensor
    step: tf.Tensor  # _STEP_BY_STEP, _WINDOWED or _FRAME
    going: tf.Tensor
    blocks: tf.Tensor
    frames: tf.Tensor
    raster: tf.Tensor
    width: tf.Tensor
    height: tf.Tensor


def gif_canvas(image_bytes: tf.Tensor) -> GifCanvas:
    """The canvas of the GIF ``image_bytes`` (a scalar string starting "GIF8").

    As ``_gif_header``: the logical screen and every frame at its offset, the walk ending
    where giflib's does. It stops early past ``MAX_GIF_FRAMES`` frames or
    ``MAX_GIF_BLOCKS`` blocks, leaving the count over the bound for the caller to refuse.
    """
    walk = _Walk(tf.cast(tf.io.decode_raw(image_bytes, tf.uint8), tf.int64))
    zero = tf.constant(0, tf.int64)
    start = _State(
        pos=13 + color_table_bytes(walk.byte(10)),  # signature, screen, global color table
        in_sub=tf.constant(False),
        step=tf.constant(_STEP_BY_STEP),
        going=tf.constant(True),
        blocks=zero,
        frames=zero,
        raster=zero,
        width=walk.le16(6),  # the logical screen
        height=walk.le16(8),
    )
    end = tf.while_loop(walk.more, walk.step, (start,))[0]
    framed = end.frames > 0
    width, height = (tf.where(framed, side, zero) for side in (end.width, end.height))
    return GifCanvas(width, height, end.frames, end.raster, end.blocks)


def color_table_bytes(flags: tf.Tensor) -> tf.Tensor:
    """Bytes of the color table a screen or image descriptor's ``flags`` announce."""
    entries = tf.bitwise.left_shift(tf.constant(1, tf.int64), tf.bitwise.bitwise_and(flags, 7) + 1)
    return tf.where(tf.bitwise.bitwise_and(flags, 0x80) > 0, 3 * entries, 0)


class _Walk:
    """The loop of the walk over one GIF's bytes (int64): one step a loop iteration."""

    def __init__(self, data: tf.Tensor) -> None:
        self.data = data
        self.size = tf.size(data, out_type=tf.int64)

    def byte(self, pos: tf.Tensor | int) -> tf.Tensor:
        """The byte at ``pos`` (the last byte past the end: callers check ``pos < size``)."""
        pos = tf.convert_to_tensor(pos, tf.int64)
        return tf.gather(self.data, tf.clip_by_value(pos, 0, self.size - 1))

    def le16(self, pos: tf.Tensor | int) -> tf.Tensor:
        return self.byte(pos) + 256 * self.byte(pos + 1)

    def more(self, state: _State) -> tf.Tensor:
        return state.going & (state.frames <= MAX_GIF_FRAMES) & (state.blocks <= MAX_GIF_BLOCKS)

    def step(self, state: _State) -> tuple[_State]:
        steps = [self._step_by_step, self._windowed, self._frame]
        return (tf.switch_case(state.step, [_bound(step, state) for step in steps]),)

    def _frame(self, state: _State) -> _State:
        """Take the image descriptor at ``pos``; its data sub-blocks come next.

        As giflib: a descriptor cut short, a color table or code size byte cut off, or a
        zero width or height ends the walk without a frame.
        """
        pos = state.pos
        left, top, width, height = (self.le16(pos + at) for at in (1, 3, 5, 7))
        pixels_at = pos + 10 + color_table_bytes(self.byte(pos + 9))
        found = (pos + 10 <= self.size) & (pixels_at < self.size) & (width > 0) & (height > 0)
        one = tf.cast(found, tf.int64)
        return _State(
            pos=pixels_at + 1,  # after the LZW minimum code size byte
            in_sub=tf.constant(True),
            step=tf.constant(_STEP_BY_STEP),
            going=found,
            blocks=state.blocks + one,
            frames=state.frames + one,
            raster=state.raster + one * width * height,
            width=tf.maximum(state.width, one * (left + width)),
            height=tf.maximum(state.height, one * (top + height)),
        )

    def _step_by_step(self, state: _State) -> _State:
        """Follow up to ``_HOPS`` extensions and data sub-blocks one at a time."""
        pos, in_sub, blocks, going = state.pos, state.in_sub, state.blocks, tf.constant(True)
        for _ in range(_HOPS):
            value = self.byte(pos)
            extension = ~in_sub & (value == _EXTENSION)
            going = going & (pos < self.size) & (in_sub | extension)
            # A sub-block: its size byte and its data; an extension: introducer and label.
            pos = tf.where(going, tf.where(in_sub, pos + 1 + value, pos + 2), pos)
            blocks += tf.cast(going & (extension | (value > 0)), tf.int64)
            # An empty sub-block ends the sub-blocks; an extension's follow it.
            in_sub = tf.where(going, extension | (value > 0), in_sub)
        dense = pos - state.pos < _HOPS * _DENSE_BYTES
        return self._next(state, pos, in_sub, blocks, going, dense)

    def _windowed(self, state: _State) -> _State:
        """Follow the extensions and data sub-blocks across ``_WINDOW`` bytes at once.

        Every (byte, mode) of the window is a node whose successor is known from its byte
        alone; a node where the walk ends points to itself, one whose successor lies past
        the window keeps that successor. Each round of doubling composes the successors
        with themselves, so after log2(_WINDOW) rounds every node points to where its
        chain ends or leaves the window, with the blocks passed on the way.
        """
        local = tf.range(_WINDOW, dtype=tf.int64)
        value = self.byte(state.pos + local)
        inside = state.pos + local < self.size
        extension = inside & (value == _EXTENSION)
        # Node 2i: a block starts at byte i; node 2i + 1: a data sub-block does.
        target = _nodes(
            tf.where(extension, local + 2, local), tf.where(inside, local + 1 + value, local)
        )
        in_sub = _nodes(extension, tf.where(inside, value > 0, True))
        passed = _nodes(tf.cast(extension, tf.int64), tf.cast(inside & (value > 0), tf.int64))
        # A loop, not unrolled: while the walk takes another branch, fewer ops lie idle.
        _, target, in_sub, passed = tf.while_loop(
            lambda round, *_: round < _WINDOW_BITS,
            _double,
            (tf.constant(0), target, in_sub, passed),
        )
        first = tf.cast(state.in_sub, tf.int64)
        end, count = target[first], passed[first]
        dense = count * _DENSE_BYTES > _WINDOW
        going = end >= _WINDOW  # it left the window: the chain goes on
        return self._next(state, state.pos + end, in_sub[first], state.blocks + count, going, dense)

    def _next(self, state, pos, in_sub, blocks, going, dense) -> _State:
        """The state after following blocks: go on with the blocks, or take the frame the
        walk stopped at, or end."""
        at_frame = ~going & ~in_sub & (pos < self.size) & (self.byte(pos) == _IMAGE)
        step = tf.where(at_frame, _FRAME, tf.where(dense, _WINDOWED, _STEP_BY_STEP))
        return state._replace(
            pos=pos, in_sub=in_sub, step=step, going=going | at_frame, blocks=blocks
        )


def _double(round, target, in_sub, passed):
    """One round of pointer doubling: every node's successor becomes its successor's."""
    within = target < _WINDOW
    successor = 2 * tf.minimum(target, _WINDOW - 1) + tf.cast(in_sub, tf.int64)
    passed = tf.where(within, passed + tf.gather(passed, successor), passed)
    target, in_sub = (
        tf.where(within, tf.gather(target, successor), target),
        tf.where(within, tf.gather(in_sub, successor), in_sub),
    )
    return round + 1, target, in_sub, passed


def _bound(step, state: _State):
    return lambda: step(state)


def _nodes(at_block: tf.Tensor, at_sub_block: tf.Tensor) -> tf.Tensor:
    """Interleave per-byte values into per-node values: node 2i, then node 2i + 1."""
    return tf.reshape(tf.stack([at_block, at_sub_block], axis=1), [-1])

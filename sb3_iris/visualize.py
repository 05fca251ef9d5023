"""Image and video helpers shared by the callbacks and the ``play`` command.

All helpers work on ``uint8`` RGB images, channels last (``(H, W, 3)``); :func:`to_uint8_images` converts
tensors of the tokenizer's preprocessed space ([-1, 1], channels first) or raw observations into that format.
Videos are written as GIF (Pillow) or MP4 and other ffmpeg formats (``imageio`` + ``imageio-ffmpeg``), headless.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence
from typing import Any, Optional, Union

import numpy as np

__all__ = [
    "VideoWriter",
    "annotate",
    "encode_gif",
    "hstack",
    "log_tensorboard_video",
    "make_grid",
    "pad_to_multiple",
    "resize_to_height",
    "titled",
    "to_uint8_images",
    "upscale",
    "write_video",
]

ArrayLike = Union[np.ndarray, Any]  # numpy array or torch tensor

RED = (230, 30, 30)
GREEN = (40, 200, 40)
WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
GREY = (90, 90, 90)
VIDEO_EXTENSIONS = (".gif", ".mp4", ".avi", ".mov", ".mkv", ".webm")


# --------------------------------------------------------------------------------------------------
# Conversions and layout
# --------------------------------------------------------------------------------------------------


def _to_numpy(x: ArrayLike) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":
            x = x.float()
        x = x.numpy()
    return np.asarray(x)


def to_uint8_images(images: ArrayLike, channels_first: Optional[bool] = None) -> np.ndarray:
    """Convert a batch of images (or one image) to ``uint8`` ``(..., H, W, 3)``.

    :param images: uint8 images in [0, 255], or float images in the tokenizer's preprocessed space [-1, 1];
        numpy or torch; channels first ``(..., C, H, W)`` or last ``(..., H, W, C)``; 1 or 3 channels
    :param channels_first: the layout; None guesses it (channels first if the third-last axis has 1 or 3 entries
        and the last axis does not)
    :return: ``uint8`` RGB images, channels last, same leading shape
    """
    array = _to_numpy(images)
    if array.ndim < 3:
        raise ValueError(f"expected images of shape (..., C, H, W) or (..., H, W, C), got shape {array.shape}")
    if channels_first is None:
        channels_first = array.shape[-3] in (1, 3) and array.shape[-1] not in (1, 3)
    if channels_first:
        array = np.moveaxis(array, -3, -1)
    if array.dtype != np.uint8:
        array = np.clip((array.astype(np.float32) + 1.0) * 127.5, 0, 255).round().astype(np.uint8)
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    if array.shape[-1] != 3:
        raise ValueError(f"expected 1 or 3 colour channels, got images of shape {array.shape}")
    return np.ascontiguousarray(array)


def upscale(image: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upscaling of ``(..., H, W, C)`` by an integer ``factor``."""
    if factor <= 1:
        return image
    return np.repeat(np.repeat(image, factor, axis=-3), factor, axis=-2)


def resize_to_height(image: np.ndarray, height: int, nearest: bool = True) -> np.ndarray:
    """Resize ``(H, W, C)`` to ``height`` rows, keeping the aspect ratio (integer upscaling when it fits)."""
    h, w = image.shape[:2]
    if h == height:
        return image
    if height % h == 0:
        return upscale(image, height // h)
    from PIL import Image as PILImage

    width = max(1, round(w * height / h))
    resample = PILImage.NEAREST if nearest else PILImage.BILINEAR
    return np.asarray(PILImage.fromarray(image).resize((width, height), resample=resample))


def pad_to_multiple(image: np.ndarray, multiple: int, value: int = 0) -> np.ndarray:
    """Pad ``(H, W, C)`` at the bottom and right so that H and W are multiples of ``multiple``."""
    h, w = image.shape[:2]
    pad_h, pad_w = (-h) % multiple, (-w) % multiple
    if pad_h == 0 and pad_w == 0:
        return image
    return np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), constant_values=value)


def make_grid(
    images: Union[np.ndarray, Sequence[np.ndarray]], ncols: Optional[int] = None, padding: int = 2, pad_value: int = 255
) -> np.ndarray:
    """Tile ``N`` images ``(H, W, C)`` of the same size into one image, row-major.

    :param images: ``(N, H, W, C)`` uint8 or a list of such images
    :param ncols: images per row (default: all in one row)
    :param padding: pixels between images and around the grid
    :param pad_value: colour of the padding
    """
    images = np.asarray(images)
    n, h, w, c = images.shape
    ncols = n if ncols is None else max(1, min(ncols, n))
    nrows = -(-n // ncols)
    grid = np.full((nrows * (h + padding) + padding, ncols * (w + padding) + padding, c), pad_value, dtype=images.dtype)
    for i in range(n):
        row, col = divmod(i, ncols)
        y, x = padding + row * (h + padding), padding + col * (w + padding)
        grid[y : y + h, x : x + w] = images[i]
    return grid


def hstack(images: Sequence[np.ndarray], padding: int = 4, pad_value: int = 0) -> np.ndarray:
    """Put images of possibly different heights side by side (top-aligned, padded below)."""
    height = max(image.shape[0] for image in images)
    columns = []
    for i, image in enumerate(images):
        if image.shape[0] < height:
            image = np.pad(image, ((0, height - image.shape[0]), (0, 0), (0, 0)), constant_values=pad_value)
        columns.append(image)
        if padding and i < len(images) - 1:
            columns.append(np.full((height, padding, image.shape[2]), pad_value, dtype=image.dtype))
    return np.concatenate(columns, axis=1)


# --------------------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------------------


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def _text_size(draw, text: str, font) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def annotate(
    image: np.ndarray,
    lines: Sequence[str] = (),
    border: Optional[tuple[int, int, int]] = None,
    border_width: int = 3,
    font_size: int = 10,
    dim: bool = False,
) -> np.ndarray:
    """Add a text banner below an image and optionally a coloured border (e.g. red for an episode end).

    :param image: ``(H, W, 3)`` uint8
    :param lines: text lines written in the banner (none: no banner)
    :param border: RGB colour of a border drawn inside the image
    :param border_width: border thickness in pixels
    :param font_size: text size in pixels
    :param dim: darken the image (e.g. frames imagined after a predicted episode end)
    :return: a new ``(H + banner, W, 3)`` uint8 image
    """
    from PIL import Image as PILImage
    from PIL import ImageDraw

    frame = np.array(image, dtype=np.uint8, copy=True)
    if dim:
        frame = (frame.astype(np.uint16) * 2 // 5).astype(np.uint8)
    if border is not None:
        b = max(1, min(border_width, frame.shape[0] // 4, frame.shape[1] // 4))
        frame[:b], frame[-b:], frame[:, :b], frame[:, -b:] = border, border, border, border
    if not lines:
        return frame
    font = _font(font_size)
    line_height = font_size + 3
    banner = PILImage.new("RGB", (frame.shape[1], line_height * len(lines) + 2), BLACK)
    draw = ImageDraw.Draw(banner)
    for i, line in enumerate(lines):
        draw.text((2, 1 + i * line_height), line, fill=WHITE, font=font)
    return np.concatenate([frame, np.asarray(banner)], axis=0)


def titled(image: np.ndarray, title: str, font_size: int = 10) -> np.ndarray:
    """Write ``title`` in a banner above ``image``."""
    from PIL import Image as PILImage
    from PIL import ImageDraw

    font = _font(font_size)
    banner = PILImage.new("RGB", (image.shape[1], font_size + 4), BLACK)
    draw = ImageDraw.Draw(banner)
    width, _ = _text_size(draw, title, font)
    draw.text((max(0, (image.shape[1] - width) // 2), 1), title, fill=WHITE, font=font)
    return np.concatenate([np.asarray(banner), image], axis=0)


# --------------------------------------------------------------------------------------------------
# Video files
# --------------------------------------------------------------------------------------------------


def encode_gif(frames: Sequence[np.ndarray], fps: float) -> bytes:
    """Encode ``(H, W, 3)`` uint8 frames as an animated, looping GIF (bytes)."""
    from PIL import Image as PILImage

    if len(frames) == 0:
        raise ValueError("encode_gif: no frames")
    images = [PILImage.fromarray(np.asarray(frame, dtype=np.uint8)) for frame in frames]
    buffer = io.BytesIO()
    duration = max(20, int(round(1000.0 / fps)))  # GIF delays are in 10 ms units; browsers clamp < 20 ms
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=duration, loop=0)
    return buffer.getvalue()


class VideoWriter:
    """Write frames to a GIF or a video file, headless.

    GIF frames are kept in memory and encoded by Pillow at :meth:`close`; other formats (``.mp4``, ``.avi``,
    ``.webm``, ...) are streamed to ffmpeg through ``imageio`` (needs ``imageio-ffmpeg``). Frames are padded to
    a multiple of 16 pixels for the video codecs; all frames must have the size of the first one.

    :param path: output file; the extension chooses the format
    :param fps: frames per second
    """

    def __init__(self, path: Union[str, os.PathLike], fps: float = 15.0) -> None:
        self.path = os.fspath(path)
        self.fps = float(fps)
        extension = os.path.splitext(self.path)[1].lower()
        if extension not in VIDEO_EXTENSIONS:
            raise ValueError(f"unsupported video file {self.path!r}: use one of {', '.join(VIDEO_EXTENSIONS)}")
        self.is_gif = extension == ".gif"
        self.n_frames = 0
        self._frames: list[np.ndarray] = []
        self._writer = None
        self._shape: Optional[tuple[int, ...]] = None
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)

    def append(self, frame: np.ndarray) -> None:
        """Add one ``(H, W, 3)`` uint8 frame."""
        frame = np.asarray(frame, dtype=np.uint8)
        if self._shape is None:
            self._shape = frame.shape
        elif frame.shape != self._shape:
            raise ValueError(f"frame of shape {frame.shape} differs from the first frame's {self._shape}")
        self.n_frames += 1
        if self.is_gif:
            self._frames.append(frame)
            return
        if self._writer is None:
            try:
                import imageio.v2 as imageio
            except ImportError as error:  # pragma: no cover - depends on the installation
                raise RuntimeError(
                    f"writing {self.path!r} needs imageio and imageio-ffmpeg (pip install imageio imageio-ffmpeg); "
                    "or write a .gif"
                ) from error
            self._writer = imageio.get_writer(self.path, fps=self.fps, macro_block_size=16)
        self._writer.append_data(pad_to_multiple(frame, 16))

    def close(self) -> None:
        """Finish the file."""
        if self.is_gif:
            if self._frames:
                with open(self.path, "wb") as file:
                    file.write(encode_gif(self._frames, self.fps))
            self._frames = []
        elif self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def write_video(path: Union[str, os.PathLike], frames: Sequence[np.ndarray], fps: float = 15.0) -> str:
    """Write ``(H, W, 3)`` uint8 frames to ``path`` (GIF or ffmpeg format, from the extension); return the path."""
    with VideoWriter(path, fps) as writer:
        for frame in frames:
            writer.append(frame)
    return os.fspath(path)


# --------------------------------------------------------------------------------------------------
# TensorBoard
# --------------------------------------------------------------------------------------------------

_TORCH_VIDEO_SUPPORTED: Optional[bool] = None


def torch_tensorboard_video_supported() -> bool:
    """Whether ``SummaryWriter.add_video`` (used by SB3 for ``Video`` values) can encode videos here.

    torch's TensorBoard writer encodes videos with ``moviepy.editor``, which moviepy 2.x removed: with moviepy 2
    ``add_video`` only prints a message and writes nothing.
    """
    global _TORCH_VIDEO_SUPPORTED
    if _TORCH_VIDEO_SUPPORTED is None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                from moviepy import editor  # noqa: F401
            _TORCH_VIDEO_SUPPORTED = True
        except Exception:
            _TORCH_VIDEO_SUPPORTED = False
    return _TORCH_VIDEO_SUPPORTED


def video_grid(videos: np.ndarray, ncols: Optional[int] = None, padding: int = 2) -> np.ndarray:
    """``(N, T, H, W, C)`` videos -> ``(T, H', W', C)`` frames with the N videos tiled side by side."""
    return np.stack(
        [make_grid(videos[:, t], ncols=ncols, padding=padding, pad_value=0) for t in range(videos.shape[1])]
    )


def log_tensorboard_video(logger, key: str, videos: np.ndarray, fps: float, step: int) -> bool:
    """Log ``N`` videos ``(N, T, H, W, 3)`` uint8 to the TensorBoard outputs of an SB3 ``logger``.

    When torch can encode videos (moviepy < 2) the videos are recorded as an SB3 ``Video`` (written at the next
    ``logger.dump``), exactly as SB3 does. Otherwise the same summary SB3/torch would produce -- an image summary
    whose encoded string is an animated GIF of the N videos side by side -- is written directly to every
    TensorBoard output of the logger, at ``step``.

    :return: True if a TensorBoard output received (or will receive) the video
    """
    from stable_baselines3.common.logger import TensorBoardOutputFormat, Video

    outputs = [fmt for fmt in getattr(logger, "output_formats", []) if isinstance(fmt, TensorBoardOutputFormat)]
    if not outputs:
        return False
    videos = np.asarray(videos, dtype=np.uint8)
    if torch_tensorboard_video_supported():
        import torch

        frames = torch.from_numpy(np.ascontiguousarray(videos.transpose(0, 1, 4, 2, 3)))  # (N, T, C, H, W)
        logger.record(key, Video(frames, fps), exclude=("stdout", "log", "json", "csv"))
        return True
    from tensorboard.compat.proto.summary_pb2 import Summary

    frames = video_grid(videos)
    _, height, width, channels = frames.shape
    image = Summary.Image(height=height, width=width, colorspace=channels, encoded_image_string=encode_gif(frames, fps))
    summary = Summary(value=[Summary.Value(tag=key, image=image)])
    for output in outputs:
        writer = output.writer
        file_writer = getattr(writer, "file_writer", None) or writer._get_file_writer()
        file_writer.add_summary(summary, step)
        writer.flush()
    return True

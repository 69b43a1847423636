"""Frame sources from files, each a :class:`~pipeline.acquire.camera.Camera`.

- ``tiff``: one multi-page TIFF; pages are frames (``t, y, x``), or groups of
  pages are volumes when the file says so (ImageJ ``TZYX``);
- ``images``: a sorted image sequence (PNG, TIFF, ... given as a glob or a
  directory, sorted in natural order so ``frame_2`` comes before
  ``frame_10``), one frame per file, with ``channel`` picking one channel of
  RGB(A) images;
- ``zarr``: an existing Zarr array ``(t, y, x)`` or ``(t, z, y, x)`` (a path
  plus an optional ``component`` inside a group; an OME-Zarr image is found
  through its multiscales metadata).

Files carry no trustworthy physical scale, so the source dict gives it:
``pixel_size_um`` and ``frame_interval_s`` are required; ``exposure_s``,
``temperature_K`` and ``viscosity_Pa_s`` are recorded when given.
:func:`open_source` turns one run's source dict into a camera.
"""

from __future__ import annotations

import glob
import re
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from ..io.movie import MovieError
from .camera import CameraFrame, SimulatedCamera

__all__ = [
    "ImageSequenceSource",
    "TiffSource",
    "ZarrSource",
    "open_source",
    "parse_source",
    "SOURCE_KINDS",
    "IMAGE_SUFFIXES",
]

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp", ".gif")
_REQUIRED_PHYSICAL = ("pixel_size_um", "frame_interval_s")
_OPTIONAL_PHYSICAL = ("exposure_s", "temperature_K", "viscosity_Pa_s")


def _positive(name: str, value: Any, *, per_axis: bool = False) -> Any:
    values = np.atleast_1d(np.asarray(value, dtype=float)) if per_axis else np.asarray([value], dtype=float)
    if values.ndim != 1 or values.size == 0 or not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ValueError(f"source key '{name}' must be a positive number, got {value!r}")
    if per_axis:
        return values.tolist() if values.size > 1 else float(values[0])
    return float(values[0])


def _physical_settings(
    kind: str,
    *,
    pixel_size_um: Any,
    frame_interval_s: Any,
    exposure_s: Any = None,
    temperature_K: Any = None,
    viscosity_Pa_s: Any = None,
) -> dict[str, Any]:
    for key, value in (("pixel_size_um", pixel_size_um), ("frame_interval_s", frame_interval_s)):
        if value is None:
            raise ValueError(f"{kind} source: required key '{key}' is missing (files carry no physical scale)")
    settings = {
        "pixel_size_um": _positive("pixel_size_um", pixel_size_um, per_axis=True),
        "frame_interval_s": _positive("frame_interval_s", frame_interval_s),
    }
    for key, value in (
        ("exposure_s", exposure_s),
        ("temperature_K", temperature_K),
        ("viscosity_Pa_s", viscosity_Pa_s),
    ):
        if value is not None:
            settings[key] = _positive(key, value)
    return settings


def _natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def _select_channel(image: np.ndarray, channel: int | None, where: str) -> np.ndarray:
    """One channel of an RGB(A) image, or the image itself if grey."""
    color = image.ndim == 3 and image.shape[-1] in (3, 4)
    if channel is None:
        if color:
            raise ValueError(
                f"{where} has {image.shape[-1]} colour channels; set the source key 'channel' "
                f"(0..{image.shape[-1] - 1}) to pick one"
            )
        return image
    if not color:
        raise ValueError(f"{where} has no colour channels (shape {image.shape}); remove the source key 'channel'")
    if not 0 <= channel < image.shape[-1]:
        raise ValueError(f"source key 'channel' is {channel}, but {where} has channels 0..{image.shape[-1] - 1}")
    return image[..., channel]


def _check_channel(channel: Any) -> int | None:
    if channel is None:
        return None
    if isinstance(channel, bool) or not isinstance(channel, (int, np.integer)):
        raise ValueError(f"source key 'channel' must be an integer, got {channel!r}")
    return int(channel)


class _FileSource:
    """Shared behaviour of the file sources (the Camera protocol)."""

    kind = "file"

    def __init__(self, physical: dict[str, Any]):
        self.settings: dict[str, Any] = dict(physical)
        self._interval = float(physical["frame_interval_s"])

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def _arrays(self) -> Iterator[np.ndarray]:
        raise NotImplementedError

    def frames(self) -> Iterator[CameraFrame]:
        for seq, array in enumerate(self._arrays()):
            yield CameraFrame(array, seq, seq * self._interval)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.settings.get('source')})"


class ImageSequenceSource(_FileSource):
    """A sorted sequence of image files, one frame per file.

    Parameters
    ----------
    path : str or Path
        A glob (``"data/*.png"``) or a directory (every image file in it).
    channel : int, optional
        The channel to take from RGB(A) images (``1`` = green); required for
        colour images, refused for grey ones.
    pixel_size_um, frame_interval_s : float
        Physical scale (µm per pixel, per axis allowed; seconds per frame).
    exposure_s, temperature_K, viscosity_Pa_s : float, optional
    """

    kind = "images"

    def __init__(self, path: str | Path, *, channel: int | None = None, **physical: Any):
        super().__init__(_physical_settings(self.kind, **physical))
        self.channel = _check_channel(channel)
        self.files = self._resolve(path)
        self.path = str(path)
        self._shape = None
        self._dtype = None
        self.settings.update(
            source={
                "kind": self.kind,
                "path": self.path,
                "channel": self.channel,
                "files": [f.name for f in self.files],
            },
            frames_expected=len(self.files),
        )

    @staticmethod
    def _resolve(path: str | Path) -> list[Path]:
        p = Path(path)
        if p.is_dir():
            files = [f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
            where = f"directory {p}"
        else:
            files = [Path(f) for f in glob.glob(str(path)) if Path(f).is_file()]
            where = f"pattern {path}"
        if not files:
            raise FileNotFoundError(f"images source: no image files match {where}")
        return sorted(files, key=_natural_key)

    def open(self) -> None:
        """Check that every file has the first one's shape and type, before streaming."""
        import imageio.v3 as iio

        first = None
        for f in self.files:
            try:
                props = iio.improps(f)
            except Exception as exc:
                raise ValueError(f"images source: cannot read {f} ({exc})") from exc
            if first is None:
                first = (tuple(props.shape), props.dtype)
                probe = _select_channel(np.empty(props.shape, props.dtype), self.channel, str(f))
                if probe.ndim not in (2, 3):
                    raise ValueError(f"images source: {f} has shape {props.shape}, not an image")
                self._shape, self._dtype = probe.shape, probe.dtype
            elif (tuple(props.shape), props.dtype) != first:
                raise ValueError(
                    f"images source: {f} has shape {tuple(props.shape)} {props.dtype}, "
                    f"but {self.files[0]} has {first[0]} {first[1]}"
                )

    def _arrays(self) -> Iterator[np.ndarray]:
        import imageio.v3 as iio

        for f in self.files:
            try:
                image = iio.imread(f)
            except Exception as exc:
                raise ValueError(f"images source: cannot read {f} ({exc})") from exc
            frame = _select_channel(image, self.channel, str(f))
            if self._shape is not None and (frame.shape != self._shape or frame.dtype != self._dtype):
                raise ValueError(
                    f"images source: {f} gives a frame of shape {frame.shape} {frame.dtype}, "
                    f"expected {self._shape} {self._dtype}"
                )
            yield frame


class TiffSource(_FileSource):
    """A multi-page TIFF: each page a frame, or groups of pages a volume.

    The file's first series is read page by page (never whole). Its leading
    axes, in front of the page's own ``(y, x[, samples])``, are ``t`` or
    ``(t, z)`` (ImageJ hyperstacks ``TZYX`` give 3D volumes).

    Parameters
    ----------
    path : str or Path
    channel : int, optional
        Channel of RGB(A) pages; required for colour pages.
    pixel_size_um, frame_interval_s, exposure_s, temperature_K, viscosity_Pa_s
        As for :class:`ImageSequenceSource`.
    """

    kind = "tiff"

    def __init__(self, path: str | Path, *, channel: int | None = None, **physical: Any):
        super().__init__(_physical_settings(self.kind, **physical))
        import tifffile

        self.path = Path(path)
        self.channel = _check_channel(channel)
        if not self.path.is_file():
            raise FileNotFoundError(f"tiff source: {self.path} does not exist")
        try:
            with tifffile.TiffFile(self.path) as tif:
                series = tif.series[0]
                shape, axes = tuple(series.shape), series.axes
                page_shape = tuple(series.keyframe.shape)
                dtype = series.dtype
        except Exception as exc:
            raise ValueError(f"tiff source: cannot read {self.path} ({exc})") from exc
        leading = shape[: len(shape) - len(page_shape)]
        if len(leading) > 2:
            raise ValueError(
                f"tiff source: {self.path} has axes {axes} {shape}; expected pages along t or (t, z)"
            )
        self.n_frames = leading[0] if leading else 1
        self.pages_per_frame = leading[1] if len(leading) == 2 else 1
        probe = _select_channel(np.empty(page_shape, dtype), self.channel, f"{self.path} (pages {page_shape})")
        self._tif = None
        self._page_shape = page_shape
        self.settings.update(
            source={"kind": self.kind, "path": str(self.path), "axes": axes, "channel": self.channel},
            frames_expected=self.n_frames,
        )
        self.frame_shape = ((self.pages_per_frame,) if self.pages_per_frame > 1 else ()) + probe.shape

    def open(self) -> None:
        import tifffile

        if self._tif is None:
            self._tif = tifffile.TiffFile(self.path)

    def close(self) -> None:
        if self._tif is not None:
            self._tif.close()
            self._tif = None

    def _arrays(self) -> Iterator[np.ndarray]:
        self.open()
        n = self.pages_per_frame
        for i in range(self.n_frames):
            try:
                pages = self._tif.asarray(key=range(i * n, (i + 1) * n), series=0)
            except Exception as exc:
                raise ValueError(f"tiff source: cannot read frame {i} of {self.path} ({exc})") from exc
            # one page comes back as the page itself, several stacked along z
            pages = pages.reshape((n, *self._page_shape) if n > 1 else self._page_shape)
            yield _select_channel(pages, self.channel, f"{self.path} frame {i}")


class ZarrSource(_FileSource):
    """An existing Zarr array of frames, ``(t, y, x)`` or ``(t, z, y, x)``.

    Parameters
    ----------
    path : str or Path
        A Zarr array, or a group holding it.
    component : str, optional
        The array's path inside the group; for an OME-Zarr image, the first
        multiscales dataset is the default.
    pixel_size_um, frame_interval_s, exposure_s, temperature_K, viscosity_Pa_s
        As for :class:`ImageSequenceSource`.
    """

    kind = "zarr"

    def __init__(self, path: str | Path, *, component: str | None = None, **physical: Any):
        super().__init__(_physical_settings(self.kind, **physical))
        import zarr

        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"zarr source: {self.path} does not exist")
        try:
            node = zarr.open(str(self.path), mode="r")
        except Exception as exc:
            raise ValueError(f"zarr source: {self.path} is not a Zarr store ({exc})") from exc
        if isinstance(node, zarr.Group):
            if component is None:
                try:
                    component = node.attrs["ome"]["multiscales"][0]["datasets"][0]["path"]
                except (KeyError, IndexError, TypeError):
                    try:
                        component = node.attrs["multiscales"][0]["datasets"][0]["path"]  # NGFF <= 0.4
                    except (KeyError, IndexError, TypeError):
                        raise ValueError(
                            f"zarr source: {self.path} is a group; set the source key 'component' "
                            f"to one of its arrays {sorted(node.array_keys())}"
                        ) from None
            try:
                node = node[str(component)]
            except KeyError:
                raise ValueError(f"zarr source: {self.path} has no array '{component}' (source key 'component')") from None
        elif component not in (None, ""):
            raise ValueError(f"zarr source: {self.path} is an array; remove the source key 'component'")
        if not isinstance(node, zarr.Array) or node.ndim not in (3, 4):
            raise ValueError(
                f"zarr source: {self.path}/{component or ''} must be an array (t, y, x) or (t, z, y, x), "
                f"got shape {getattr(node, 'shape', None)}"
            )
        if node.shape[0] == 0:
            raise MovieError(f"zarr source: {self.path} holds no frames")
        self.array = node
        self.settings.update(
            source={"kind": self.kind, "path": str(self.path), "component": component},
            frames_expected=int(node.shape[0]),
        )

    def _arrays(self) -> Iterator[np.ndarray]:
        step = max(1, int(self.array.chunks[0]))  # read whole chunks, hand out frames
        for start in range(0, self.array.shape[0], step):
            try:
                block = np.asarray(self.array[start : start + step])
            except Exception as exc:
                raise ValueError(
                    f"zarr source: cannot read frames {start}..{start + step - 1} of {self.path} ({exc})"
                ) from exc
            yield from block


SOURCE_KINDS = {
    "simulated": SimulatedCamera,
    "images": ImageSequenceSource,
    "tiff": TiffSource,
    "zarr": ZarrSource,
}
_FILE_KEYS = {
    "images": {"path", "channel"},
    "tiff": {"path", "channel"},
    "zarr": {"path", "component"},
}


def open_source(source: Mapping[str, Any]):
    """The camera (frame source) described by one run's source dict.

    Parameters
    ----------
    source : mapping
        ``{"kind": "simulated", ...simulator parameters}``,
        ``{"kind": "images", "path": "data/*.png", "channel": 1, "pixel_size_um": ..., "frame_interval_s": ...}``,
        ``{"kind": "tiff", "path": ...}`` or ``{"kind": "zarr", "path": ..., "component": "0"}``
        (file sources also take ``exposure_s``, ``temperature_K``, ``viscosity_Pa_s``).

    Raises
    ------
    ValueError
        An unknown kind or key, a missing ``pixel_size_um`` / ``frame_interval_s``
        (each named).
    FileNotFoundError
        A missing file.
    """
    if not isinstance(source, Mapping):
        raise ValueError(f"a source must be a mapping with a 'kind', got {source!r}")
    options = dict(source)
    kind = options.pop("kind", None)
    if kind not in SOURCE_KINDS:
        raise ValueError(f"source key 'kind' must be one of {sorted(SOURCE_KINDS)}, got {kind!r}")
    if kind == "simulated":
        return SimulatedCamera(**options)
    allowed = _FILE_KEYS[kind] | set(_REQUIRED_PHYSICAL) | set(_OPTIONAL_PHYSICAL)
    for key in options:
        if key not in allowed:
            raise ValueError(f"{kind} source: unknown key '{key}' (allowed: {sorted(allowed)})")
    if options.get("path") in (None, ""):
        raise ValueError(f"{kind} source: required key 'path' is missing")
    for key in _REQUIRED_PHYSICAL:
        if options.get(key) is None:
            raise ValueError(f"{kind} source: required key '{key}' is missing (files carry no physical scale)")
    return SOURCE_KINDS[kind](**options)


def parse_source(text: str, settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A source dict from the command line: ``simulated``, a path or a JSON dict.

    The kind follows the path: ``*.zarr`` (or a directory holding
    ``zarr.json``) is ``zarr``, ``*.tif``/``*.tiff`` is ``tiff``, anything else
    (a glob or a directory of images) is ``images``. ``settings`` adds or
    overrides keys (``channel``, ``pixel_size_um``, simulator parameters...).
    """
    text = str(text).strip()
    if text.startswith("{"):
        import json

        try:
            source = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"source is not valid JSON: {exc}") from None
    elif text == "simulated":
        source = {"kind": "simulated"}
    else:
        path = Path(text)
        name = text.rstrip("/").lower()
        if name.endswith(".zarr") or (path.is_dir() and (path / "zarr.json").exists()):
            kind = "zarr"
        elif name.endswith((".tif", ".tiff")) and path.is_file():
            kind = "tiff"
        else:
            kind = "images"
        source = {"kind": kind, "path": text}
    source.update(settings or {})
    return source

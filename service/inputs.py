"""Reading images and options out of a request: multipart files, JSON base64 or a raw body.

Three ways to send images (the ``Content-Type`` decides):

``multipart/form-data``
    one or more files in the field ``images`` (parsed by :mod:`service.multipart`); options
    as further form fields.
``application/json``
    ``{"images": ["<base64>", ...], ...options}``; a ``data:image/...;base64,`` prefix is
    accepted, as are line breaks and URL-safe base64.
``image/*`` or ``application/octet-stream``
    the body is one encoded image.

Options may also come as query parameters; a body field wins over a query parameter.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from flask import Request
from PIL import Image

from cvpipe.images import DEFAULT_FIT, ImageError, UnsupportedFormat, decode, peek
from service import multipart
from service.errors import ApiError

#: Content types the image endpoints accept.
JSON_TYPES = ("application/json",)
MULTIPART = "multipart/form-data"
RAW_TYPES = ("application/octet-stream",)
#: The multipart field (and JSON key) holding the images.
IMAGES_FIELD = "images"

_USAGE = ("send images as multipart/form-data files in the field 'images', as JSON "
          '{"images": ["<base64>", ...]}, or as one raw image body (Content-Type image/*)')


class Options:
    """A request's options from the query string and from the body; the body wins.

    Every source is validated (:func:`option`), so that an invalid value is refused even
    where another source overrides it.
    """

    def __init__(self, query: dict[str, Any], body: dict[str, Any] | None = None) -> None:
        self.sources = [query, body or {}]

    def values(self, name: str) -> list[Any]:
        """Every value given for ``name``, query string first."""
        return [s[name] for s in self.sources if name in s]

    def __contains__(self, name: str) -> bool:
        return any(name in s for s in self.sources)


def option(options: Options, name: str, parse: Callable[[Any], Any], default: Any = None) -> Any:
    """``parse`` (which raises :class:`ApiError`) applied to every value of ``name``; the last
    (the body's, if any) is returned, ``default`` if there is none."""
    parsed = [parse(v) for v in options.values(name)]
    return parsed[-1] if parsed else default


@dataclass
class Upload:
    """One encoded image of a request: ``name`` (file name or ``images[i]``) and its bytes."""

    name: str
    data: bytes


def _check_count(n: int, max_images: int) -> None:
    if n > max_images:
        raise ApiError(413, "too_many_images",
                       f"{n} images in one request; the limit is {max_images}: split the batch",
                       {"images": n, "limit": max_images})


def _b64decode(text: str, index: int) -> bytes:
    if text.startswith("data:"):
        head, sep, text = text.partition(",")
        if not sep or ";base64" not in head:
            raise ApiError(400, "invalid_base64", f"images[{index}]: a data URL must be base64 "
                           "encoded (data:image/png;base64,...)", {"index": index})
    compact = "".join(text.split()) if ("\n" in text or " " in text or "\r" in text
                                          or "\t" in text) else text
    altchars = b"-_" if ("-" in compact or "_" in compact) else None
    compact += "=" * (-len(compact) % 4)
    try:
        return base64.b64decode(compact, altchars=altchars, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(400, "invalid_base64", f"images[{index}]: not valid base64 ({exc})",
                       {"index": index}) from None


def read_images(request: Request, max_images: int, allowed_fields: tuple[str, ...],
                ) -> tuple[list[Upload], Options]:
    """The encoded images and the options of an image request.

    Parameters
    ----------
    request : flask.Request
    max_images : int
        More images than this is a 413 ``too_many_images``.
    allowed_fields : tuple of str
        Option names the endpoint understands (besides ``images``); any other body field or
        query parameter is a 400, so a misspelt option is not silently ignored.

    Returns
    -------
    uploads : list of Upload
        At least one.
    options : Options
        Options from the query string and the body; values from the query string and form
        fields are strings, from JSON any JSON value.

    Raises
    ------
    ApiError
        400 (empty body, no images, malformed JSON or multipart, invalid base64, unknown
        field), 413 (too many images) or 415 (unsupported content type).
    """
    mimetype = request.mimetype
    unknown = [k for k in request.args if k not in allowed_fields]
    if unknown:  # ?topk=1 would have been dropped: the default answered, nothing said
        raise ApiError(400, "unknown_field", f"unknown query parameter {unknown[0]!r}; options are "
                       f"{', '.join(allowed_fields) or 'none'}", {"field": unknown[0]})
    query: dict[str, Any] = dict(request.args.items())
    if not mimetype:
        if not request.content_length and not request.get_data(cache=True):
            raise ApiError(400, "empty_body", f"The request has no body: {_USAGE}.")
        raise ApiError(415, "unsupported_media_type",
                       f"The request has no Content-Type: {_USAGE}.")

    if mimetype == MULTIPART:
        raw = request.get_data(cache=False)
        if not raw:
            raise ApiError(400, "empty_body", f"The request has no body: {_USAGE}.")
        try:
            parts = multipart.parse(raw, request.mimetype_params.get("boundary", ""),
                                    max_parts=max_images + len(allowed_fields) + 16)
        except multipart.TooManyParts:
            raise ApiError(413, "too_many_images", f"more parts than the limit of {max_images} "
                           "images allows: split the batch", {"limit": max_images}) from None
        except multipart.MultipartError as exc:
            raise ApiError(400, "malformed_multipart", f"The multipart body is malformed: {exc}.") from None
        fields: dict[str, Any] = {}
        files = []
        for part in parts:
            if part.name == IMAGES_FIELD:
                files.append(part)
            elif part.name in allowed_fields:
                try:
                    fields[part.name] = part.data.decode("utf-8")
                except UnicodeDecodeError:
                    raise ApiError(400, "invalid_option", f"form field {part.name!r} is not UTF-8 text",
                                   {"option": part.name}) from None
            else:
                raise ApiError(400, "unknown_field", f"unknown form field {part.name!r}; images go in "
                               f"'{IMAGES_FIELD}', options are {', '.join(allowed_fields) or 'none'}",
                               {"field": part.name})
        _check_count(len(files), max_images)
        if not files:
            raise ApiError(400, "no_images", f"The request holds no image files: {_USAGE}.")
        uploads = [Upload(f.filename or f"{IMAGES_FIELD}[{i}]", f.data) for i, f in enumerate(files)]
        return uploads, Options(query, fields)

    if mimetype in JSON_TYPES or mimetype.endswith("+json"):
        raw = request.get_data(cache=False)
        if not raw.strip():
            raise ApiError(400, "empty_body", f"The request has no body: {_USAGE}.")
        body = loads(raw, "The body")
        if not isinstance(body, dict):
            raise ApiError(400, "invalid_request", 'The JSON body must be an object such as '
                           '{"images": ["<base64>", ...]}.')
        unknown = [k for k in body if k != IMAGES_FIELD and k not in allowed_fields]
        if unknown:
            raise ApiError(400, "unknown_field", f"unknown field {unknown[0]!r}; expected "
                           f"{', '.join((IMAGES_FIELD, *allowed_fields))}", {"field": unknown[0]})
        images = body.get(IMAGES_FIELD)
        if images is None:
            raise ApiError(400, "no_images", f'The JSON body has no "{IMAGES_FIELD}" list: {_USAGE}.')
        if not isinstance(images, list) or not all(isinstance(s, str) for s in images):
            raise ApiError(400, "invalid_request",
                           f'"{IMAGES_FIELD}" must be a list of base64 strings.')
        if not images:
            raise ApiError(400, "no_images", f'"{IMAGES_FIELD}" is empty: {_USAGE}.')
        _check_count(len(images), max_images)
        uploads = [Upload(f"{IMAGES_FIELD}[{i}]", _b64decode(s, i)) for i, s in enumerate(images)]
        return uploads, Options(query, {k: v for k, v in body.items() if k != IMAGES_FIELD})

    if mimetype.startswith("image/") or mimetype in RAW_TYPES:
        data = request.get_data(cache=False)
        if not data:
            raise ApiError(400, "empty_body", f"The request has no body: {_USAGE}.")
        return [Upload("body", data)], Options(query)

    raise ApiError(415, "unsupported_media_type",
                   f"Content-Type {mimetype!r} is not accepted: {_USAGE}.")


def decode_images(uploads: list[Upload], size: tuple[int, int], max_pixels: int,
                  max_request_pixels: int, max_decode_bytes: int = 256 << 20, channels: int = 3,
                  fit: str = DEFAULT_FIT) -> np.ndarray:
    """uint8 (N, H, W, C) batch of the uploads, each converted to what a model takes: ``size``
    (H, W) reached by the ``fit`` policy, ``channels`` 3 (RGB) or 1 (gray).

    Sizes are read from the headers first, so an image over ``max_pixels``, a request over
    ``max_request_pixels`` in all, or one whose decoding would need more than
    ``max_decode_bytes`` of memory at once (the largest image as decoded and converted to RGB,
    plus the output batch) is refused (413) before any pixel is decoded.

    Raises
    ------
    ApiError
        400 ``bad_image`` (not an image, truncated, empty), 415 ``unsupported_image_format``
        (an image format outside :data:`cvpipe.images.IMAGE_FORMATS`) or 413
        ``image_too_large`` / ``request_too_large``; ``details.index`` says which image.
    """
    total, largest = 0, 0
    for i, up in enumerate(uploads):
        try:
            header = peek(up.data)
        except Image.DecompressionBombError:
            raise ApiError(413, "image_too_large", f"{up.name}: over the limit of {max_pixels} pixels",
                           {"index": i, "name": up.name}) from None
        except Exception:  # noqa: BLE001 - decode() below says what is wrong with it
            continue
        if header.pixels > max_pixels:
            raise ApiError(413, "image_too_large", f"{up.name}: {header.width}x{header.height} "
                           f"pixels is over the limit of {max_pixels} pixels",
                           {"index": i, "name": up.name})
        total += header.pixels
        if total > max_request_pixels:
            raise ApiError(413, "request_too_large", f"the images hold more than {max_request_pixels} "
                           "pixels in all: send fewer or smaller images", {"index": i})
        # the decoded array and its RGB conversion
        largest = max(largest, header.pixels * (header.bytes_per_pixel + 3))
    need = largest + len(uploads) * size[0] * size[1] * 3
    if need > max_decode_bytes:
        raise ApiError(413, "request_too_large", f"decoding these images at {size[0]}x{size[1]} needs "
                       f"about {need >> 20} MiB, over the limit of {max_decode_bytes >> 20} MiB: send "
                       "fewer or smaller images, or a smaller size", {"limit_bytes": max_decode_bytes})
    out = np.empty((len(uploads), size[0], size[1], channels), np.uint8)
    for i, up in enumerate(uploads):
        try:
            out[i] = decode(up.data, up.name, size, max_pixels=max_pixels, channels=channels, fit=fit)
        except UnsupportedFormat as exc:
            raise ApiError(415, "unsupported_image_format", str(exc),
                           {"index": i, "name": up.name}) from None
        except ImageError as exc:
            raise ApiError(400, "bad_image", str(exc), {"index": i, "name": up.name}) from None
    return out


#: Deepest nesting of arrays and objects a JSON body or option may have.
MAX_JSON_DEPTH = 32


def too_deep(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when ``value`` nests arrays/objects more than ``limit`` deep (checked iteratively)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, dict)):
            if depth > limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False


def loads(raw: str | bytes, what: str) -> Any:
    """JSON of a request, or a 400: malformed, or nested deeper than :data:`MAX_JSON_DEPTH`."""
    try:
        value = json.loads(raw)
    except RecursionError:
        value = None
        deep = True
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "malformed_json", f"{what} is not valid JSON: {exc}.") from None
    else:
        deep = too_deep(value)
    if deep:
        raise ApiError(400, "malformed_json", f"{what} nests arrays or objects more than "
                       f"{MAX_JSON_DEPTH} deep.")
    return value

"""Image files <-> float32 arrays: the only package that decodes or encodes image formats.

formats.py (what is read and written, ImageData), read.py (read_image, header_size), write.py (write_image),
alpha.py (fill_transparent).
"""

from .alpha import fill_transparent
from .formats import (
    DEFAULT_MAX_PIXELS,
    READABLE_SUFFIXES,
    WRITE_FORMATS,
    ImageData,
    format_for_suffix,
    jpeg_quality,
    os_reason,
    suffix_for_format,
)
from .read import header_size, image_from_pil, read_image
from .write import write_image

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "READABLE_SUFFIXES",
    "WRITE_FORMATS",
    "ImageData",
    "fill_transparent",
    "format_for_suffix",
    "header_size",
    "image_from_pil",
    "jpeg_quality",
    "os_reason",
    "read_image",
    "suffix_for_format",
    "write_image",
]

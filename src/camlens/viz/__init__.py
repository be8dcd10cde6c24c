"""Pictures: colormaps, overlays, comparison grids and safe image I/O (needs Pillow)."""

from ._colormaps import available_colormaps, colormap
from ._compose import compose_grid, compose_rows, grid, overlay
from ._image import (
    DEFAULT_MAX_PIXELS,
    ImageError,
    Picture,
    atomic_write,
    from_array,
    load_image,
    save_image,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ImageError",
    "Picture",
    "atomic_write",
    "available_colormaps",
    "colormap",
    "compose_grid",
    "compose_rows",
    "from_array",
    "grid",
    "load_image",
    "overlay",
    "save_image",
]

"""The figures of a dataset before training (`cifar_jax.explore`): images per class, class
counts, and a training batch as the train step sees it.

Image grids are drawn pixel for pixel: each image is enlarged by a whole factor (every pixel
becomes a square block) and placed at whole-pixel positions of the figure, so the PNG holds the
images' own pixels and `TileGrid.box` says where each one is.
"""
import dataclasses

import numpy as np

from cifar_jax.results import plots  # Chooses matplotlib's Agg backend first.
from cifar_jax.results.plots import DPI

plt = plots.plt

_GAP = 6  # Pixels between tiles and around the grid.
_TITLE = 44  # Pixels above the first row of tiles.
_CAPTION_LINE = 12  # Pixels per caption line (7-point text at DPI 100).
_LABEL_CHARS = 24  # Row labels longer than this are cut.


@dataclasses.dataclass(frozen=True)
class TileGrid:
  """Where each tile of an image grid lies in its PNG, in pixels from the top left.

  Tiles run along rows of `columns`; row labels, if any, take `left` pixels before the first
  column, and each tile has `caption_lines` lines of text under it.
  """
  count: int
  columns: int
  tile: int  # Side of a tile: the image's side times its enlargement.
  left: int = _GAP
  caption_lines: int = 0

  @property
  def rows(self) -> int:
    return -(-self.count // self.columns)

  @property
  def cell(self) -> tuple[int, int]:
    """(width, height) of one tile with its caption and gap."""
    return self.tile + _GAP, self.tile + self.caption_lines * _CAPTION_LINE + _GAP

  @property
  def size(self) -> tuple[int, int]:
    """(width, height) of the whole PNG."""
    width, height = self.cell
    return self.left + self.columns * width, _TITLE + self.rows * height

  def box(self, index: int) -> tuple[int, int]:
    """(top, left) pixel of tile `index`."""
    row, column = divmod(index, self.columns)
    width, height = self.cell
    return _TITLE + row * height, self.left + column * width


def _tile_figure(grid: TileGrid, tiles: np.ndarray, path: str, title: str,
                 captions: list[str] | None = None, row_labels: list[str] | None = None) -> str:
  """Draws uint8 `tiles` [N, tile, tile, 3] at `grid`'s boxes, with captions and row labels."""
  width, height = grid.size
  figure = plt.figure(figsize=(width / DPI, height / DPI), dpi=DPI)
  figure.text(0.5, 1 - _TITLE / 2 / height, title, ha='center', va='center', fontsize=9)
  for index, tile in enumerate(tiles):
    top, left = grid.box(index)
    # `yo` is the image's lower edge, counted up from the bottom of the figure.
    figure.figimage(tile, xo=left, yo=height - top - grid.tile, origin='upper')
    if captions:
      figure.text((left + grid.tile / 2) / width, 1 - (top + grid.tile + 1) / height,
                  captions[index], ha='center', va='top', fontsize=7, linespacing=1.1)
  for row, label in enumerate(row_labels or []):
    top, _ = grid.box(row * grid.columns)
    figure.text((grid.left - _GAP) / width, 1 - (top + grid.tile / 2) / height, label,
                ha='right', va='center', fontsize=8)
  figure.savefig(path, dpi=DPI)
  plt.close(figure)
  return path


def enlarge(images: np.ndarray, factor: int) -> np.ndarray:
  """[N, H, W, C] -> [N, H * factor, W * factor, C], each pixel a factor x factor block."""
  return np.repeat(np.repeat(images, factor, axis=1), factor, axis=2)


def samples_grid(images: np.ndarray, names: list[str]) -> TileGrid:
  """The grid of `samples_per_class`: one row per class of `names`."""
  factor = 2 if len(names) <= 20 else 1
  longest = min(max(len(name) for name in names), _LABEL_CHARS)
  return TileGrid(count=len(images), columns=len(images) // len(names),
                  tile=images.shape[1] * factor, left=int(12 + 6 * longest) + _GAP)


def samples_per_class(images: np.ndarray, present: np.ndarray, names: list[str], path: str,
                      title: str) -> str:
  """A row of training images per class, labelled with its name.

  Args:
    images: uint8 [classes * per_class, 32, 32, 3], class by class.
    present: bool [classes * per_class]: False for the empty slots of a class with fewer images,
      left blank.
  """
  grid = samples_grid(images, names)
  tiles = enlarge(images, grid.tile // images.shape[1])
  labels = [name if len(name) <= _LABEL_CHARS else name[:_LABEL_CHARS - 1] + '…'
            for name in names]
  shown = [tile if filled else np.full_like(tile, 255) for tile, filled in zip(tiles, present,
                                                                               strict=True)]
  return _tile_figure(grid, np.stack(shown), path, title, row_labels=labels)


def batch_grid(images: np.ndarray, columns: int = 8) -> TileGrid:
  """The grid of `augmented_batch`."""
  return TileGrid(count=len(images), columns=columns,
                  tile=images.shape[1] * max(1, 96 // images.shape[1]), caption_lines=2)


def augmented_batch(images: np.ndarray, captions: list[str], path: str, title: str) -> str:
  """Images as a train step sees them (uint8 [N, S, S, 3], denormalised) with their targets."""
  grid = batch_grid(images)
  return _tile_figure(grid, enlarge(images, grid.tile // images.shape[1]), path, title,
                      captions=captions)


def class_counts(counts: dict[str, np.ndarray], names: list[str], path: str, title: str,
                 unit: str = 'class') -> str:
  """Bars of the images per class (or superclass: `unit`), one panel per split ({split: counts
  [classes]}).

  The panels are placed by hand, from the longest name: matplotlib's automatic layout measures
  every tick label, seconds for CIFAR-100's hundred.
  """
  many = len(names) > 20
  font = 6 if many else 8
  # Inches: a rotated name takes about 0.6 of its font size per character.
  labels = 0.15 + max(len(name) for name in names) * 0.6 * font / 72 * (1 if many else 0.72)
  panel, gap, top, side, bottom_margin = 1.9, 0.35, 0.45, 0.7, 0.1
  width = max(7.0, (0.16 if many else 0.6) * len(names) + 1.5)
  height = top + len(counts) * (gap + panel + labels) + bottom_margin
  figure = plt.figure(figsize=(width, height), dpi=DPI)
  for row, (split, values) in enumerate(counts.items()):
    bottom = height - top - (row + 1) * (gap + panel) - row * labels
    axis = figure.add_axes((side / width, bottom / height, 1 - (side + 0.2) / width,
                            panel / height))
    positions = np.arange(len(names))
    axis.bar(positions, values, color='#0969da')
    axis.set_xticks(positions, names, rotation=90 if many else 45,
                    ha='center' if many else 'right',
                    rotation_mode='default' if many else 'anchor', fontsize=font)
    axis.set_xlim(-0.6, len(names) - 0.4)
    axis.set_ylabel('images')
    low, high = int(values.min()), int(values.max())
    spread = f'{low:,}' if low == high else f'{low:,} to {high:,}'
    axis.set_title(f'{split}: {int(values.sum()):,} images, {spread} per {unit}', fontsize=9)
    if not many:  # Values on the bars, so an empty class still reads as 0.
      for x, value in zip(positions, values, strict=True):
        axis.text(x, value, f'{int(value):,}', ha='center', va='bottom', fontsize=7)
    axis.margins(y=0.12)
  figure.suptitle(title, y=1 - 0.22 / height, va='center')
  figure.savefig(path, dpi=DPI)
  plt.close(figure)
  return path

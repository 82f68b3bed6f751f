"""Instance ids over huge scenes: global building ids, exact merging across tile and chunk borders.

Pure arithmetic (numpy, scipy, scikit-image) on arrays the caller reads and
writes: no file I/O here. Arrays are ``(band, y, x)``; windows are
:class:`~terraseg.core.grid.PixelWindow` in scene pixels.

Two ways to get instances out of one chunk:

- **Boundary path** (a semantic model with building interior / edge / background
  classes): :func:`instances_from_boundary` runs a seeded watershed over the
  chunk (seeds: confident interior components; flooded: interior and edge). Its
  ties are broken by relative position only, so a chunk labelled with a halo as
  wide as the largest building gives exactly the one-pass labels over its core.
- **Detector path** (a Mask R-CNN-style model: per-tile masks, boxes, scores):
  :func:`merge_tile_detections` keeps each object once (a complete view, from the
  tile that owns its centroid where there is a choice), drops the copies its
  neighbour tiles saw, and joins the pieces of objects larger than the overlap;
  :func:`rasterize_instances` paints instances into a window.

One way to make ids global across chunks (:class:`InstanceMerger`, the approach
of dask-image's ``ndmeasure.label``):

1. pass 1, per chunk, any order: label the chunk on its own (local ids ``1..n``)
   over its core plus a halo of at least one pixel (``chunk.extent`` is ideal),
   and :meth:`InstanceMerger.add_chunk` it (or, on a Dask worker,
   :func:`summarize_chunk` it and send the few-kilobyte :class:`ChunkSummary` to
   :meth:`InstanceMerger.add_summary`). The merger keeps per-label stats and
   the 1-pixel strips along the core edges (and the halo pixels beyond them), and
   links labels across a face as soon as both of its chunks are in;
2. :meth:`InstanceMerger.finalize`: connected components of the links, numbered
   ``1..N`` by the smallest ``(chunk index, local id)`` in each, so ids do not
   depend on the order of pass 1; an :class:`InstanceTable` of per-instance id,
   mean score, pixel count, area and bbox;
3. pass 2, per chunk: label again (or reload the labels) and
   :meth:`RelabelTable.relabel` them to global ids over the core; write.

The face rule (:func:`face_links`): labels ``a`` (chunk A) and ``b`` (chunk B) are
one object when the two chunks' labelings agree on the pixels both labelled
along the face (A's edge row and B's edge row, via the halos): ``a`` and ``b``
share at least ``min_overlap`` (default 0.5) of the smaller one's pixels there.
Two buildings that touch exactly on the face are told apart, because each chunk
sees the wall between them in its halo; an oracle labelling (every chunk's labels
a relabelling of the same truth) merges back exactly into the truth. Without a
halo the rule falls back to facing runs (``a`` faces ``b`` along at least half the
shorter run), and two buildings whose common wall lies exactly on the face merge.

Invariants (each one a test): for oracle chunk labels, the merged result is the
truth up to a bijection of ids, touching buildings included; the result does not
depend on the order chunks are added; the merger's memory grows with the number
of instances, not with the chunk area, and it keeps no reference to chunk arrays.
"""

from __future__ import annotations

from terraseg.instances.detect import (
    Instance,
    TileDetections,
    merge_tile_detections,
    rasterize_instances,
)
from terraseg.instances.merge import InstanceMerger
from terraseg.instances.summary import ChunkSummary, face_links, summarize_chunk
from terraseg.instances.table import ChunkIndex, InstanceMergeError, InstanceTable, RelabelTable
from terraseg.instances.watershed import Landscape, instances_from_boundary

__all__ = [
    "ChunkIndex",
    "ChunkSummary",
    "Instance",
    "InstanceMergeError",
    "InstanceMerger",
    "InstanceTable",
    "Landscape",
    "RelabelTable",
    "TileDetections",
    "face_links",
    "instances_from_boundary",
    "merge_tile_detections",
    "rasterize_instances",
    "summarize_chunk",
]

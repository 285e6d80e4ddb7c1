"""Looking at a store: the tree of layers (``docker images --tree``), ``docker diff``,
``docker history``, and the disk that sharing saves, measured.

The tree is the tree of ChainIDs. Before Docker 1.10 every layer was an "image" with a parent
id, and ``docker images --tree`` drew those parents (the seed's output). Since then a pulled
image has no parent ids; what two images share is found from their layers: the same ChainID
means the same stack of layers up to there, so it is the same node of the tree, unpacked once.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from .. import overlay
from ..errors import Refused
from .image import Image, image, images
from .store import Store, check_name

__all__ = ["LayerNode", "Tree", "tree", "diff", "history", "HistoryLine", "Sizes", "sizes", "disk_usage",
           "human"]


def human(n: int) -> str:
    """Bytes as docker prints them: 1000-based (kB, MB), one decimal."""
    for unit, size in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def disk_usage(path: str) -> int:
    """Bytes ``path`` takes on disk (st_blocks, 512-byte units), each inode counted once (hard
    links), not following symlinks: what ``du -s`` measures."""
    seen: set[tuple[int, int]] = set()
    total = 0
    stack = [path]
    while stack:
        here = stack.pop()
        st = os.lstat(here)
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        total += st.st_blocks * 512
        if stat.S_ISDIR(st.st_mode):
            stack.extend(os.path.join(here, name) for name in os.listdir(here))
    return total


@dataclass(frozen=True)
class LayerNode:
    """One node of the tree: a ChainID, its parent's, its own size (the layer folder on disk),
    the virtual size (the whole stack up to here), the images whose top it is, how many images
    use it."""
    chain_id: str
    parent: str | None
    diff_id: str
    size: int
    virtual_size: int
    tags: tuple[str, ...]
    users: int

    @property
    def shared(self) -> bool:
        return self.users > 1


@dataclass(frozen=True)
class Tree:
    """The layers of a store as a tree (roots are the bottom layers)."""
    nodes: tuple[LayerNode, ...]

    def children(self, chain_id: str | None) -> list[LayerNode]:
        return [n for n in self.nodes if n.parent == chain_id]

    def __repr__(self) -> str:
        lines: list[str] = []

        def show(node: LayerNode, indent: str, last: bool) -> None:
            tags = f" Tags: {', '.join(node.tags)}" if node.tags else ""
            shared = f" (shared by {node.users} images)" if node.shared else ""
            lines.append(f"{indent}{'└─' if last else '├─'}{node.chain_id[7:19]} Size: {human(node.size)} "
                         f"Virtual Size: {human(node.virtual_size)}{tags}{shared}")
            kids = self.children(node.chain_id)
            for i, kid in enumerate(kids):
                show(kid, indent + ("  " if last else "│ "), i == len(kids) - 1)

        roots = self.children(None)
        for i, root in enumerate(roots):
            show(root, "", i == len(roots) - 1)
        return "\n".join(lines) if lines else "(no images)"

    def dot(self) -> str:
        """The tree as graphviz source: a box per layer (ChainID, size), an arrow from each layer
        to the ones built on it, and each image's name pointing at its top layer."""
        out = ["digraph layers {", '  rankdir=TB; node [fontname="Helvetica", fontsize=10];']
        for n in self.nodes:
            color = ', style=filled, fillcolor="#dbeafe"' if n.shared else ""
            label = f"{n.chain_id[7:19]}\\n{human(n.size)}" + (f"\\nshared by {n.users}" if n.shared else "")
            out.append(f'  "{n.chain_id}" [shape=box, label="{label}"{color}];')
            if n.parent:
                out.append(f'  "{n.parent}" -> "{n.chain_id}";')
            for tag in n.tags:
                out.append(f'  "image:{tag}" [shape=note, label="{tag}"];')
                out.append(f'  "image:{tag}" -> "{n.chain_id}" [style=dashed, arrowhead=none];')
        out.append("}")
        return "\n".join(out) + "\n"


def _layer_size(store: Store, chain_id: str) -> int:
    return disk_usage(store.layer_dir(chain_id)) if store.has_layer(chain_id) else 0


def tree(store: Store) -> Tree:
    """Every image's layers as one tree of ChainIDs, with sizes and what is shared."""
    imgs = images(store)
    users: dict[str, set[str]] = {}
    info: dict[str, tuple[str | None, str]] = {}
    tags: dict[str, list[str]] = {}
    for img in imgs:
        parent = None
        for layer in img.layers:
            users.setdefault(layer.chain_id, set()).add(img.name)
            info[layer.chain_id] = (parent, layer.diff_id)
            parent = layer.chain_id
        if img.layers:
            tags.setdefault(img.chain_id, []).append(img.name)
    sizes = {c: _layer_size(store, c) for c in info}

    def virtual(c: str | None) -> int:
        total = 0
        while c is not None:
            total += sizes[c]
            c = info[c][0]
        return total

    nodes = tuple(LayerNode(c, info[c][0], info[c][1], sizes[c], virtual(c), tuple(sorted(tags.get(c, []))),
                            len(users[c])) for c in sorted(info, key=lambda c: (virtual(info[c][0]), c)))
    return Tree(nodes)


def diff(store: Store, image_or_upper: str, lowers=None) -> list[overlay.Change]:
    """``docker diff``: A/C/D lines. Given an image name, what its top layer changed over the
    layers below it; given an upper folder (a live container's, say), what it changed over
    ``lowers`` (overlay.changes)."""
    if image_or_upper.startswith("/"):
        if lowers is None:
            raise Refused("give the lower folders that the upper folder is compared with")
        return overlay.changes(image_or_upper, lowers)
    img = image(store, check_name(image_or_upper))
    top = img.layers[-1]
    below = [store.layer_dir(layer.chain_id) for layer in reversed(img.layers[:-1])]
    return overlay.changes(store.layer_dir(top.chain_id), below)


@dataclass(frozen=True)
class HistoryLine:
    """One line of ``docker history``: the layer it made (ChainID) or none, its size, and how."""
    chain_id: str | None
    size: int
    created: str
    created_by: str
    comment: str

    def __repr__(self) -> str:
        layer = self.chain_id[7:19] if self.chain_id else "<missing>   "
        return f"{layer}  {self.created}  {human(self.size):>8}  {self.created_by}" + \
            (f"  ({self.comment})" if self.comment else "")


def history(store: Store, name: str) -> list[HistoryLine]:
    """``docker history NAME``: newest first, each step with the layer it made (an empty_layer
    step made none) and that layer's size on disk."""
    img = image(store, name)
    lines = []
    layer_iter = iter(img.layers)
    for h in img.history:
        layer = None if h.empty_layer else next(layer_iter, None)
        lines.append(HistoryLine(layer.chain_id if layer else None,
                                 _layer_size(store, layer.chain_id) if layer else 0, h.created, h.created_by,
                                 h.comment))
    return lines[::-1]


@dataclass(frozen=True)
class Sizes:
    """Disk used by a store's images, measured from the unpacked layer folders: per layer, per
    image (its whole stack), all images counted each on its own (as if nothing were shared), and
    what the store really uses with sharing (each layer once)."""
    per_layer: dict
    per_image: dict
    without_sharing: int
    with_sharing: int
    blobs: int

    @property
    def saved(self) -> int:
        return self.without_sharing - self.with_sharing

    def __repr__(self) -> str:
        rows = [f"  {name:<20} {human(size):>9}" for name, size in sorted(self.per_image.items())]
        return "\n".join(["Sizes(per image, whole stack:"] + rows + [
            f"  without sharing {human(self.without_sharing)}, with sharing {human(self.with_sharing)}: "
            f"saved {human(self.saved)}; blobs {human(self.blobs)})"])


def sizes(store: Store) -> Sizes:
    imgs: list[Image] = images(store)
    per_layer = {}
    for img in imgs:
        for layer in img.layers:
            per_layer.setdefault(layer.chain_id, _layer_size(store, layer.chain_id))
    per_image = {img.name: sum(per_layer[layer.chain_id] for layer in img.layers) for img in imgs}
    blobs = 0
    for digest in store.blobs():
        blobs += os.stat(store.blob_path(digest)).st_blocks * 512
    return Sizes(per_layer, per_image, sum(per_image.values()), sum(per_layer.values()), blobs)


"""Image layers, content-addressed (chapter 06): what ``docker pull``, ``docker build`` and
``docker images --tree`` do, on the lab's own overlayfs.

The parts, floor to roof:

* ``store``   blobs named by their sha256 (written atomically, verified on every read), the
              index of names, the locks; the store *is* an OCI image layout;
* ``layers``  an upper folder as a tar (overlay whiteouts to OCI ``.wh.`` files) and back, the
              safe extractor (R17), and the three identities: blob digest, DiffID, ChainID;
* ``image``   configs and manifests; build a step on an overlay; a busybox-static base; rmi, gc;
* ``view``    the tree of ChainIDs (``docker images --tree``), ``docker diff``, ``docker
              history``, the disk that sharing saves;
* ``oci``     export one image as an OCI image layout, import one (verified, atomic: R3).

    from labhelper import images
    store = images.Store()                              # /var/lib/labhelper/images
    images.busybox_image(store)                         # a one-layer base
    images.build(store, "busybox", "web:1", run=["/bin/sh", "-c", "echo hi > /etc/motd"])
    images.tree(store)
"""
from __future__ import annotations

from .image import (History, Image, Layer, Removed, architecture, build, busybox_image, busybox_rootfs, commit,
                    ensure_layers, gc, image, images, import_tree, rmi, static_busybox, unpack)
from .layers import (KEPT_XATTRS, OPAQUE_MARKER, WHITEOUT_PREFIX, Extracted, LayerBlob, chain_id, chain_ids,
                     diff_id_of, extract, write_layer)
from .dockerfile import build_file
from .oci import export, import_layout
from .store import (CONFIG_MEDIA_TYPE, DEFAULT_ROOT, INDEX_MEDIA_TYPE, LAYER_GZIP_MEDIA_TYPE, LAYER_MEDIA_TYPE,
                    MANIFEST_MEDIA_TYPE, REF_NAME, Descriptor, Store, check_digest, check_name)
from .view import HistoryLine, LayerNode, Sizes, Tree, diff, disk_usage, history, human, sizes, tree

__all__ = ["Store", "Descriptor", "DEFAULT_ROOT", "REF_NAME", "INDEX_MEDIA_TYPE", "MANIFEST_MEDIA_TYPE",
           "CONFIG_MEDIA_TYPE", "LAYER_MEDIA_TYPE", "LAYER_GZIP_MEDIA_TYPE", "check_digest", "check_name",
           "WHITEOUT_PREFIX", "OPAQUE_MARKER", "KEPT_XATTRS", "chain_id", "chain_ids", "diff_id_of", "LayerBlob",
           "write_layer", "Extracted", "extract",
           "Image", "Layer", "History", "Removed", "architecture", "image", "images", "build", "commit",
           "import_tree", "busybox_rootfs", "busybox_image", "ensure_layers", "unpack", "rmi", "gc",
           "Tree", "LayerNode", "tree", "diff", "history", "HistoryLine", "Sizes", "sizes", "disk_usage", "human",
           "export", "import_layout", "build_file", "static_busybox"]

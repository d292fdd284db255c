"""ImageNet's folder layouts for ``folder:`` datasets: class folders named by WordNet id (ImageNet-1k val,
-Sketch, -A, -R, as their archives unpack) or by label index (ImageNet-V2's release), mapped to the shipped
ImageNet-1k class names (``prompts``) and, for ImageNet-A/-R, to their own 200 classes."""

from __future__ import annotations

import re

from vlscale.errors import UserError
from vlscale.eval.prompts import (IMAGENET_SUBSETS, imagenet_classnames, imagenet_subset_classnames,
                                  imagenet_subset_indices, imagenet_wnids)

WNID = re.compile(r"^n\d{8}$")  # a WordNet synset id, as ImageNet names its classes


def folder_classes(root: str, folder_names: list[str], classnames, canonical: str):
    """(class names, folder -> label) for the ImageNet layouts, else None (folders are class names).
    ``canonical``: the dataset's canonical name (``image_sets.CANONICAL_NAMES``, else its own).

    * WordNet ids (``n01440764``): the shipped ImageNet-1k names (or 1000 ``--classnames`` in its label
      order). When the folders are exactly ImageNet-R's or -A's 200 classes (or a part of them in a folder named
      imagenet-r / imagenet-a), the benchmark's own 200 classes, as its authors score it; otherwise all 1000 (a
      part of ImageNet-1k is still scored among its 1000 classes).
    * Label indices (``0`` .. ``999``): the index into ``--classnames``, or into ImageNet-1k's names when the
      dataset is ImageNet-V2 (its release unpacks this way; say so with ``--name imagenetv2`` if the folder is
      named otherwise).
    """
    if all(n.isdigit() for n in folder_names):
        if classnames is None and "imagenetv2" not in canonical.replace("-", "").replace("_", ""):
            raise UserError(f"folder:{root}: its sub-folders are numbers (label indices); pass --classnames FILE "
                            "with the class names in label order (or --name imagenetv2 for ImageNet-V2)")
        names = list(classnames) if classnames is not None else imagenet_classnames()
        big = [n for n in folder_names if int(n) >= len(names)]
        if big:
            raise UserError(f"folder:{root}: sub-folder {big[0]!r} is past the {len(names)} class names")
        return names, {n: int(n) for n in folder_names}
    if not all(WNID.match(n) for n in folder_names) or (classnames is not None and len(classnames) != 1000):
        return None  # class-name folders (or WordNet-id folders matched against the user's own names)
    position = {w: i for i, w in enumerate(imagenet_wnids())}
    unknown = [n for n in folder_names if n not in position]
    if unknown:
        raise UserError(f"folder:{root}: sub-folder {unknown[0]!r} is a WordNet id of no ImageNet-1k class; pass "
                        "--classnames FILE with the names of these classes")
    present = {position[n] for n in folder_names}
    if classnames is not None:  # 1000 names of the user's, in ImageNet-1k's label order
        return list(classnames), {n: position[n] for n in folder_names}
    for subset in IMAGENET_SUBSETS:
        indices = imagenet_subset_indices(subset)
        if present == set(indices) or (canonical == subset and present <= set(indices)):
            label = {k: j for j, k in enumerate(indices)}
            return imagenet_subset_classnames(subset), {n: label[position[n]] for n in folder_names}
    return imagenet_classnames(), {n: position[n] for n in folder_names}

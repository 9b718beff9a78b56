"""The segment-roles table: rows read from, roles and spread (levels, disc) written to segment tags."""

from __future__ import annotations

from typing import List, Tuple

from ..errors import InputError
from ..mrml import (
    DISC_TAG,
    LEVELS_TAG,
    ROLE_TAG,
    ROLES,
    get_segment_role,
    get_segment_spread,
    segment_ids,
    segment_name,
    set_segment_role,
    set_segment_spread,
)

ROLE_CHOICES = ROLES


def segment_role_rows(segmentation_node) -> List[Tuple[str, str, str]]:
    """(segment id, name, role) per segment, in the segmentation's order: the rows of the
    panel's roles table. The role is the segment's tag, else what its name suggests."""
    if segmentation_node is None:
        return []
    return [(sid, segment_name(segmentation_node, sid), get_segment_role(segmentation_node, sid))
            for sid in segment_ids(segmentation_node)]


def set_role(segmentation_node, segment_id: str, role: str) -> bool:
    """Store a role as the segment's tag (saved with the scene); False when it was already so."""
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    if segment is None:
        raise InputError(f"segment '{segment_id}' is not in '{segmentation_node.GetName()}'")
    if segment.HasTag(ROLE_TAG) and get_segment_role(segmentation_node, segment_id) == role:
        return False
    set_segment_role(segmentation_node, segment_id, role)
    return True


DISC_CHOICES = ("", "destroyed", "spared")  # "" not recorded


def segment_spread(segmentation_node, segment_id: str) -> Tuple[int, str]:
    """(levels involved, 0 when not recorded; disc state in DISC_CHOICES) from the segment's tags."""
    levels, destroyed = get_segment_spread(segmentation_node, segment_id)
    return (levels or 0), {None: "", True: "destroyed", False: "spared"}[destroyed]


def set_spread(segmentation_node, segment_id: str, levels: int, disc: str) -> None:
    """Record a lesion's vertebral levels (0: not recorded) and disc state ("" not recorded)
    as segment tags (saved with the scene), as the command line's --levels and --disc do."""
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    if segment is None:
        raise InputError(f"segment '{segment_id}' is not in '{segmentation_node.GetName()}'")
    if disc not in DISC_CHOICES:
        raise InputError(f"disc state '{disc}': use one of destroyed, spared or leave it empty")
    if not levels:
        segment.RemoveTag(LEVELS_TAG)
    if not disc:
        segment.RemoveTag(DISC_TAG)
    set_segment_spread(segmentation_node, segment_id, int(levels) or None,
                       {"": None, "destroyed": True, "spared": False}[disc])

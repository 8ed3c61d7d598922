"""One palette for every drawing renderer (DOT, Mermaid, notebook), so a
backward op or a witness looks the same everywhere."""
from __future__ import annotations

from typing import Dict

from ..views import Box, Cluster

# fill, border, text
PALETTE: Dict[str, tuple] = {
    "op": ("#e8f0fe", "#4a6fa5", "#1b2a41"),
    "op_backward": ("#fdebd3", "#b86b1e", "#3d2406"),
    "op_other": ("#ece6f6", "#6a4fa0", "#2b1d47"),
    "module": ("#dcefdc", "#3f7a3f", "#173117"),
    "module_backward": ("#f9dfc4", "#a65d17", "#3d2406"),
    "chunk": ("#eeeeee", "#777777", "#222222"),
    "input": ("#fff4c2", "#a08400", "#3b3100"),
    "param": ("#f4f4f4", "#9a9a9a", "#555555"),
    "output": ("#fff4c2", "#a08400", "#3b3100"),
    "witness": ("#ffe1e1", "#c0392b", "#5c0d05"),
}
CLUSTER = {
    "module": ("#f7f9fc", "#9aa7b8"),
    "module_backward": ("#fff8f0", "#d2a77b"),
    "loop": ("#fffbea", "#b08a2e"),
}
EDGE = {"forward": "#5b6b80", "backward": "#c77c2b", "other": "#7d62b3", "source": "#b0b0b0"}
MUTED = "#5f6b7a"
ALERT = "#c0392b"  # what a drawing of an incomplete pass says at its top (a witness's red)


def box_style(b: Box) -> str:
    """The palette key of a box."""
    if b.witness:
        return "witness"
    if b.kind in ("param", "buffer", "constant"):
        return "param"
    if b.kind in ("input", "output", "chunk"):
        return b.kind
    suffix = "" if b.phase == "forward" else "_backward" if b.phase in ("backward", "recompute") else "_other"
    if b.kind == "module":
        return "module" + ("" if not suffix else "_backward")
    return "op" + suffix


def cluster_style(c: Cluster) -> str:
    if c.kind == "loop":
        return "loop"
    return "module" if c.phase == "forward" else "module_backward"


def edge_color(phase: str, from_source: bool) -> str:
    if from_source:
        return EDGE["source"]
    return EDGE["forward"] if phase == "forward" else EDGE["backward"] if phase in (
        "backward", "recompute") else EDGE["other"]

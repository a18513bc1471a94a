"""How a teacher is fed: layout, channel order, pixel scaling and input size, detected or declared.

Every teacher in this project is called with the project's own input (RGB NCHW 112x112, ``(x-127.5)/127.5``,
see ``distill/data/transforms.py``). Teachers from outside expect other things: insightface model-zoo files
normalise inside (leading Sub/Mul), models converted from TensorFlow take NHWC raw pixels, some are BGR or
224x224. ``InputContract.feed`` turns the project's input into exactly what one teacher expects, so the
rest of the pipeline never needs to know where the teacher came from.

What can be read from the file unambiguously is detected (layout and size from the input shape, a leading
affine normalisation from the graph's first nodes); the rest comes from ``teacher.input`` in the config or
the project's convention, and every field records which of the three it was.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from distill.data.transforms import IMAGE_SIZE, PIXEL_MEAN, PIXEL_STD
from distill.errors import InputError

LAYOUTS = ("NCHW", "NHWC")
CHANNEL_ORDERS = ("RGB", "BGR")
# Elementwise ops that may open a graph as its input normalisation (with a constant other operand).
_AFFINE_OPS = ("Sub", "Add", "Mul", "Div")
# Ops that only move or retype the input on its way to the normalisation.
_PASS_OPS = ("Transpose", "Cast", "Identity")


@dataclass(frozen=True)
class InputContract:
    """Exactly what one teacher takes; ``origin`` says per field if it was detected, declared or default."""

    layout: str = "NCHW"
    channels: str = "RGB"
    mean: tuple[float, float, float] = (PIXEL_MEAN,) * 3  # in the model's channel order, on 0..255 pixels
    std: tuple[float, float, float] = (PIXEL_STD,) * 3
    size: int = IMAGE_SIZE
    batch: int | None = None  # the one batch size the model runs at; None: any
    origin: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def is_native(self) -> bool:
        """True when the project's own input is already what the teacher wants (feed is the identity)."""
        return (
            self.layout == "NCHW"
            and self.channels == "RGB"
            and self.size == IMAGE_SIZE
            and all(m == PIXEL_MEAN for m in self.mean)
            and all(s == PIXEL_STD for s in self.std)
        )

    def feed(self, x: torch.Tensor) -> torch.Tensor:
        """Project input (N,3,112,112 normalised RGB) -> this teacher's input (float32, its layout)."""
        if self.is_native:
            return x
        raw = x.float() * PIXEL_STD + PIXEL_MEAN  # back to 0..255 RGB: exact inverse of to_model_input
        if self.size != raw.shape[-1]:
            raw = F.interpolate(
                raw,
                size=(self.size, self.size),
                mode="bilinear",
                align_corners=False,
                antialias=self.size < raw.shape[-1],
            )
        if self.channels == "BGR":
            raw = raw.flip(1)
        mean = torch.tensor(self.mean, dtype=raw.dtype, device=raw.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=raw.dtype, device=raw.device).view(1, 3, 1, 1)
        out = (raw - mean) / std
        if self.layout == "NHWC":
            out = out.permute(0, 2, 3, 1)
        return out.contiguous()

    @property
    def scaling(self) -> str:
        if all(m == 0 for m in self.mean) and all(s == 1 for s in self.std):
            return "raw 0..255"
        return f"(x - {_fmt(self.mean)}) / {_fmt(self.std)}"

    def summary(self) -> str:
        """Short form for error lines: ``NHWC RGB raw 0..255 224x224``."""
        return f"{self.layout} {self.channels} {self.scaling} {self.size}x{self.size}"

    def describe(self) -> str:
        """One line for the console: how the teacher is fed and where each choice came from."""
        scaling = self.scaling
        parts = [
            f"{self.layout} [{self._origin('layout')}]",
            f"{self.channels} [{self._origin('channels')}]",
            f"{scaling} [{self._origin('scaling')}]",
            f"{self.size}x{self.size}"
            + (" (resized from 112)" if self.size != IMAGE_SIZE else "")
            + f" [{self._origin('size')}]",
            ("any batch" if self.batch is None else f"batch {self.batch}") + f" [{self._origin('batch')}]",
        ]
        return "teacher input: " + ", ".join(parts)

    def _origin(self, key: str) -> str:
        return self.origin.get(key, "default")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InputContract:
        return cls(
            layout=d["layout"],
            channels=d["channels"],
            mean=tuple(float(v) for v in d["mean"]),  # type: ignore[arg-type]
            std=tuple(float(v) for v in d["std"]),  # type: ignore[arg-type]
            size=int(d["size"]),
            batch=None if d.get("batch") is None else int(d["batch"]),
            origin=dict(d.get("origin") or {}),
        )


def _fmt(values: tuple[float, ...]) -> str:
    if len(set(values)) == 1:
        return f"{values[0]:g}"
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


def per_channel(value: float | list[float] | None, where: str) -> tuple[float, float, float] | None:
    """A config's scalar or 3-list as three floats (None stays None: not declared)."""
    if value is None:
        return None
    values = [value] if isinstance(value, (int, float)) else list(value)
    if len(values) == 1:
        values = values * 3
    if len(values) != 3:
        raise InputError(f"{where}: give one number or three (one per channel), got {len(values)}")
    return (float(values[0]), float(values[1]), float(values[2]))


# ------------------------------------------------------------------------------------------ detection
@dataclass
class Detected:
    """What an input shape and a graph's first nodes say about how to feed the model."""

    layout: str | None = None
    size: int | None = None
    normalises_inside: str | None = None  # the leading ops, e.g. "Sub 127.5, Mul 0.0078125"
    expects_unit_range: bool = False  # the inner normalisation is meant for 0..1 pixels, not 0..255


def layout_from_shape(shape: list[Any], where: str) -> tuple[str | None, int | None]:
    """(layout, square size) an image input shape states; None where the shape does not say.

    A 4-D shape with a 3 in exactly one of the channel positions (1 or 3) names its layout. A channel
    count other than 3 (greyscale, RGBA) or a non-square fixed size is an InputError.
    """
    if len(shape) != 4:
        raise InputError(
            f"{where}: has shape {shape}, expected a 4-D image batch ([N, 3, H, W] or [N, H, W, 3])"
        )
    c1, c3 = shape[1], shape[3]
    if c1 == 3 and c3 != 3:
        layout = "NCHW"
    elif c3 == 3 and c1 != 3:
        layout = "NHWC"
    elif c1 == 3 and c3 == 3:
        layout = None  # [N, 3, H, 3]: nonsense for a face model, but not ours to decide
    else:
        raise InputError(
            f"{where}: has shape {shape}, expected 3 colour channels: [N, 3, H, W] or [N, H, W, 3]"
        )
    hw = (shape[2], shape[3]) if layout == "NCHW" else (shape[1], shape[2]) if layout == "NHWC" else ()
    fixed = [d for d in hw if isinstance(d, int) and d > 0]
    if len(fixed) == 2 and fixed[0] != fixed[1]:
        raise InputError(
            f"{where}: has shape {shape}: input is {fixed[0]}x{fixed[1]}, expected a square face crop"
        )
    return layout, (fixed[0] if fixed else None)


def leading_normalisation(graph: Any, input_name: str) -> tuple[str | None, bool]:
    """The affine normalisation a graph opens with, as insightface's ArcFaceONNX looks for it.

    Follows the input through ops that only move it (Transpose, Cast) and elementwise Sub/Add/Mul/Div with
    a constant operand. Returns (a description such as ``"Sub 127.5, Mul 0.0078125"`` or None, whether the
    constants are meant for 0..1 pixels). insightface matches node *names*; this reads the ops and their
    constants, so renamed nodes are found and a Sub that is not a normalisation (no constant) is not.
    """
    from onnx import numpy_helper

    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    consts[node.output[0]] = numpy_helper.to_array(a.t)
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    current, ops = input_name, []
    affine_lo, affine_hi = 0.0, 255.0  # where 0..255 pixels end up after the ops found so far
    unit_lo, unit_hi = 0.0, 1.0
    for _ in range(8):
        users = consumers.get(current, [])
        if len(users) != 1:
            break
        node = users[0]
        if node.op_type in _PASS_OPS:
            current = node.output[0]
            continue
        if node.op_type not in _AFFINE_OPS:
            break
        other = [n for n in node.input if n != current]
        if (
            len(other) != 1
            or other[0] not in consts
            or node.input[0] != current
            and node.op_type in ("Sub", "Div")
        ):
            break  # not "x op constant": a constant minus x, or x over a computed value, is no normalisation
        c = float(np.mean(consts[other[0]]))
        ops.append(f"{node.op_type} {c:g}")

        def apply(v: float, op: str = node.op_type, k: float = c) -> float:
            return {"Sub": v - k, "Add": v + k, "Mul": v * k, "Div": v / k if k else float("inf")}[op]

        affine_lo, affine_hi = apply(affine_lo), apply(affine_hi)
        unit_lo, unit_hi = apply(unit_lo), apply(unit_hi)
        current = node.output[0]
    if not ops:
        return None, False
    # Normalised pixels live within a few units of zero; if 0..255 overshoots that but 0..1 fits, the
    # constants were written for 0..1 input (ImageNet-style mean 0.485, std 0.229).
    span_255 = max(abs(affine_lo), abs(affine_hi))
    span_1 = max(abs(unit_lo), abs(unit_hi))
    return ", ".join(ops), bool(span_255 > 10 and span_1 <= 10)


def detect_onnx(model: Any, input_name: str, shape: list[Any], where: str) -> Detected:
    """All the file itself says about its input (``layout_from_shape``, ``leading_normalisation``)."""
    layout, size = layout_from_shape(shape, where)
    inside, unit = leading_normalisation(model.graph, input_name)
    return Detected(layout=layout, size=size, normalises_inside=inside, expects_unit_range=unit)


def resolve_contract(
    detected: Detected,
    layout: str = "auto",
    channels: str = "RGB",
    mean: float | list[float] | None = None,
    std: float | list[float] | None = None,
    size: int = 0,
    where: str = "teacher",
) -> InputContract:
    """Combine what the file says with what the config declares; a contradiction is an InputError."""
    origin: dict[str, str] = {}
    if layout == "auto":
        if detected.layout is None:
            raise InputError(f"{where}: the input shape does not say NCHW or NHWC: set teacher.input.layout")
        final_layout = detected.layout
        origin["layout"] = "detected from the input shape"
    else:
        if layout not in LAYOUTS:
            raise InputError(f"teacher.input.layout: must be auto, NCHW or NHWC; got '{layout}'")
        if detected.layout is not None and detected.layout != layout:
            raise InputError(
                f"{where}: teacher.input.layout is {layout} but the file's input is {detected.layout}"
            )
        final_layout, origin["layout"] = layout, "declared"
    if channels not in CHANNEL_ORDERS:
        raise InputError(f"teacher.input.channels: must be RGB or BGR; got '{channels}'")
    origin["channels"] = "declared" if channels != "RGB" else "default (RGB; a file cannot say)"

    m, s = per_channel(mean, "teacher.input.mean"), per_channel(std, "teacher.input.std")
    if (m is None) != (s is None):
        raise InputError("teacher.input: declare mean and std together (raw 0..255 is mean 0, std 1)")
    if m is not None and s is not None:
        if any(v == 0 for v in s):
            raise InputError(f"teacher.input.std: must not be 0, got {list(s)}")
        origin["scaling"] = "declared"
    elif detected.normalises_inside and detected.expects_unit_range:
        m, s = (0.0,) * 3, (255.0,) * 3
        origin["scaling"] = f"detected: normalises inside ({detected.normalises_inside}) on 0..1 pixels"
    elif detected.normalises_inside:
        m, s = (0.0,) * 3, (1.0,) * 3
        origin["scaling"] = f"detected: normalises inside ({detected.normalises_inside})"
    else:
        m, s = (PIXEL_MEAN,) * 3, (PIXEL_STD,) * 3
        origin["scaling"] = "default: no normalisation found in the file"

    if size < 0:
        raise InputError(f"teacher.input.size: must be 0 (from the file) or a size in pixels, got {size}")
    if size == 0:
        final_size = detected.size or IMAGE_SIZE
        origin["size"] = "detected from the input shape" if detected.size else "default"
    else:
        if detected.size is not None and detected.size != size:
            raise InputError(
                f"{where}: teacher.input.size is {size} but the file's input is "
                f"{detected.size}x{detected.size}"
            )
        final_size, origin["size"] = size, "declared"
    if final_size < 16:
        raise InputError(f"{where}: input size {final_size} is too small for a face crop")
    return InputContract(
        layout=final_layout, channels=channels, mean=m, std=s, size=final_size, origin=origin
    )

"""Reads a torchvision eval transform as people have it at hand — what `print(transform)` shows
for a `transforms.Compose` (v1 or v2), or the same steps written on one line — into the
arguments of `preprocess.make_spec`.

    Compose(
        Resize(size=256, interpolation=bilinear, max_size=None, antialias=True)
        CenterCrop(size=(224, 224))
        ToTensor()
        Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    )

Understood: Resize (an int: the shorter side; a pair (h, w): the whole image), CenterCrop,
ToTensor / PILToTensor + ConvertImageDtype / ToImage + ToDtype(scale=True), Normalize. Anything
else — random augmentations, Grayscale, Lambda — is refused with the reason, since the service
could not reproduce it.
"""

from __future__ import annotations

import ast
import re

from .convert import ConvertError
from .preprocess import INTERPOLATIONS

IGNORED = {"Compose"}
TO_FLOAT = {"ToTensor", "ConvertImageDtype", "ToDtype"}
NO_OP = {"PILToTensor", "ToImage", "ToPILImage", "ToImageTensor"}


def _value(node):
    """Literal values, plus bare names (`bilinear`, `InterpolationMode.BICUBIC`,
    `torch.float32`) as lower-case strings."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_value(e) for e in node.elts]
    if isinstance(node, ast.Name):
        return node.id.lower()
    if isinstance(node, ast.Attribute):
        return node.attr.lower()
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_value(node.operand)
    raise ConvertError(f"cannot read {ast.unparse(node)!r} in the transform")


def _steps(text: str) -> list[tuple[str, list, dict]]:
    body = text.strip()
    m = re.fullmatch(r"(?s)\s*Compose\s*\((.*)\)\s*", body)
    if m:
        body = m.group(1)
    # One level of nested parentheses inside a step: `CenterCrop(size=(224, 224))`.
    calls = re.findall(r"([A-Za-z_]\w*)\s*\(((?:[^()]|\([^()]*\))*)\)", body)
    rest = re.sub(r"([A-Za-z_]\w*)\s*\(((?:[^()]|\([^()]*\))*)\)", "", body)
    if rest.strip(" \n\t,;"):
        raise ConvertError(f"cannot read {rest.strip()[:60]!r} in the transform: give its steps "
                           "as print(transform) shows them, e.g. 'Resize(256), CenterCrop(224), "
                           "ToTensor(), Normalize(mean=[...], std=[...])'")
    steps = []
    for name, args in calls:
        try:
            call = ast.parse(f"f({args})", mode="eval").body
        except SyntaxError:
            raise ConvertError(f"cannot read the arguments of {name}({args})") from None
        steps.append((name, [_value(a) for a in call.args],
                      {k.arg: _value(k.value) for k in call.keywords}))
    if not steps:
        raise ConvertError("the transform has no steps")
    return steps


def _hw(v, what: str) -> tuple[int, int] | int:
    if isinstance(v, list) and len(v) == 1:
        v = v[0]
    if isinstance(v, int):
        return v
    if isinstance(v, list) and len(v) == 2 and all(isinstance(x, int) for x in v):
        return v[0], v[1]
    raise ConvertError(f"{what} size {v!r}: expected an int or (height, width)")


def parse_transform(text: str) -> dict:
    args: dict = {}
    to_float = False
    for name, pos, kw in _steps(text):
        if name in IGNORED or name in NO_OP:
            continue
        if name == "Resize":
            size = _hw(kw.get("size", pos[0] if pos else None), "Resize")
            if kw.get("max_size") is not None:
                raise ConvertError("Resize(max_size=...) is not supported: the service resizes "
                                   "the shorter side only")
            if kw.get("antialias") is False:
                raise ConvertError("Resize(antialias=False) is not supported: the service "
                                   "resizes as Pillow does, always antialiased")
            interp = kw.get("interpolation", pos[1] if len(pos) > 1 else "bilinear")
            if interp not in INTERPOLATIONS:
                raise ConvertError(f"Resize interpolation {interp!r} is not supported: one of "
                                   f"{', '.join(INTERPOLATIONS)} (nearest is not)")
            args["filter"] = INTERPOLATIONS[interp]
            if isinstance(size, tuple):
                args["size"] = (size[1], size[0])
            else:
                args["shorter_side"] = size
        elif name == "CenterCrop":
            size = _hw(kw.get("size", pos[0] if pos else None), "CenterCrop")
            args["crop"] = (size[1], size[0]) if isinstance(size, tuple) else (size, size)
        elif name in TO_FLOAT:
            scale = kw.get("scale", True if name != "ToDtype" else False)
            args["scale"] = 1.0 / 255.0 if scale else 1.0
            to_float = True
        elif name == "Normalize":
            mean, std = kw.get("mean", pos[0] if pos else None), kw.get(
                "std", pos[1] if len(pos) > 1 else None)
            if not (isinstance(mean, list) and isinstance(std, list)
                    and len(mean) == 3 and len(std) == 3):
                raise ConvertError("Normalize needs three-channel mean=[...] and std=[...]")
            args["mean"], args["std"] = tuple(mean), tuple(std)
        elif name.startswith("Random") or name in ("ColorJitter", "AutoAugment", "RandAugment",
                                                    "TrivialAugmentWide", "AugMix"):
            raise ConvertError(f"{name} is a random training augmentation: give the transform "
                               "the model was evaluated with")
        else:
            raise ConvertError(f"transform step {name} is not supported by the service (it "
                               "understands Resize, CenterCrop, ToTensor/ToDtype, Normalize)")
    if "size" not in args and "shorter_side" not in args:
        raise ConvertError("the transform has no Resize: the service needs to know the input "
                           "size the model was trained at")
    if not to_float:
        raise ConvertError("the transform has no ToTensor() (or ToDtype(scale=True)): say how "
                           "pixels became floats")
    return args

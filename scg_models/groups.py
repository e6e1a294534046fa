"""Module groups: named, ordered selections of autoencoder modules.

Groups are data that travel with a checkpoint. Files in the authors' formats carry
none, so they get :data:`AUTHORS_GROUPS`, the ten groups of the released model in
the authors' order (``HyperColumnLGN.groups``).
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

from .errors import SCGError

#: (name, modules, description) of the released 16-module model, in the authors' order.
AUTHORS_GROUPS: tuple[tuple[str, tuple[int, ...], str], ...] = (
    ("HC0", (0, 1, 4, 8, 9, 15), "colour: all colour-sensitive modules"),
    ("HC1", (2, 3), "brightness: the luminance modules"),
    ("HC2", (5, 12), "edges: centre-surround structure, no colour"),
    ("HC3", (10,), "edges: one structure module (sketches, line art)"),
    ("HC4", (6, 7), "high spatial frequency"),
    ("HC5", (11, 13, 14), "highest spatial frequency"),
    ("HC6", (5,), "single module 5 (part of HC2)"),
    ("HC7", (12,), "single module 12 (part of HC2)"),
    ("HC8", (2,), "single module 2 (part of HC1)"),
    ("HC9", (3,), "single module 3 (part of HC1)"),
)


def authors_groups() -> list[dict]:
    """The released model's groups as config entries ``{name, modules, description}``."""
    return [{"name": n, "modules": list(m), "description": d} for n, m, d in AUTHORS_GROUPS]


def default_groups(n_vector: int) -> list[dict]:
    """Groups for a model that brings none: the authors' ten at 16 modules, else one per module."""
    if n_vector == 16:
        return authors_groups()
    return [{"name": f"M{i}", "modules": [i], "description": f"module {i}"} for i in range(n_vector)]


def validate_groups(groups: Sequence[Mapping], n_vector: int) -> list[dict]:
    """Check group entries against ``n_vector`` modules; return clean copies."""
    out, seen = [], set()
    for i, g in enumerate(groups):
        if not isinstance(g, Mapping) or "name" not in g or "modules" not in g:
            raise SCGError(f"groups[{i}] must be a mapping with 'name' and 'modules'; got {g!r}")
        name = str(g["name"]).strip()
        if not name or name in seen:
            raise SCGError(f"groups[{i}] has an empty or duplicate name {name!r}")
        seen.add(name)
        modules = check_modules(g["modules"], n_vector, what=f"group {name!r}")
        out.append({"name": name, "modules": modules, "description": str(g.get("description", ""))})
    return out


def check_modules(modules: Iterable, n_vector: int, what: str = "modules") -> list[int]:
    """Validate module indices (unique, in ``0..n_vector-1``, not empty); keep their order."""
    try:
        mods = [int(m) for m in modules]
    except (TypeError, ValueError):
        raise SCGError(f"{what}: module indices must be integers; got {modules!r}") from None
    if not mods:
        raise SCGError(f"{what}: the module selection is empty; pick at least one module")
    bad = [m for m in mods if not 0 <= m < n_vector]
    if bad:
        raise SCGError(f"{what}: module index {bad[0]} is out of range; this autoencoder has "
                       f"{n_vector} modules (0..{n_vector - 1})")
    if len(set(mods)) != len(mods):
        raise SCGError(f"{what}: module indices repeat in {mods}")
    return mods


_LIST = re.compile(r"^\s*\d+(\s*[,; ]\s*\d+)*\s*$")


def resolve_modules(selection, groups: Mapping[str, Sequence[int]], n_vector: int) -> list[int]:
    """Turn a selection into module indices.

    ``selection``: a group name (``"HC0"``), several joined by ``+`` (``"HC2+HC3"``),
    an explicit list as text (``"0,1,4"``), ``"all"``, or an iterable of ints.
    """
    if isinstance(selection, str):
        text = selection.strip()
        if not text:
            raise SCGError("modules: the module selection is empty; give a group name such as "
                           f"{next(iter(groups), 'HC0')!r} or a list such as '0,1,4'")
        if text.lower() == "all":
            return list(range(n_vector))
        if _LIST.match(text):
            return check_modules(re.split(r"[,; ]+", text.strip(" ,;")), n_vector)
        mods: list[int] = []
        for part in text.split("+"):
            name = part.strip()
            if name not in groups:
                joined = [p.strip() for p in re.split(r"[,; ]+", name) if p.strip()]
                if len(joined) > 1 and all(p in groups for p in joined):
                    raise SCGError(f"modules: {name!r} lists groups with commas; join groups with '+': "
                                   f"{'+'.join(joined)!r}")
                raise SCGError(f"modules: unknown group {name!r}; this autoencoder's groups are "
                               f"{', '.join(groups) or '(none)'}, or give module indices such as '0,1,4'")
            mods += [m for m in groups[name] if m not in mods]
        return check_modules(mods, n_vector)
    if isinstance(selection, int):
        return check_modules([selection], n_vector)
    return check_modules(selection, n_vector)


#: largest gain magnitude: the hint is linear in the gains, and beyond this any ControlNet saturates
#: (and fp16 hints overflow); a typo such as ``1e30`` is refused rather than turned into inf
MAX_GAIN = 100.0


def _gain(value, where: str) -> float:
    """One gain as a float, finite and within ``+/-MAX_GAIN``, or an :class:`SCGError` naming ``where``."""
    if isinstance(value, bool):
        raise SCGError(f"gains: {where} is {value!r}; expected a number")
    try:
        v = float(value)
    except (TypeError, ValueError, OverflowError):
        raise SCGError(f"gains: {where} is {value!r}; expected a number such as 1.5") from None
    if v != v or abs(v) == float("inf"):
        raise SCGError(f"gains: {where} is {v}; gains must be finite numbers in [-{MAX_GAIN:g}, {MAX_GAIN:g}]")
    if abs(v) > MAX_GAIN:
        raise SCGError(f"gains: {where} is {v:g}; gains must lie in [-{MAX_GAIN:g}, {MAX_GAIN:g}] "
                       "(the hint is linear in them: 2 doubles a module)")
    return v


def _module_key(key, where: str) -> int:
    try:
        return int(key)
    except (TypeError, ValueError, OverflowError):
        raise SCGError(f"gains: {where}: {key!r} is not a module index") from None


_NUMBER = re.compile(r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$|^\s*[-+]?(nan|inf|infinity)\s*$", re.I)


def parse_gains(gains, modules: Sequence[int], n_vector: int,
                groups: Mapping[str, Sequence[int]] | None = None) -> list[float] | None:
    """Per-module gains for the selected ``modules``, in their order; ``None`` means all 1.

    ``gains``: ``None``/``""``; text such as ``"0:1.5,4:0.5"`` (with ``groups``, a group
    name may stand for its modules: ``"HC0:1.5"``); one number (``1.5`` or ``"1.5"``) for
    every selected module; numbers as text (``"1.5,2"``), a mapping module -> gain (unlisted
    selected modules keep 1), or a sequence, with one gain per selected module or one per module
    of the autoencoder. Every gain is finite and within ``+/-MAX_GAIN``.
    """
    if gains is None:
        return None
    if isinstance(gains, (int, float)) and not isinstance(gains, bool):
        gains = [_gain(gains, "the gain")] * len(modules)
    elif isinstance(gains, str):
        text = gains.strip()
        if not text:
            return None
        items = [item.strip() for item in re.split(r"[,;]", text) if item.strip()]
        if len(items) == 1 and _NUMBER.match(items[0]):
            gains = [_gain(items[0], "the gain")] * len(modules)
        elif items and all(_NUMBER.match(item) for item in items):
            gains = [_gain(item, f"value {i + 1}") for i, item in enumerate(items)]
        else:
            table = {}
            for item in items:
                key, sep, val = item.partition(":")
                key = key.strip()
                if not sep or not key or not val.strip():
                    named = f", group:gain pairs such as '{next(iter(groups))}:1.5'" if groups else ""
                    raise SCGError(f"gains: cannot read {item!r}; write module:gain pairs such as "
                                   f"'0:1.5,4:0.5'{named}, or one number for every selected module")
                if groups and key in groups:
                    g = _gain(val.strip(), f"the gain of group {key}")
                    table.update({m: g for m in groups[key]})
                else:
                    if not re.fullmatch(r"\d+", key):
                        known = f"; groups: {', '.join(groups)}" if groups else ""
                        raise SCGError(f"gains: cannot read {item!r}: {key!r} is neither a module index nor a "
                                       f"group{known}")
                    table[int(key)] = _gain(val.strip(), f"the gain of module {key}")
            gains = table
    if isinstance(gains, Mapping):
        table = {_module_key(k, "a key"): _gain(v, f"the gain of module {k}") for k, v in gains.items()}
        stray = [m for m in table if m not in modules]
        if stray:
            raise SCGError(f"gains: module {stray[0]} has a gain but is not in the selection {list(modules)}")
        return [table.get(m, 1.0) for m in modules]
    try:
        values = list(gains)
    except TypeError:
        raise SCGError(f"gains: expected text such as '0:1.5,4:0.5', a number, a mapping or a list; "
                       f"got {type(gains).__name__}") from None
    vals = [_gain(v, f"value {i + 1}") for i, v in enumerate(values)]
    if len(vals) == len(modules):
        return vals
    if len(vals) == n_vector:
        return [vals[m] for m in modules]
    raise SCGError(f"gains: got {len(vals)} values; give one per selected module ({len(modules)}: modules "
                   f"{','.join(map(str, modules))}) or one per module ({n_vector}), one number for all, or "
                   "module:gain pairs such as '0:1.5,4:0.5'")

"""Loading pickled PyTorch checkpoints as data only, bounded before anything is built.

``torch.load`` is not used: its safe unpickler can be crashed (deep keys), frozen (hashing
memo-shared tuples) and amplified (strided views), and inside ComfyUI it resolves classes that
the host registered with ``torch.serialization.add_safe_globals``. We read both PyTorch
formats (the zip archive and the legacy stream) ourselves, in two passes over the pickle held
in memory (the file is opened once):

1. :class:`_Scan` interprets every opcode on *abstract* values (kinds, nesting depth,
   expanded size, small constants), iteratively. It collects every global the pickle names,
   bounds nesting depth, refuses dict keys and set items that are expensive to hash (deep or
   memo-shared tuples), checks that every call is one we implement, and checks every tensor
   view against its storage: no stride 0, no overlapping strides, nothing past the end, and
   all storages together no bigger than the file. Then it decides once: any unknown global
   refuses the file, listing them all.
2. Only then :class:`_Build` (the C unpickler, iterative) builds the objects, resolving each
   global from our own table: tensors are rebuilt from the archive's bytes (CPU), classes of a
   few data-only libraries (Lightning callbacks, omegaconf containers, numpy scalars and
   arrays...) become :class:`InertObject` stand-ins that record their arguments and run nothing.
"""
from __future__ import annotations

import _compat_pickle
import argparse
import codecs
import collections
import io
import pickle
import pickletools
import struct
import zipfile

import torch

from .errors import CheckpointError, UnsafeCheckpointError

#: top-level packages whose classes may appear in a Lightning checkpoint as plain data
TOLERATED_PACKAGES = ("pytorch_lightning", "lightning", "lightning_fabric", "omegaconf", "numpy",
                      "pathlib", "typing", "enum", "torchmetrics")
#: nesting depth of containers; Lightning's hyper-parameters stay far below
MAX_DEPTH = 256
#: expanded size (elements counted once per reference) of a tuple used as a dict key or set item;
#: hashing a tuple walks all of it, with no cache and no recursion guard
MAX_KEY_SIZE = 1000
#: expanded size of any tuple: memo-shared nesting grows it exponentially
MAX_TUPLE_SIZE = 10**7
#: tensor views may together address this many times the bytes of all storages (shared storages)
VIEW_FACTOR = 8
MAX_DIMS = 64
LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
_UNKNOWN_LISTED = 8


class InertObject:
    """Stand-in for a tolerated class from a checkpoint: keeps what it was given, does nothing.

    ``args``/``kwargs``: the call's arguments; ``state``: what ``BUILD`` gave; ``items`` and
    ``list``: what ``SETITEMS``/``APPENDS`` added. The class's ``_qualname`` is the real name.
    """

    _qualname = "?"

    def __new__(cls, *args, **kwargs):
        obj = super().__new__(cls)
        obj.args, obj.kwargs, obj.state, obj.items, obj.list = args, kwargs, None, {}, []
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state

    def __setitem__(self, key, value):
        self.items[key] = value

    def append(self, value):
        self.list.append(value)

    def extend(self, values):
        self.list.extend(values)

    def __repr__(self):
        return f"<inert {self._qualname}>"


def _stand_in(qualname: str) -> type:
    return type("Inert_" + qualname.replace(".", "_"), (InertObject,), {"_qualname": qualname})


# --- what a pickle may name ----------------------------------------------------------------
class _StorageType:
    """What ``torch.FloatStorage`` & co. resolve to: the element dtype (None: untyped bytes)."""

    def __init__(self, dtype):
        self.dtype = dtype


def _storage_types() -> dict[str, _StorageType]:
    out = {}
    for dtype, name in torch.storage._dtype_to_storage_type_map().items():
        out[f"torch.{name}"] = out[f"torch.cuda.{name}"] = _StorageType(dtype)  # cuda: old files saved on a GPU
    out["torch.storage.UntypedStorage"] = out["torch.UntypedStorage"] = _StorageType(None)
    return out


def _dtypes() -> dict[str, torch.dtype]:
    return {f"torch.{n}": v for n in dir(torch) if isinstance(v := getattr(torch, n, None), torch.dtype)}


_BUILTIN_TYPES = {t.__name__: t for t in (set, frozenset, list, tuple, dict, int, float, complex, bool, str, bytes,
                                          bytearray, object)}
_REBUILD = {"torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_tensor_v3", "torch._utils._rebuild_parameter",
            "torch._utils._rebuild_parameter_with_state", "torch._utils._rebuild_meta_tensor_no_storage"}
_SPECIAL = _REBUILD | {"collections.OrderedDict", "collections.defaultdict", "_codecs.encode", "argparse.Namespace",
                       "copyreg._reconstructor", "torch.Size", "torch.device"}


def _normal_name(module: str, name: str) -> str:
    """``module.name`` with Python 2 names mapped as pickle's ``fix_imports`` does (``__builtin__.long``...)."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    else:
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    return f"{module}.{name}"


def _known(full: str, storages, dtypes) -> bool:
    return (full in _SPECIAL or full in storages or full in dtypes
            or (full.startswith("builtins.") and full[9:] in _BUILTIN_TYPES)
            or full.split(".")[0] in TOLERATED_PACKAGES)


# --- pass 1: the scan ------------------------------------------------------------------------
class _V:
    """An abstract value: kind, nesting depth, expanded size (tuples), constant, children."""

    __slots__ = ("kind", "depth", "size", "const", "items", "name")

    def __init__(self, kind, depth=0, size=1, const=None, items=None, name=None):
        self.kind, self.depth, self.size, self.const, self.items, self.name = kind, depth, size, const, items, name


_MARK = _V("mark")
_SCALAR_OPS = {"INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "STRING", "BINSTRING",
               "SHORT_BINSTRING", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8", "NONE", "NEWTRUE",
               "NEWFALSE", "UNICODE", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "FLOAT", "BINFLOAT"}
_SCALAR_CONST = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False}


class _Refused(Exception):
    pass


def _const(v: _V, what: str):
    """The Python value of a small constant (ints, strings, tuples of them, storage types)."""
    if v.kind == "scalar":
        return v.const
    if v.kind == "tuple" and v.size <= 4 * MAX_DIMS:
        return tuple(_const(c, what) for c in v.items)
    if v.kind == "global":
        return v.name
    raise _Refused(f"{what}: expected a constant, found a {v.kind}")


def check_view(size, stride, offset, storage_numel: int, what: str) -> int:
    """Refuse a tensor view that is not a plain, non-overlapping window of its storage.

    ``size``/``stride``: tuples of ints (elements), ``offset``: elements. Returns numel.
    """
    if not (isinstance(size, tuple) and isinstance(stride, tuple) and len(size) == len(stride) <= MAX_DIMS
            and all(type(n) is int for n in size + stride) and type(offset) is int):
        raise _Refused(f"{what}: malformed size/stride/offset {size!r}/{stride!r}/{offset!r}")
    if min(size, default=0) < 0 or min(stride, default=0) < 0 or offset < 0:
        raise _Refused(f"{what}: negative size, stride or offset ({size}, {stride}, {offset})")
    numel = 1
    for n in size:
        numel *= n
    if numel == 0:
        return 0
    dims = sorted((st, n) for n, st in zip(size, stride) if n > 1)
    reach = 1  # elements spanned so far by the smaller-stride dims
    for st, n in dims:
        if st == 0:
            raise _Refused(f"{what}: stride 0 on a dimension of size {n} repeats one element (size {size}, "
                           f"stride {stride}); refused")
        if st < reach:
            raise _Refused(f"{what}: overlapping strides (size {size}, stride {stride}) make the tensor bigger "
                           "than its data; refused")
        reach = st * (n - 1) + reach
    end = offset + sum((n - 1) * st for n, st in zip(size, stride)) + 1
    if end > storage_numel:
        raise _Refused(f"{what}: view of size {size} at offset {offset} needs {end} elements, "
                       f"its storage holds {storage_numel}")
    return numel


class _Scan:
    """Pass 1 over one pickle: abstract interpretation of every opcode, iteratively."""

    def __init__(self, storage_types, dtypes, storages: dict):
        self.storage_types, self.dtypes = storage_types, dtypes
        self.storages = storages  # key -> (dtype or None, numel), shared across the pickles of a file
        self.globals: dict[str, None] = {}
        self.unknown: dict[str, None] = {}
        self.view_bytes = 0

    # helpers
    def _deeper(self, parent: _V, child: _V) -> None:
        if child.depth + 1 > parent.depth:
            parent.depth = child.depth + 1
            if parent.depth > MAX_DEPTH:
                raise _Refused(f"containers nested deeper than {MAX_DEPTH} levels; refused")

    def _tuple(self, items) -> _V:
        depth = 1 + max((c.depth for c in items), default=0)
        if depth > MAX_DEPTH:
            raise _Refused(f"tuples nested deeper than {MAX_DEPTH} levels; refused")
        size = 1 + sum(c.size if c.kind == "tuple" else 1 for c in items)
        if size > MAX_TUPLE_SIZE:
            raise _Refused(f"a tuple expands to more than {MAX_TUPLE_SIZE} elements (memo-shared nesting); refused")
        return _V("tuple", depth, size, items=list(items))

    def _hashable(self, v: _V, where: str) -> None:
        if v.kind == "tuple" and (v.size > MAX_KEY_SIZE or v.depth > 32):
            raise _Refused(f"{where}: a tuple key of {v.size} elements nested {v.depth} levels deep; dict keys and "
                           "set items must be plain values; refused")
        if v.kind in ("list", "dict", "set", "mark", "storage"):
            raise _Refused(f"{where}: a {v.kind} cannot be a key or set item; refused")

    def _view(self, args: list, dtype_from_args: bool, what: str) -> None:
        if len(args) < 6 or args[0].kind != "storage":
            raise _Refused(f"{what}: malformed tensor (no storage)")
        key, dtype, numel_stored = args[0].const
        offset, size, stride = (_const(a, what) for a in args[1:4])
        if dtype_from_args:
            if len(args) < 7 or args[6].kind != "global" or args[6].name not in self.dtypes:
                raise _Refused(f"{what}: malformed tensor (no dtype)")
            dtype = self.dtypes[args[6].name]
        if dtype is None:
            raise _Refused(f"{what}: untyped storage without a dtype")
        itemsize = dtype.itemsize
        have_bytes = numel_stored * (self.storages[key][0].itemsize if self.storages[key][0] else 1)
        numel = check_view(size, stride, offset, have_bytes // itemsize, f"{what} (storage {key!r})")
        self.view_bytes += numel * itemsize

    def _call(self, f: _V, args: _V, op: str) -> _V:
        if f.kind != "global":
            raise _Refused(f"{op} on a {f.kind}, not on a class or function the file names; refused")
        name = f.name
        if name in self.unknown:
            return _V("obj", name=name)  # refused at the end, with every unknown name listed
        a = args.items if args.kind == "tuple" else None
        if a is None:
            raise _Refused(f"{op} {name}: arguments are not a tuple")
        if name.split(".")[0] in TOLERATED_PACKAGES:
            return _V("obj", name=name)
        if op == "NEWOBJ":
            if name in ("argparse.Namespace", "builtins.object") and not a:
                return _V("obj", name=name)
            if name in ("collections.OrderedDict", "builtins.dict") and not a:
                return _V("dict")
            if name in ("builtins.list", "builtins.set") and not a:
                return _V(name[9:])
            raise _Refused(f"NEWOBJ {name}{'(...)' if a else '()'}: not a class we build; refused")
        if name in ("torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_tensor_v3"):
            self._view(a, name.endswith("v3"), "tensor")
            return _V("tensor")
        if name in ("torch._utils._rebuild_parameter", "torch._utils._rebuild_parameter_with_state"):
            if not a or a[0].kind != "tensor":
                raise _Refused(f"{name}: malformed parameter")
            return _V("tensor")
        if name == "torch._utils._rebuild_meta_tensor_no_storage":
            if len(a) < 3 or a[0].kind != "global" or a[0].name not in self.dtypes:
                raise _Refused(f"{name}: malformed meta tensor")
            check_view(_const(a[1], name), _const(a[2], name), 0, 1 << 62, "meta tensor")
            return _V("tensor")
        if name in ("collections.OrderedDict", "builtins.dict"):
            if a:
                raise _Refused(f"{name} called with arguments; refused")
            return _V("dict")
        if name == "collections.defaultdict":
            if len(a) > 1 or (a and a[0].kind not in ("global", "scalar")):
                raise _Refused(f"{name}: the default factory must be a named class")
            return _V("dict")
        if name in ("builtins.set", "builtins.frozenset", "builtins.list", "builtins.tuple"):
            if len(a) > 1 or (a and a[0].kind not in ("list", "tuple")):
                raise _Refused(f"{name}: expected one list or tuple argument")
            items = a[0].items if a else []
            if name in ("builtins.set", "builtins.frozenset"):
                for v in items:
                    self._hashable(v, f"{name} item")
                return _V("set" if name.endswith(".set") else "frozenset")
            if name == "builtins.tuple":
                return self._tuple(items)
            out = _V("list", items=list(items))
            for v in items:
                self._deeper(out, v)
            return out
        if name in ("builtins.int", "builtins.float", "builtins.complex", "builtins.bool", "builtins.str",
                    "builtins.bytes", "builtins.bytearray"):
            if len(a) > 2 or any(v.kind != "scalar" for v in a):
                raise _Refused(f"{name}: expected plain values as arguments")
            if name in ("builtins.bytes", "builtins.bytearray") and any(isinstance(v.const, int) for v in a):
                raise _Refused(f"{name}(int): an allocation the file asks for; refused")
            return _V("scalar")
        if name == "_codecs.encode":
            if len(a) != 2 or not all(v.kind == "scalar" and isinstance(v.const, str) for v in a):
                raise _Refused(f"{name}: expected (text, encoding)")
            return _V("scalar", const=b"")
        if name == "argparse.Namespace" and not a:
            return _V("obj", name=name)
        if name == "copyreg._reconstructor":
            if (len(a) == 3 and a[0].kind == "global" and (a[0].name == "argparse.Namespace"
                                                            or a[0].name.split(".")[0] in TOLERATED_PACKAGES)
                    and a[1].kind == "global" and a[1].name == "builtins.object" and a[2].const is None):
                return _V("obj", name=a[0].name)
            raise _Refused(f"{name}: only plain objects of named classes")
        if name == "torch.Size":
            if len(a) != 1 or not all(isinstance(c, int) for c in _const(a[0], name)):
                raise _Refused(f"{name}: expected a tuple of ints")
            return self._tuple(a[0].items)
        if name == "torch.device":
            if not 1 <= len(a) <= 2 or any(v.kind != "scalar" for v in a):
                raise _Refused(f"{name}: expected a device name")
            return _V("scalar")
        raise _Refused(f"the file calls {name!r}, which is not a constructor we allow; refused")

    def _global(self, full: str) -> _V:
        self.globals[full] = None
        if not _known(full, self.storage_types, self.dtypes):
            self.unknown[full] = None
        return _V("global", name=full)

    def _persistent(self, pid: _V) -> _V:
        t = _const(pid, "persistent id")
        if not (isinstance(t, tuple) and len(t) in (5, 6) and t[0] == "storage"):
            raise _Refused(f"unsupported persistent id {str(t)[:80]}")
        if len(t) == 6 and t[5] is not None:
            raise _Refused("legacy storage views are not supported")
        stype, key, _location, numel = t[1:5]
        if stype not in self.storage_types or not isinstance(key, str) or type(numel) is not int or numel < 0:
            raise _Refused(f"malformed storage reference {str(t)[:80]}")
        dtype = self.storage_types[stype].dtype
        if self.storages.setdefault(key, (dtype, numel)) != (dtype, numel):
            raise _Refused(f"storage {key!r} declared twice with different types or sizes")
        return _V("storage", const=(key, dtype, numel))

    def run(self, data: bytes | io.BytesIO) -> _V:
        stack: list[_V] = []
        marks: list[list[_V]] = []
        memo: dict[int, _V] = {}
        stream = data if isinstance(data, io.BytesIO) else io.BytesIO(data)

        def pop_mark() -> list[_V]:
            nonlocal stack
            if not marks:
                raise _Refused("MARK missing")
            items, stack = stack, marks.pop()
            return items

        end = stream.getbuffer().nbytes
        for n_ops, (op, arg, pos) in enumerate(pickletools.genops(stream)):
            name = op.name
            if name in _SCALAR_OPS:
                stack.append(_V("scalar", const=_SCALAR_CONST.get(name, arg)))
            elif name == "PROTO":
                pass
            elif name == "FRAME":
                if arg > end - pos:
                    raise _Refused(f"a frame of {arg} bytes at byte {pos} of a {end}-byte pickle")
            elif name == "MARK":
                marks.append(stack)
                stack = []
            elif name == "STOP":
                if len(stack) != 1 or marks:
                    raise _Refused("unbalanced stack at STOP")
                return stack[0]
            elif name == "EMPTY_LIST":
                stack.append(_V("list", items=[]))
            elif name == "EMPTY_DICT":
                stack.append(_V("dict"))
            elif name == "EMPTY_SET":
                stack.append(_V("set"))
            elif name == "EMPTY_TUPLE":
                stack.append(self._tuple([]))
            elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                n = int(name[-1])
                if len(stack) < n:
                    raise _Refused("stack underflow")
                items = stack[-n:]
                del stack[-n:]
                stack.append(self._tuple(items))
            elif name == "TUPLE":
                items = pop_mark()  # before stack.append: pop_mark replaces the stack
                stack.append(self._tuple(items))
            elif name == "LIST":
                items = pop_mark()
                v = _V("list", items=items)
                for c in items:
                    self._deeper(v, c)
                stack.append(v)
            elif name == "DICT":
                items = pop_mark()
                v = _V("dict")
                self._fill(v, items, "DICT")
                stack.append(v)
            elif name == "FROZENSET":
                items = pop_mark()
                for c in items:
                    self._hashable(c, "frozenset item")
                stack.append(_V("frozenset"))
            elif name in ("APPEND", "SETITEM"):
                n = 1 if name == "APPEND" else 2
                if len(stack) < n + 1:
                    raise _Refused("stack underflow")
                items = stack[-n:]
                del stack[-n:]
                self._fill(stack[-1], items, name)
            elif name in ("APPENDS", "SETITEMS", "ADDITEMS"):
                items = pop_mark()
                if not stack:
                    raise _Refused("stack underflow")
                self._fill(stack[-1], items, name)
            elif name == "POP":
                if stack:
                    stack.pop()
                else:
                    pop_mark()
            elif name == "POP_MARK":
                pop_mark()
            elif name == "DUP":
                stack.append(stack[-1])
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                if arg not in memo:
                    raise _Refused(f"memo entry {arg} read before it was written")
                stack.append(memo[arg])
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                if arg > n_ops:  # the C unpickler sizes its memo by the index: 2**32 would allocate 32 GiB
                    raise _Refused(f"memo index {arg} after {n_ops} instructions")
                memo[arg] = stack[-1]
            elif name == "MEMOIZE":
                memo[len(memo)] = stack[-1]
            elif name == "GLOBAL":
                module, _, attr = arg.partition(" ")
                stack.append(self._global(_normal_name(module, attr)))
            elif name == "STACK_GLOBAL":
                attr, module = stack.pop(), stack.pop()
                if not (isinstance(module.const, str) and isinstance(attr.const, str)):
                    raise _Refused("STACK_GLOBAL with names that are not strings")
                stack.append(self._global(_normal_name(module.const, attr.const)))
            elif name == "REDUCE":
                args, f = stack.pop(), stack.pop()
                stack.append(self._call(f, args, "REDUCE"))
            elif name == "NEWOBJ":
                args, cls = stack.pop(), stack.pop()
                stack.append(self._call(cls, args, "NEWOBJ"))
            elif name == "NEWOBJ_EX":
                _kwargs, args, cls = stack.pop(), stack.pop(), stack.pop()
                if cls.kind != "global" or (cls.name.split(".")[0] not in TOLERATED_PACKAGES
                                            and cls.name not in self.unknown):
                    raise _Refused("NEWOBJ_EX of a class we do not stand in for; refused")
                stack.append(_V("obj", name=cls.name))
            elif name == "BUILD":
                state, target = stack.pop(), stack[-1]
                if target.kind not in ("obj", "dict"):
                    raise _Refused(f"BUILD (set state) on a {target.kind}; refused")
                self._deeper(target, state)
            elif name == "BINPERSID":
                stack.append(self._persistent(stack.pop()))
            else:  # PERSID, INST, OBJ, EXT1/2/4, NEXT_BUFFER, READONLY_BUFFER: never written by torch.save
                raise _Refused(f"pickle instruction {name} is not used by PyTorch checkpoints; refused")
        raise _Refused("no STOP")

    def _fill(self, target: _V, items: list[_V], op: str) -> None:
        if op in ("SETITEM", "SETITEMS", "DICT"):
            if target.kind not in ("dict", "obj"):
                raise _Refused(f"{op} on a {target.kind}; refused")
            if len(items) % 2:
                raise _Refused(f"{op} with an odd number of items")
            for k in items[::2]:
                self._hashable(k, "dict key")
        elif op == "ADDITEMS":
            if target.kind != "set":
                raise _Refused(f"{op} on a {target.kind}; refused")
            for k in items:
                self._hashable(k, "set item")
        else:
            if target.kind not in ("list", "obj"):
                raise _Refused(f"{op} on a {target.kind}; refused")
            if target.kind == "list":
                target.items.extend(items)
        for c in items:
            self._deeper(target, c)


# --- pass 2: the build -------------------------------------------------------------------------
class _Storage:
    def __init__(self, data: torch.Tensor):
        self.data = data  # 1-D, of the storage's dtype (uint8 for untyped storages)


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    data = storage.data
    check_view(tuple(size), tuple(stride), offset, data.numel(), "tensor")
    return torch.as_strided(data, tuple(size), tuple(stride), offset)


def _rebuild_tensor_v3(storage, offset, size, stride, requires_grad, hooks, dtype, metadata=None):
    data = storage.data
    if data.dtype != dtype:
        usable = data.numel() // dtype.itemsize * dtype.itemsize
        data = data[:usable].view(dtype)
    return _rebuild_tensor(_Storage(data), offset, size, stride)


def _rebuild_meta(dtype, size, stride, requires_grad=False, *_):
    return torch.empty_strided(tuple(size), tuple(stride), dtype=dtype, device="meta")


def _encode(text: str, encoding: str) -> bytes:
    if encoding not in ("latin1", "latin-1", "utf-8", "utf8"):
        raise ValueError(f"unexpected encoding {encoding!r}")
    return codecs.encode(text, encoding)


def _defaultdict(factory=None) -> dict:
    return {}  # data only: the default factory is never kept or called


def _reconstructor(cls, base, state):
    return cls.__new__(cls)


def _table(names, storage_types, dtypes) -> dict:
    fixed = {
        "torch._utils._rebuild_tensor_v2": _rebuild_tensor, "torch._utils._rebuild_tensor_v3": _rebuild_tensor_v3,
        "torch._utils._rebuild_parameter": lambda data, *_: data,
        "torch._utils._rebuild_parameter_with_state": lambda data, *_: data,
        "torch._utils._rebuild_meta_tensor_no_storage": _rebuild_meta,
        "collections.OrderedDict": collections.OrderedDict, "collections.defaultdict": _defaultdict,
        "_codecs.encode": _encode, "argparse.Namespace": argparse.Namespace,
        "copyreg._reconstructor": _reconstructor, "torch.Size": torch.Size, "torch.device": torch.device,
    }
    out = {}
    for full in names:
        if full in fixed:
            out[full] = fixed[full]
        elif full in storage_types:
            out[full] = storage_types[full]
        elif full in dtypes:
            out[full] = dtypes[full]
        elif full.startswith("builtins.") and full[9:] in _BUILTIN_TYPES:
            out[full] = _BUILTIN_TYPES[full[9:]]
        else:  # a tolerated package (pass 1 refused everything else)
            out[full] = _stand_in(full)
    return out


class _Build(pickle.Unpickler):
    """Pass 2: the C unpickler on a pickle that pass 1 accepted; globals from our table only."""

    def __init__(self, data: bytes, table: dict, load_storage):
        super().__init__(io.BytesIO(data))
        self.table, self.load_storage, self.cache = table, load_storage, {}

    def find_class(self, module, name):
        full = _normal_name(module, name)
        if full not in self.table:  # pass 1 saw every global; this cannot happen
            raise UnsafeCheckpointError(f"global {full!r} was not scanned")
        return self.table[full]

    def persistent_load(self, pid):
        _, stype, key, _location, numel = pid[:5]
        if key not in self.cache:
            self.cache[key] = _Storage(self.load_storage(key, stype.dtype, numel))
        return self.cache[key]


# --- the two formats ---------------------------------------------------------------------------
def _itemsize(dtype) -> int:
    return 1 if dtype is None else dtype.itemsize


def _from_bytes(buf: bytearray, dtype) -> torch.Tensor:
    t = torch.frombuffer(buf, dtype=torch.uint8) if len(buf) else torch.empty(0, dtype=torch.uint8)
    return t if dtype is None or dtype == torch.uint8 else t.view(dtype)


class _Reader:
    """One checkpoint file, opened once; :meth:`load` returns its object."""

    def __init__(self, fh, path: str, size: int):
        self.fh, self.path, self.size = fh, path, size
        self.storage_types, self.dtypes = _storage_types(), _dtypes()
        self.storages: dict = {}

    def _scan(self, data: bytes) -> _Scan:
        scan = _Scan(self.storage_types, self.dtypes, self.storages)
        scan.run(data)
        return scan

    def _decide(self, scans: list[_Scan], storage_bytes_available: int) -> dict:
        unknown = [n for s in scans for n in s.unknown]
        if unknown:
            listed = ", ".join(repr(n) for n in unknown[:_UNKNOWN_LISTED])
            more = f" and {len(unknown) - _UNKNOWN_LISTED} more" if len(unknown) > _UNKNOWN_LISTED else ""
            raise UnsafeCheckpointError(
                f"{self.path}: refused to load: the file asks to call {listed}{more} while loading, which could "
                "run code. Only weights are read from checkpoints; re-save it as .safetensors from a trusted "
                "environment.")
        total = sum(numel * _itemsize(dtype) for dtype, numel in self.storages.values())
        if total > storage_bytes_available:
            raise CheckpointError(f"{self.path}: truncated or forged: its storages declare {total} bytes, "
                                  f"the file holds {storage_bytes_available}")
        views = sum(s.view_bytes for s in scans)
        if views > VIEW_FACTOR * total + (1 << 20):
            raise UnsafeCheckpointError(f"{self.path}: refused: its tensors address {views} bytes of "
                                        f"{total} stored (shared storages repeated {views // max(total, 1)}x)")
        return _table({n for s in scans for n in s.globals}, self.storage_types, self.dtypes)

    def load_zip(self):
        try:
            zf = zipfile.ZipFile(self.fh)
            infos = {i.filename: i for i in zf.infolist()}
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
            raise CheckpointError(f"{self.path}: corrupt PyTorch archive ({e})") from None
        pkls = [n for n in infos if n.endswith("/data.pkl") and n.count("/") == 1] or \
               [n for n in infos if n == "data.pkl"]
        if len(pkls) != 1:
            raise CheckpointError(f"{self.path}: not a PyTorch archive (no single data.pkl)")
        prefix = pkls[0][: -len("data.pkl")]
        for info in infos.values():
            if info.compress_type != zipfile.ZIP_STORED or info.file_size > self.size:
                raise CheckpointError(f"{self.path}: archive member {info.filename!r} is compressed or larger than "
                                      "the file; PyTorch writes neither")
        order = infos.get(prefix + "byteorder")
        if order is not None and zf.read(order).strip() not in (b"little", b""):
            raise CheckpointError(f"{self.path}: big-endian checkpoints are not supported")
        data = zf.read(pkls[0])
        scan = self._scan(data)
        stored = 0
        for key, (dtype, numel) in self.storages.items():
            info = infos.get(f"{prefix}data/{key}")
            if info is None:
                raise CheckpointError(f"{self.path}: storage {key!r} is missing from the archive")
            if info.file_size < numel * _itemsize(dtype):
                raise CheckpointError(f"{self.path}: storage {key!r} holds {info.file_size} bytes, "
                                      f"the pickle says {numel * _itemsize(dtype)}")
            stored += info.file_size
        table = self._decide([scan], stored)

        def load_storage(key, dtype, numel):
            buf = bytearray(numel * _itemsize(dtype))
            with zf.open(f"{prefix}data/{key}") as member:
                if member.readinto(buf) != len(buf):
                    raise CheckpointError(f"{self.path}: storage {key!r} is truncated")
            return _from_bytes(buf, dtype)

        return _Build(data, table, load_storage).load()

    def load_legacy(self):
        stream = io.BytesIO(self.fh.read())
        scans, starts = [], []
        for _ in range(5):  # magic number, protocol, system info, the object, storage keys
            starts.append(stream.tell())
            scans.append(_Scan(self.storage_types, self.dtypes, self.storages))
            scans[-1].run(stream)
        end = stream.tell()
        raw = stream.getbuffer()
        pieces = [bytes(raw[a:b]) for a, b in zip(starts, starts[1:] + [end])]
        magic, protocol = (_Build(p, {}, None).load() for p in pieces[:2])
        if magic != LEGACY_MAGIC or protocol != 1001:
            raise CheckpointError(f"{self.path}: not a PyTorch checkpoint (bad magic number or protocol)")
        keys = _Build(pieces[4], {}, None).load()
        if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)) or set(keys) != set(self.storages):
            raise CheckpointError(f"{self.path}: storage keys do not match the pickle")
        table = self._decide(scans, len(raw) - end)
        blobs, pos = {}, end
        for key in keys:
            dtype, numel = self.storages[key]
            nbytes = numel * _itemsize(dtype)
            if pos + 8 + nbytes > len(raw) or struct.unpack_from("<q", raw, pos)[0] != numel:
                raise CheckpointError(f"{self.path}: storage {key!r} is truncated or mislabelled")
            blobs[key] = bytearray(raw[pos + 8:pos + 8 + nbytes])
            pos += 8 + nbytes
        del raw
        return _Build(pieces[3], table, lambda key, dtype, numel: _from_bytes(blobs[key], dtype)).load()


def safe_load(path: str):
    """Read a PyTorch checkpoint (zip or legacy) as data on the CPU; nothing in it runs.

    Raises :class:`UnsafeCheckpointError` for a file that names a global we do not know (all of
    them listed), nests or shares beyond the bounds, or asks for more memory than it holds;
    :class:`CheckpointError` for anything unreadable. The file is opened and read once.
    """
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(0)
            reader = _Reader(fh, path, size)
            if fh.read(4) == b"PK\x03\x04":
                fh.seek(0)
                return reader.load_zip()
            fh.seek(0)
            return reader.load_legacy()
    except _Refused as e:
        raise UnsafeCheckpointError(f"{path}: refused to load: {e}") from None
    except CheckpointError:
        raise
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror or e})") from None
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, EOFError, RuntimeError, OverflowError,
            MemoryError, pickle.UnpicklingError, zipfile.BadZipFile, struct.error) as e:
        raise CheckpointError(f"{path}: truncated or not a PyTorch checkpoint ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200] if str(e) else ''})") from None

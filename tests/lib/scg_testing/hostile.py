"""Builders of hostile checkpoint files, assembled from pickle opcodes (small, no download).

Each builder writes one file in PyTorch's zip layout (``archive/data.pkl`` + ``archive/data/<key>``)
and returns its path. They reproduce the attacks of issue 10: nesting that crashes the
interpreter, memo-shared tuples whose hash never ends, hundreds of unknown globals, views that
amplify a tiny storage, storages bigger than the file.
"""
from __future__ import annotations

import io
import pickle
import struct
import zipfile
from pathlib import Path

P = pickle  # opcode constants: P.MARK, P.TUPLE1, ...


def unicode(s: str) -> bytes:
    b = s.encode()
    return P.BINUNICODE + struct.pack("<I", len(b)) + b


def integer(n: int) -> bytes:
    if 0 <= n < 1 << 31:
        return P.BININT + struct.pack("<i", n)
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return P.LONG1 + bytes([len(raw)]) + raw


def glob(module: str, name: str) -> bytes:
    return P.GLOBAL + f"{module}\n{name}\n".encode()


def put(i: int) -> bytes:
    return P.LONG_BINPUT + struct.pack("<I", i)


def get(i: int) -> bytes:
    return P.LONG_BINGET + struct.pack("<I", i)


def ints_tuple(values) -> bytes:
    return P.MARK + b"".join(integer(v) for v in values) + P.TUPLE


def tensor(key: str, storage: str, numel: int, size, stride, offset: int = 0, module: str = "torch",
           location: str = "cpu") -> bytes:
    """``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())``."""
    pid = P.MARK + unicode("storage") + glob(module, storage) + unicode(key) + unicode(location) + integer(numel) \
        + P.TUPLE
    return (glob("torch._utils", "_rebuild_tensor_v2") + P.MARK + pid + P.BINPERSID + integer(offset)
            + ints_tuple(size) + ints_tuple(stride) + P.NEWFALSE + glob("collections", "OrderedDict")
            + P.EMPTY_TUPLE + P.REDUCE + P.TUPLE + P.REDUCE)


def state_dict(entries: list[tuple[str, bytes]]) -> bytes:
    """``{"state_dict": {name: <value opcodes>, ...}}`` as a whole pickle."""
    body = b"".join(unicode(k) + v for k, v in entries)
    return P.PROTO + b"\x02" + P.EMPTY_DICT + unicode("state_dict") + P.EMPTY_DICT + P.MARK + body + P.SETITEMS \
        + P.SETITEM + P.STOP


def write_archive(path, data_pkl: bytes, storages: dict[str, bytes] | None = None) -> Path:
    """A file in PyTorch's zip layout around ``data_pkl`` (members stored, as torch writes them)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", data_pkl)
        zf.writestr("archive/byteorder", "little")
        for key, blob in (storages or {}).items():
            zf.writestr(f"archive/data/{key}", blob)
        zf.writestr("archive/version", "3\n")
    Path(path).write_bytes(buf.getvalue())
    return Path(path)


# --- the attacks -------------------------------------------------------------------------
def deep_tuple_key(path, levels: int = 1_000_000) -> Path:
    """A dict whose key is a tuple nested ``levels`` deep (about 1 byte per level).

    Hashing it recurses in C without a guard: a segfault in an unbounded loader.
    """
    key = P.NONE + P.TUPLE1 * levels
    return write_archive(path, P.PROTO + b"\x02" + P.EMPTY_DICT + key + P.NONE + P.SETITEM + P.STOP)


def memo_shared_key(path, levels: int = 80) -> Path:
    """``t_{i+1} = (t_i, t_i)`` through the memo, ``levels`` deep, used as a dict key (~2 KB).

    Its hash visits 2**levels leaves: an unbounded loader freezes.
    """
    levels_ = P.NONE + put(0) + b"".join(get(i) + get(i) + P.TUPLE2 + put(i + 1) for i in range(levels))
    # the levels are built inside a list (an entry "levels"), then the last one is the key of a second entry
    body = unicode("levels") + P.EMPTY_LIST + P.MARK + levels_ + P.APPENDS + P.SETITEM + get(levels) + P.NONE + P.SETITEM
    return write_archive(path, P.PROTO + b"\x02" + P.EMPTY_DICT + body + P.STOP)


def deep_list(path, levels: int = 100_000) -> Path:
    """Lists nested ``levels`` deep (not hashed, but deeper than any checkpoint needs)."""
    body = P.MARK * levels + P.EMPTY_LIST + P.LIST * levels
    return write_archive(path, P.PROTO + b"\x02" + body + P.STOP)


def unknown_globals(path, n: int = 200, weights_bytes: int = 0) -> Path:
    """A state dict with ``n`` entries, each built by calling a different unknown global (and, with
    ``weights_bytes``, one ordinary tensor of that many bytes, as a big checkpoint has)."""
    entries = [(f"w{i}", glob(f"evil_module_{i}", "payload") + P.EMPTY_TUPLE + P.REDUCE) for i in range(n)]
    storages = {}
    if weights_bytes:
        entries.append(("weights", tensor("0", "ByteStorage", weights_bytes, (weights_bytes,), (1,))))
        storages["0"] = bytes(weights_bytes)
    return write_archive(path, state_dict(entries), storages)


def strided_view(path, kind: str) -> Path:
    """A ~1 KB file whose one tensor is a 1 GiB view of a few stored bytes.

    ``kind``: ``"stride0"`` (every element the same byte), ``"overlap"`` (six dims of 32 over 187 bytes,
    all strides 1), ``"past_end"`` (a view past the end of its storage) or ``"storage_bomb"`` (a
    storage declared 1 TiB in a small file).
    """
    size, stride, numel, blob = {
        "stride0": ((1 << 15, 1 << 15), (0, 0), 4, bytes(4)),
        "overlap": ((32,) * 6, (1,) * 6, 187, bytes(187)),
        "past_end": ((1 << 15, 1 << 15), (1 << 15, 1), 64, bytes(64)),
        "storage_bomb": ((1 << 20,), (1,), 1 << 40, bytes(64)),
    }[kind]
    pkl = state_dict([("gonlin.c2.weight", tensor("0", "ByteStorage", numel, size, stride))])
    return write_archive(path, pkl, {"0": blob})


def planted_call(path, module: str, name: str, *args: str) -> Path:
    """A state dict entry built by ``module.name(*args)`` (strings): a code-running pickle."""
    call = glob(module, name) + P.MARK + b"".join(unicode(a) for a in args) + P.TUPLE + P.REDUCE
    return write_archive(path, state_dict([("w", call)]))


def allocation_call(path) -> Path:
    """``bytearray(10**12)``: an allocation the file asks a constructor for."""
    call = glob("builtins", "bytearray") + integer(10**12) + P.TUPLE1 + P.REDUCE
    return write_archive(path, state_dict([("w", call)]))


def class_poisoning(path) -> Path:
    """``BUILD`` on a class object (not an instance): would set attributes on ``argparse.Namespace`` itself."""
    build = glob("argparse", "Namespace") + P.NONE + P.EMPTY_DICT + unicode("__eq__") + glob("builtins", "dict") \
        + P.SETITEM + P.TUPLE2 + P.BUILD
    return write_archive(path, state_dict([("w", build)]))


def old_opcodes(path, which: str) -> Path:
    """Instructions torch.save never writes: ``INST`` (call by name), ``EXT1`` (extension registry), ``PERSID``."""
    op = {"inst": P.MARK + P.INST + b"argparse\nNamespace\n", "ext": P.EXT1 + b"\x01",
          "persid": P.PERSID + b"../../etc/passwd\n"}[which]
    return write_archive(path, state_dict([("w", op)]))


def compressed_member(path) -> Path:
    """A deflated storage member (torch writes none): its real size is not bounded by the file's."""
    good = io.BytesIO()
    pkl = state_dict([("w", tensor("0", "FloatStorage", 4, (4,), (1,)))])
    with zipfile.ZipFile(good, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", pkl)
        zf.writestr("archive/data/0", bytes(16), compress_type=zipfile.ZIP_DEFLATED)
    Path(path).write_bytes(good.getvalue())
    return Path(path)


def reduce_on_result(path) -> Path:
    """A call whose callable is the result of another call (how gadget chains reach ``getattr``)."""
    call = glob("collections", "OrderedDict") + P.EMPTY_TUPLE + P.REDUCE + P.EMPTY_TUPLE + P.REDUCE
    return write_archive(path, state_dict([("w", call)]))


def memo_index_bomb(path) -> Path:
    """``LONG_BINPUT 4294967295``: the C unpickler grows its memo array to twice the index (tens of GiB)."""
    return write_archive(path, state_dict([("w", P.NONE + put(0xFFFFFFFF))]))


def frame_bomb(path) -> Path:
    """A protocol-4 ``FRAME`` announcing 2**62 bytes in a tiny pickle."""
    body = P.PROTO + b"\x04" + P.FRAME + struct.pack("<Q", 1 << 62) + P.NONE + P.STOP
    return write_archive(path, body)


ATTACKS = {
    "deep_tuple_key": deep_tuple_key,
    "memo_shared_key": memo_shared_key,
    "deep_list": deep_list,
    "unknown_globals": unknown_globals,
    "stride0_view": lambda p: strided_view(p, "stride0"),
    "overlapping_view": lambda p: strided_view(p, "overlap"),
    "view_past_end": lambda p: strided_view(p, "past_end"),
    "storage_bomb": lambda p: strided_view(p, "storage_bomb"),
    "allocation_call": allocation_call,
    "class_poisoning": class_poisoning,
    "inst_opcode": lambda p: old_opcodes(p, "inst"),
    "ext_opcode": lambda p: old_opcodes(p, "ext"),
    "persid_text": lambda p: old_opcodes(p, "persid"),
    "compressed_member": compressed_member,
    "reduce_on_result": reduce_on_result,
    "memo_index_bomb": memo_index_bomb,
    "frame_bomb": frame_bomb,
}


# --- the fuzz suite's bookkeeping ------------------------------------------------------------
#: outcomes of fuzz cases, by kind ("success" or the SCGError subclass name), summed over a session
OUTCOMES: dict[str, int] = {}


def record(kind: str) -> None:
    OUTCOMES[kind] = OUTCOMES.get(kind, 0) + 1


def summary() -> str:
    """One line: cases tried and outcomes by kind."""
    total = sum(OUTCOMES.values())
    parts = ", ".join(f"{k} {v}" for k, v in sorted(OUTCOMES.items(), key=lambda kv: -kv[1]))
    return f"SCG fuzz: {total} cases: {parts}"


def rezip(data: bytes, edit) -> bytes:
    """A PyTorch zip archive with each member's bytes replaced by ``edit(name, bytes)`` (CRCs rewritten),
    so that a mutation reaches the parser instead of failing the archive's checksum."""
    src = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, edit(info.filename, src.read(info)))
    return out.getvalue()

#!/usr/bin/env python3
"""Mutation fuzzer for WanKit's file parsers (not part of the test suite).

Takes the tiny golden models (../shared/golden: safetensors, GGUF, torch .pth zip/pickle, sharded and diffusers
folders, tokenizer.json) and Tests/Variants/ggml/*.gguf as seeds, mutates one file at a time (bit flips, boundary
values written into header fields, truncation, structured edits of the safetensors JSON header, the GGUF header
fields, the zip records and pickle opcodes of a .pth, and of JSON files), and runs the `wan` binary on it:
`wan info`, `wan conformance` on a copy of the golden folder whose other files are symlinks, or `wan generate` on the
golden pipeline models. Each run has a timeout. Findings are

  crash      killed by a signal (Swift traps: SIGILL/SIGTRAP; SIGSEGV, SIGABRT, ...)
  hang       ran past the timeout
  unhelpful  a failure whose message names neither the mutated file nor its folder, or is a raw error dump
  partial    `wan generate` failed but left its output file behind

Each finding is saved under --findings (default /tmp/fuzz-findings/<kind>-<n>/: the mutant, cmd.txt with the command
and the mutation, output.txt). The mutants are reproducible from --seed.

The package builds with -Ounchecked, where an integer overflow or an index out of range is silent undefined
behaviour (garbage, or a segfault much later) instead of a trap. Fuzz a checked build to see those as crashes: the
last -O on the command line wins over the package's -Ounchecked.

Usage (from the package root):
  swift build -c release --scratch-path .build-checked -Xswiftc -O --product wan
  python3 scripts/fuzz-weights.py --wan .build-checked/release/wan --minutes 40 --jobs 2
  python3 scripts/fuzz-weights.py --targets gguf-q4_0,pth-t5 --count 200     # some targets, a fixed count
  python3 scripts/fuzz-weights.py --list                                      # the targets
"""
import argparse
import base64
import concurrent.futures as cf
import copy
import io
import json
import os
import pickletools
import random
import resource
import re
import shutil
import struct
import subprocess
import sys
import threading
import time
import zipfile

sys.setrecursionlimit(50000)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN = os.path.normpath(os.path.join(ROOT, "..", "shared", "golden"))

U64_EDGES = [0, 1, 2, 3, 7, 8, 31, 32, 33, 255, 256, 0x7FFF, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF,
             0x100000000, 0x7FFFFFFFFFFFFFFF, 0x8000000000000000, 0xFFFFFFFFFFFFFFFF, 0xFFFFFFFFFFFFFFF0,
             0x0FFFFFFFFFFFFFFF, 0x4000000000000000, 0x2000000000000001]
JSON_EDGES = [None, True, False, 0, -1, 1, 2, 3, 255, 2**31 - 1, 2**31, 2**32, 2**53 + 1, 2**62, 2**63 - 1, 2**63,
              2**64, 10**30, -(2**63), -(2**31), 1.5, -0.0, 1e308, -1e308, 3.0, "", "x", "F32", "Q4_0", [], {}, [0],
              [-1], [2**62, 2**62], [[1]], {"a": 1}, "\u0000", "é" * 3, "../x", "/etc/passwd"]


def edge(rng, width, size_hint=0):
    vals = [v & ((1 << (8 * width)) - 1) for v in U64_EDGES]
    if size_hint:
        vals += [size_hint, size_hint - 1, size_hint + 1, size_hint // 2, size_hint * 2]
    return rng.choice(vals) & ((1 << (8 * width)) - 1)


def put(data, pos, width, value):
    if pos < 0 or pos + width > len(data):
        return
    data[pos:pos + width] = value.to_bytes(width, "little")


# ---------------------------------------------------------------- generic byte mutations

def byte_mutation(rng, data, lo=0, hi=None, size_hint=0):
    """One random byte-level edit inside [lo, hi). Returns a description."""
    hi = len(data) if hi is None else min(hi, len(data))
    if hi <= lo:
        lo, hi = 0, len(data)
    if not data:
        return "empty"
    r = rng.random()
    if r < 0.35:
        n = rng.choice([1, 1, 1, 2, 4, 8])
        for _ in range(n):
            p = rng.randrange(lo, hi)
            data[p] ^= 1 << rng.randrange(8)
        return f"flip {n} bit(s) in [{lo},{hi})"
    if r < 0.65:
        w = rng.choice([1, 2, 4, 8])
        p = rng.randrange(lo, max(lo + 1, hi - w + 1))
        if rng.random() < 0.5:
            p -= p % w
        v = edge(rng, w, size_hint or len(data))
        put(data, p, w, v)
        return f"write u{8 * w} {v:#x} at {p}"
    if r < 0.8:
        p = rng.randrange(lo, hi)
        n = rng.randint(1, 16)
        b = rng.choice([0, 0xFF, 0x7F, 0x80, rng.randrange(256)])
        data[p:p + n] = bytes([b]) * n
        return f"fill {n} bytes of {b:#x} at {p}"
    if r < 0.9:
        p = rng.randrange(lo, hi)
        n = rng.randint(1, 8)
        del data[p:p + n]
        return f"delete {n} bytes at {p}"
    p = rng.randrange(lo, hi)
    n = rng.randint(1, 8)
    data[p:p] = bytes(rng.randrange(256) for _ in range(n))
    return f"insert {n} bytes at {p}"


def truncate(rng, data, header_end=None):
    if header_end and rng.random() < 0.6:
        n = rng.randrange(0, max(1, min(header_end + 16, len(data))))
    else:
        n = rng.randrange(0, max(1, len(data)))
    del data[n:]
    return f"truncate to {n} bytes"


# ---------------------------------------------------------------- JSON mutations

def json_paths(obj, path=()):
    yield path
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from json_paths(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from json_paths(v, path + (i,))


def json_get(obj, path):
    for p in path:
        obj = obj[p]
    return obj


def json_mutation(rng, obj, paths=None):
    """Mutates a parsed JSON document in place (or returns a replacement). Returns (obj, description)."""
    paths = paths if paths is not None else list(json_paths(obj))
    numeric = [q for q in paths if q and isinstance(json_get(obj, q), (int, float)) and not isinstance(json_get(obj, q), bool)]
    if numeric and rng.random() < 0.3:
        # Config values are where a model's shape comes from: zero, negative and huge ones.
        q = rng.choice(numeric)
        v = rng.choice([0, -1, -2**31, 2**31, 2**62, 2**63, 10**30, 0.5, 1e300, 7])
        json_get(obj, q[:-1])[q[-1]] = v
        return obj, f"set number {list(q)} = {v}"
    path = rng.choice(paths)
    if not path:
        return rng.choice([[], None, 1, "x", [obj]]), "replace the whole document"
    parent, last = json_get(obj, path[:-1]), path[-1]
    cur = parent[last]
    r = rng.random()
    if r < 0.5:
        v = copy.deepcopy(rng.choice(JSON_EDGES))
        parent[last] = v
        return obj, f"set {list(path)} = {json.dumps(v)[:60]}"
    if r < 0.6:
        if isinstance(parent, dict):
            del parent[last]
        else:
            del parent[last]
        return obj, f"delete {list(path)}"
    if r < 0.7 and isinstance(cur, (int, float)) and not isinstance(cur, bool):
        v = rng.choice([-cur, cur + 1, cur - 1, cur * 2, cur * 1000003, -1 - cur, cur + 0.5])
        parent[last] = v
        return obj, f"set {list(path)} = {v} (was {cur})"
    if r < 0.8 and isinstance(cur, list):
        op = rng.choice(["dup", "drop", "rev", "append"])
        if op == "dup" and cur:
            cur.append(copy.deepcopy(rng.choice(cur)))
        elif op == "drop" and cur:
            cur.pop(rng.randrange(len(cur)))
        elif op == "rev":
            cur.reverse()
        else:
            cur.append(copy.deepcopy(rng.choice(JSON_EDGES)))
        return obj, f"list {op} at {list(path)}"
    if r < 0.9:
        v = cur
        for _ in range(rng.choice([1, 10, 2000])):
            v = [v]
        parent[last] = v
        return obj, f"nest {list(path)} deeply"
    if isinstance(parent, dict) and isinstance(last, str):
        v = parent.pop(last)
        nk = rng.choice(["", last + ".x", last.upper(), "__metadata__", last[:-1]])
        parent[nk] = v
        return obj, f"rename key {last!r} -> {nk!r}"
    parent[last] = str(cur)[:40]
    return obj, f"stringify {list(path)}"


def dump_json(obj):
    return json.dumps(obj, ensure_ascii=False).encode("utf-8", "surrogatepass")


def mutate_json_file(rng, data, bias=None):
    """A JSON file (config, index, tokenizer): a structured edit, else bytes."""
    if rng.random() < 0.75:
        try:
            obj = json.loads(data)
        except Exception:
            obj = None
        if obj is not None:
            paths = list(json_paths(obj))
            if bias:
                paths = bias(paths, rng)
            obj, what = json_mutation(rng, obj, paths)
            return bytearray(dump_json(obj)), "json: " + what
    if rng.random() < 0.2:
        return data, truncate(rng, data)
    return data, byte_mutation(rng, data)


# ---------------------------------------------------------------- safetensors

def st_split(data):
    (n,) = struct.unpack_from("<Q", data, 0)
    return n, json.loads(bytes(data[8:8 + n])), bytes(data[8 + n:])


def st_join(header, body, pad=True):
    h = dump_json(header)
    if pad:
        h += b" " * (-len(h) % 8)
    return bytearray(struct.pack("<Q", len(h)) + h + body)


DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
          "F8_E4M3": 1, "F8_E5M2": 1}


def st_structured(rng, data):
    n, header, body = st_split(data)
    keys = [k for k in header if k != "__metadata__"]
    # The tensors whose shapes a configuration is inferred from, more often than the others.
    shaping = [k for k in keys if re.search(r"patch_embedding|head\.head|ffn\.0\.weight|time_embedding\.0|text_embedding\.0|"
                                          r"token_embedding|conv1\.weight|conv2\.weight|pos_embedding|emb_pos|img_emb|cls_embedding", k)]
    key = rng.choice(shaping if shaping and rng.random() < 0.4 else keys)
    e = header[key]
    shape, (b, en) = e["shape"], e["data_offsets"]
    count = 1
    for d in shape:
        count *= d
    ops = ["shape_edge", "shape_reshape", "shape_zero", "dtype_unknown", "dtype_other", "offs_edge", "offs_overlap",
           "offs_swap", "offs_len", "drop_field", "metadata", "dup_key", "hdr_len", "wrong_type", "rank0"]
    op = rng.choice(ops)
    what = f"{op} on '{key}'"
    if op == "shape_edge":
        s = list(shape) or [1]
        s[rng.randrange(len(s))] = rng.choice([-1, 0, 2**31, 2**32 + 1, 2**62, 2**63 - 1, 10**20, 1.5, "3", None])
        e["shape"] = s
    elif op == "shape_reshape":
        # same element count, another shape: the byte count still fits, the model's expectations do not.
        forms = [[count], [1] + list(shape), list(reversed(shape)), list(shape) + [1], [count, 1], [1, count],
                 [1] * 9 + [count]]
        if count == 1:
            forms.append([])
        e["shape"] = rng.choice(forms)
    elif op == "shape_zero":
        e["shape"] = [0] + list(shape[1:]) if shape else [0]
        e["data_offsets"] = [b, b]
    elif op == "rank0":
        e["shape"] = []
        e["data_offsets"] = [b, b + DTYPES.get(e["dtype"], 4)]
    elif op == "dtype_unknown":
        e["dtype"] = rng.choice(["F128", "Q4_0", "", "f32", "F8_E4M3FNUZ", "C64", "U64", "I4", None, 7])
    elif op == "dtype_other":
        d = rng.choice(list(DTYPES))
        e["dtype"] = d
        if rng.random() < 0.5 and count * DTYPES[d] <= len(body):
            e["data_offsets"] = [b, b + count * DTYPES[d]]
    elif op == "offs_edge":
        i = rng.randrange(2)
        e["data_offsets"][i] = rng.choice([-1, -(2**63), 0, len(body), len(body) + 1, 2**63 - 1, 2**62, 2**64,
                                           en + 1, b - 1, 1.0, None])
    elif op == "offs_overlap":
        other = header[rng.choice(keys)]
        ob = other["data_offsets"][0]
        e["data_offsets"] = [ob, ob + (en - b)] if rng.random() < 0.7 else [ob + 1, ob + 1 + (en - b)]
    elif op == "offs_swap":
        e["data_offsets"] = [en, b]
    elif op == "offs_len":
        e["data_offsets"] = rng.choice([[b], [b, en, en], [], {"0": b}, f"{b},{en}"])
    elif op == "drop_field":
        del e[rng.choice(["shape", "dtype", "data_offsets"])]
    elif op == "wrong_type":
        header[key] = rng.choice([None, 1, "x", [], [e]])
    elif op == "metadata":
        header["__metadata__"] = rng.choice([None, 1, [], {"format": None}, {"a": {"b": [1]}}, "x"])
    elif op == "dup_key":
        # A duplicate key: JSON text with the entry listed twice (the second differs).
        h = dump_json(header)
        extra = dump_json({key: {"dtype": e["dtype"], "shape": [1], "data_offsets": [0, DTYPES.get(e["dtype"], 4)]}})
        h = h[:-1] + b"," + extra[1:]
        h += b" " * (-len(h) % 8)
        return bytearray(struct.pack("<Q", len(h)) + h + body), what
    elif op == "hdr_len":
        out = st_join(header, body)
        hl = struct.unpack_from("<Q", out, 0)[0]
        put(out, 0, 8, rng.choice([hl - 1, hl + 1, hl + 8, 0, 1, 2, len(out) - 8, len(out) - 7, 100_000_001,
                                   2**63, 2**64 - 1, 2**32 + hl]))
        return out, what
    return st_join(header, body, pad=rng.random() < 0.8), what


def mutate_safetensors(rng, data):
    hl = struct.unpack_from("<Q", data, 0)[0]
    r = rng.random()
    if r < 0.5:
        try:
            d, what = st_structured(rng, data)
            return d, "safetensors json: " + what
        except Exception:  # a header that no longer parses (an earlier mutation): fall back to bytes
            pass
    if r < 0.62:
        return data, truncate(rng, data, header_end=8 + hl)
    if r < 0.92:
        return data, byte_mutation(rng, data, 0, 8 + hl, size_hint=hl)
    return data, byte_mutation(rng, data, 8 + hl, len(data))


# ---------------------------------------------------------------- GGUF

class GGUFFields:
    """Parses a GGUF file and records the position and width of every header field."""

    SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}

    def __init__(self, data):
        self.d = data
        self.fields = []  # (name, pos, width)
        self.pos = 0
        self.u(4, "magic")
        self.u(4, "version")
        nt = self.u(8, "tensor_count")
        nkv = self.u(8, "kv_count")
        self.strings = []
        self.arrays = []
        for _ in range(nkv):
            k = self.s("key")
            t = self.u(4, f"type[{k}]")
            self.value(t, k)
        self.tensors = []
        for _ in range(nt):
            name = self.s("tensor_name")
            nd = self.u(4, f"n_dims[{name}]")
            for i in range(nd):
                self.u(8, f"dim{i}[{name}]")
            self.u(4, f"type[{name}]")
            self.u(8, f"offset[{name}]")
            self.tensors.append(name)
        self.info_end = self.pos

    def u(self, w, name):
        if self.pos + w > len(self.d):
            raise ValueError("truncated")
        v = int.from_bytes(self.d[self.pos:self.pos + w], "little")
        self.fields.append((name, self.pos, w))
        self.pos += w
        return v

    def s(self, name):
        n = self.u(8, name + "_len")
        if self.pos + n > len(self.d):
            raise ValueError("truncated")
        self.strings.append((self.pos - 8, n))
        s = bytes(self.d[self.pos:self.pos + min(n, 200)]).decode("utf-8", "replace")
        self.pos += n
        return s

    def value(self, t, k):
        if t in self.SIZES:
            self.u(self.SIZES[t], f"value[{k}]")
        elif t == 8:
            self.s(f"str[{k}]")
        elif t == 9:
            et = self.u(4, f"array_type[{k}]")
            n = self.u(8, f"array_len[{k}]")
            self.arrays.append(k)
            for _ in range(n):
                self.value(et, k)
        else:
            raise ValueError(f"type {t}")


def mutate_gguf(rng, data):
    try:
        g = GGUFFields(data)
    except Exception:
        return data, byte_mutation(rng, data)
    r = rng.random()
    if r < 0.55:
        # A boundary value (or a small nudge) written into one header field.
        if rng.random() < 0.5:
            pick = [f for f in g.fields if re.match(r"(n_dims|dim\d|offset|tensor_count|kv_count|array_len|array_type|value\[general.alignment)", f[0])
                    or (f[0].startswith("type[") and f[0][5:-1] in g.tensors)]
        else:
            pick = g.fields
        name, pos, w = rng.choice(pick)
        old = int.from_bytes(data[pos:pos + w], "little")
        if rng.random() < 0.6:
            v = edge(rng, w, len(data))
        else:
            v = (old + rng.choice([-1, 1, 2, -2, 32, -32, 256, 1 << 20, rng.randrange(64)])) % (1 << (8 * w))
        if name.startswith("type[") and name[5:-1] in g.tensors and rng.random() < 0.5:
            v = rng.randrange(0, 42)
        put(data, pos, w, v)
        return data, f"gguf field {name}@{pos} {old:#x} -> {v:#x}"
    if r < 0.65:
        # comfy.gguf.orig_shape of a tensor: an array of dims that lies about the shape.
        name = rng.choice(g.tensors)
        dims = rng.choice([[0], [1], [2**31, 2**31, 2**31], [-1 & 0xFFFFFFFFFFFFFFFF], [], [7, 7], [1] * 9, [3, 2**62]])
        key = ("comfy.gguf.orig_shape." + name).encode()
        kv = struct.pack("<Q", len(key)) + key + struct.pack("<IIQ", 9, 11, len(dims)) + b"".join(struct.pack("<Q", d & 0xFFFFFFFFFFFFFFFF) for d in dims)
        # insert after the last metadata entry, bump kv_count; shift the data so its alignment stays.
        first_tensor = [f for f in g.fields if f[0] == "tensor_name_len"]
        at = first_tensor[0][1] if first_tensor else g.info_end
        # The tensor infos move by len(kv); the data section keeps its 32-byte alignment.
        out = data[:at] + kv + data[at:g.info_end]
        old_start = (g.info_end + 31) // 32 * 32
        new_end = g.info_end + len(kv)
        new_start = (new_end + 31) // 32 * 32
        out = out + bytes(new_start - new_end) + data[old_start:]
        out = bytearray(out)
        put(out, 16, 8, int.from_bytes(data[16:24], "little") + 1)
        return out, f"gguf orig_shape of '{name}' = {dims}"
    if r < 0.75:
        return data, truncate(rng, data, header_end=g.info_end)
    if r < 0.95:
        return data, byte_mutation(rng, data, 0, g.info_end)
    return data, byte_mutation(rng, data, g.info_end, len(data))


# ---------------------------------------------------------------- torch .pth (zip + pickle)

def zip_fields(data):
    """Positions of the zip record fields: EOCD, zip64 locator/record, central directory entries, local headers."""
    out = []
    eocd = bytes(data).rfind(b"PK\x05\x06")
    if eocd < 0:
        return out
    for name, off, w in [("eocd.disk", 4, 2), ("eocd.count_disk", 8, 2), ("eocd.count", 10, 2), ("eocd.cd_size", 12, 4),
                         ("eocd.cd_offset", 16, 4), ("eocd.comment_len", 20, 2)]:
        out.append((name, eocd + off, w))
    loc = eocd - 20
    if loc >= 0 and data[loc:loc + 4] == b"PK\x06\x07":
        out.append(("zip64loc.offset", loc + 8, 8))
        rec = int.from_bytes(data[loc + 8:loc + 16], "little")
        for name, off, w in [("zip64.count", 32, 8), ("zip64.cd_size", 40, 8), ("zip64.cd_offset", 48, 8)]:
            out.append((name, rec + off, w))
    cd = int.from_bytes(data[eocd + 16:eocd + 20], "little")
    if cd == 0xFFFFFFFF and loc >= 0:
        rec = int.from_bytes(data[loc + 8:loc + 16], "little")
        cd = int.from_bytes(data[rec + 48:rec + 56], "little")
    p = cd
    while data[p:p + 4] == b"PK\x01\x02":
        for name, off, w in [("method", 10, 2), ("csize", 20, 4), ("usize", 24, 4), ("name_len", 28, 2),
                             ("extra_len", 30, 2), ("comment_len", 32, 2), ("local_offset", 42, 4)]:
            out.append(("cd." + name, p + off, w))
        nl, el, cl = (int.from_bytes(data[p + o:p + o + 2], "little") for o in (28, 30, 32))
        e = p + 46 + nl
        while e + 4 <= p + 46 + nl + el:
            tag, ln = int.from_bytes(data[e:e + 2], "little"), int.from_bytes(data[e + 2:e + 4], "little")
            out.append(("cd.extra_tag", e, 2))
            out.append(("cd.extra_len", e + 2, 2))
            if tag == 1:
                for q in range(e + 4, e + 4 + ln, 8):
                    out.append(("cd.zip64_value", q, 8))
            e += 4 + ln
        lo = int.from_bytes(data[p + 42:p + 46], "little")
        if data[lo:lo + 4] == b"PK\x03\x04":
            for name, off, w in [("method", 8, 2), ("csize", 18, 4), ("usize", 22, 4), ("name_len", 26, 2), ("extra_len", 28, 2)]:
                out.append(("local." + name, lo + off, w))
        p += 46 + nl + el + cl
    return out


PICKLE_INT_OPS = {"BININT", "BININT1", "BININT2", "LONG1"}


def encode_int(v):
    if 0 <= v < 256:
        return b"K" + bytes([v])
    if 0 <= v < 65536:
        return b"M" + struct.pack("<H", v)
    if -(2**31) <= v < 2**31:
        return b"J" + struct.pack("<i", v)
    n = (v.bit_length() + 8) // 8
    n = min(n, 255)
    return b"\x8a" + bytes([n]) + (v & ((1 << (8 * n)) - 1)).to_bytes(n, "little")


def mutate_pickle(rng, pkl):
    ops = list(pickletools.genops(pkl))
    spans = [(op, arg, pos, (ops[i + 1][2] if i + 1 < len(ops) else len(pkl))) for i, (op, arg, pos) in enumerate(ops)]
    r = rng.random()
    ints = [s for s in spans if s[0].name in PICKLE_INT_OPS]
    strs = [s for s in spans if s[0].name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8")]
    if r < 0.35 and ints:
        op, arg, a, b = rng.choice(ints)
        v = rng.choice([-1, 0, 1, 2**31 - 1, 2**31, 2**32, 2**62, 2**63 - 1, -(2**63), 2**64, 2**70, arg + 1, arg - 1,
                        arg * 2, arg * 1000003, -arg])
        new = encode_int(v)
        return pkl[:a] + new + pkl[b:], f"pickle int {op.name} {arg} at {a} -> {v}"
    if r < 0.5 and strs:
        op, arg, a, b = rng.choice(strs)
        v = rng.choice(["", "os", "system", "builtins", "eval", "torch._utils", "_rebuild_tensor_v2", "storage",
                        "../data.pkl", "0", "999", "x" * 300, "torch.FloatStorage", "FloatStorage", "\udc80"])
        enc = v.encode("utf-8", "surrogatepass")
        new = (b"\x8c" + bytes([len(enc)]) + enc) if len(enc) < 256 else (b"X" + struct.pack("<I", len(enc)) + enc)
        return pkl[:a] + new + pkl[b:], f"pickle string {arg!r} at {a} -> {v[:20]!r}"
    if r < 0.65:
        op, arg, a, b = rng.choice(spans)
        if rng.random() < 0.5:
            return pkl[:a] + pkl[b:], f"pickle delete {op.name} at {a}"
        return pkl[:b] + pkl[a:b] + pkl[b:], f"pickle duplicate {op.name} at {a}"
    if r < 0.8:
        op, arg, a, b = rng.choice(spans)
        code = bytes([rng.choice(b"()tl]}aesuRbQ.N\x85\x86\x87\x94h\x71\x72cp0123456789ABCDEFGHIJKLMNOPSTUVWXYZ\x80\x8a\x95\xff\x00")])
        return pkl[:a] + code + pkl[a + 1:], f"pickle opcode {op.name} at {a} -> {code!r}"
    data = bytearray(pkl)
    if rng.random() < 0.3:
        return bytes(data[:rng.randrange(len(data))]), "pickle truncated"
    what = byte_mutation(rng, data)
    return bytes(data), "pickle bytes: " + what


def with_pickle(data, transform):
    """The .pth zip `data` with its data.pkl replaced by transform(data.pkl) -> (pickle, what)."""
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as z:
        entries = [(i.filename, z.read(i)) for i in z.infolist()]
    k = next(i for i, (n, _) in enumerate(entries) if n.endswith("data.pkl"))
    pkl, what = transform(entries[k][1])
    entries[k] = (entries[k][0], pkl)
    return rebuild_zip(entries), what


def rebuild_zip(entries):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name, b in entries:
            z.writestr(zipfile.ZipInfo(name), b)
    return bytearray(buf.getvalue())


def build_zip64(entries):
    """A stored zip in which every size and offset is in zip64 form (as torch.save writes checkpoints over 4 GB)."""
    out = bytearray()
    central = bytearray()
    for name, b in entries:
        nb = name.encode()
        crc = zipfile.crc32(b) & 0xFFFFFFFF
        off = len(out)
        extra = struct.pack("<HHQQ", 1, 16, len(b), len(b))
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 45, 0, 0, 0, 0, crc, 0xFFFFFFFF, 0xFFFFFFFF, len(nb), len(extra))
        out += nb + extra + b
        cextra = struct.pack("<HHQQQ", 1, 24, len(b), len(b), off)
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, 0, 0, 0, 0, crc, 0xFFFFFFFF, 0xFFFFFFFF,
                               len(nb), len(cextra), 0, 0, 0, 0, 0xFFFFFFFF)
        central += nb + cextra
    cd_off = len(out)
    out += central
    rec = len(out)
    out += struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, len(entries), len(entries), len(central), cd_off)
    out += struct.pack("<IIQI", 0x07064B50, 0, rec, 1)
    out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    return out


def pickle_bomb(rng, pkl):
    """Hostile pickles that are valid opcode streams: deep nesting, many single SETITEM/APPEND ops."""
    n = rng.choice([10_000, 100_000, 1_000_000])
    kind = rng.choice(["nest_dict", "nest_list", "setitem", "append", "memo"])
    head = b"\x80\x02"
    if kind == "nest_dict":
        body = (b"}" + b"\x8c\x01a") * n + b"}" + b"s" * n
    elif kind == "nest_list":
        body = b"]" * (n + 1) + b"a" * n
    elif kind == "setitem":
        body = b"}" + b"J" + b"".join(struct.pack("<i", i) + b"K\x01sJ" for i in range(n))[:-1]
    elif kind == "append":
        body = b"]" + b"K\x01a" * n
    else:
        body = b"]q\x00" + b"h\x00h\x00\x86q\x00" * min(n, 60)
    return head + body + b".", f"pickle bomb {kind} x{n}"


def mutate_pth(rng, data):
    if rng.random() < 0.25:
        try:
            with zipfile.ZipFile(io.BytesIO(bytes(data))) as z:
                entries = [(i.filename, z.read(i)) for i in z.infolist()]
            data = build_zip64(entries)
            if rng.random() < 0.2:
                return data, "rebuilt as zip64"
        except Exception:
            pass
    r = rng.random()
    if r < 0.05:
        return with_pickle(data, lambda pkl: pickle_bomb(rng, pkl))
    if r < 0.4:
        try:
            return with_pickle(data, lambda pkl: mutate_pickle(rng, pkl))
        except Exception:
            pass
    if r < 0.48:
        # a storage entry shorter or longer than the pickle says, or gone, or renamed.
        with zipfile.ZipFile(io.BytesIO(bytes(data))) as z:
            entries = [(i.filename, z.read(i)) for i in z.infolist()]
        idx = [i for i, (n, _) in enumerate(entries) if "/data/" in n]
        k = rng.choice(idx)
        n, b = entries[k]
        op = rng.choice(["short", "long", "drop", "rename", "empty"])
        if op == "short":
            entries[k] = (n, b[:rng.randrange(len(b) + 1)])
        elif op == "long":
            entries[k] = (n, b + bytes(rng.choice([1, 2, 4, 64])))
        elif op == "drop":
            del entries[k]
        elif op == "rename":
            entries[k] = (n + "x", b)
        else:
            entries[k] = (n, b"")
        return rebuild_zip(entries), f"zip storage entry {n}: {op}"
    if r < 0.75:
        fields = zip_fields(data)
        if fields:
            name, pos, w = rng.choice(fields)
            old = int.from_bytes(data[pos:pos + w], "little")
            v = edge(rng, w, len(data)) if rng.random() < 0.6 else (old + rng.choice([-1, 1, 30, -30, 4096])) % (1 << (8 * w))
            put(data, pos, w, v)
            return data, f"zip field {name}@{pos} {old:#x} -> {v:#x}"
    if r < 0.87:
        return data, truncate(rng, data)
    return data, byte_mutation(rng, data)


# ---------------------------------------------------------------- tokenizer.json

def tokenizer_bias(paths, rng):
    """Most tokenizer.json paths are vocab entries; weight the rest."""
    rest = [p for p in paths if not (len(p) >= 3 and p[:2] == ("model", "vocab"))]
    vocab = [p for p in paths if len(p) >= 3 and p[:2] == ("model", "vocab")]
    return rest if (rng.random() < 0.75 or not vocab) else rng.sample(vocab, min(200, len(vocab)))


def mutate_tokenizer(rng, data):
    if rng.random() < 0.25:
        obj = json.loads(data)
        norm = obj.get("normalizer") or {}
        cands = [norm] + list(norm.get("normalizers") or [])
        pc = next((n for n in cands if isinstance(n, dict) and "precompiled_charsmap" in n), None)
        if pc is not None:
            blob = bytearray(base64.b64decode(pc["precompiled_charsmap"]))
            if rng.random() < 0.2:
                what = truncate(rng, blob, header_end=64)
            else:
                trie = int.from_bytes(blob[:4], "little")
                what = byte_mutation(rng, blob, 0, 4 + trie, size_hint=trie)
            pc["precompiled_charsmap"] = base64.b64encode(bytes(blob)).decode()
            return bytearray(dump_json(obj)), "precompiled_charsmap: " + what
    return mutate_json_file(rng, data, bias=tokenizer_bias)


# ---------------------------------------------------------------- targets

def mutate_for(kind):
    return {"safetensors": mutate_safetensors, "gguf": mutate_gguf, "pth": mutate_pth, "json": mutate_json_file,
            "tokenizer": mutate_tokenizer}[kind]


W = "weights/"
PIPE = ["generate", "--dit", "{G}/weights/pipe_dit_t2v.safetensors", "--t5", "{G}/weights/pipe_t5.safetensors",
        "--vae", "{G}/weights/pipe_vae.safetensors", "--tokenizer", "{G}/tokenizer", "--prompt", "a red fox, 1080p",
        "--steps", "1", "--frames", "1", "--size", "48x32", "--seed", "1", "--output", "{OUT}"]


def conf(case):
    return ["conformance", "{G}", "--filter", case]


# name: (file kind, file to replace relative to the golden copy, commands (one is picked per mutant))
TARGETS = {
    "st-dit": ("safetensors", W + "dit_t2v.safetensors", [["info", "{F}"], conf("dit_t2v_basic")]),
    "st-dit-bf16": ("safetensors", W + "dit_t2v_bf16.safetensors", [["info", "{F}"], conf("weights_dit_t2v_bf16")]),
    "st-dit-fp8s": ("safetensors", W + "dit_t2v_fp8_scaled.safetensors", [["info", "{F}"], conf("weights_dit_t2v_fp8_scaled")]),
    "st-dit-comfy": ("safetensors", W + "dit_t2v_comfy_f16.safetensors", [["info", "{F}"], conf("weights_dit_t2v_comfy_f16")]),
    "st-flf2v": ("safetensors", W + "dit_flf2v.safetensors", [conf("dit_flf2v_basic")]),
    "st-vace": ("safetensors", W + "dit_vace.safetensors", [["info", "{F}"], conf("dit_vace_basic")]),
    "st-t5": ("safetensors", W + "pipe_t5.safetensors", [PIPE]),
    "st-vae": ("safetensors", W + "pipe_vae.safetensors", [PIPE]),
    "st-clip": ("safetensors", W + "clip_visual.safetensors", [conf("clip_visual_basic")]),
    "st-shard": ("safetensors", W + "dit_t2v_sharded/diffusion_pytorch_model-00002-of-00002.safetensors",
                 [["info", "{G}/weights/dit_t2v_sharded"], conf("weights_dit_t2v_sharded")]),
    "gguf-q4_0": ("gguf", W + "dit_t2v_q4_0.gguf", [["info", "{F}"], conf("weights_dit_t2v_q4_0")]),
    "gguf-q8_0": ("gguf", W + "dit_t2v_q8_0.gguf", [["info", "{F}"], conf("weights_dit_t2v_q8_0")]),
    "gguf-k": ("gguf", W + "dit_t2v256_q4_k_m.gguf", [["info", "{F}"], conf("weights_dit_t2v256_q4_k_m")]),
    "gguf-types": ("gguf", "ggml_types.gguf", [["info", "{F}"]]),
    "pth-vae": ("pth", W + "vae.pth", [conf("weights_vae_pth")]),
    "pth-t5": ("pth", W + "t5_bf16.pth", [conf("weights_t5_bf16_pth")]),
    "pth-clip": ("pth", W + "clip_visual.pth", [conf("weights_clip_visual_pth")]),
    "json-index": ("json", W + "dit_t2v_sharded/diffusion_pytorch_model.safetensors.index.json",
                   [["info", "{G}/weights/dit_t2v_sharded"], conf("weights_dit_t2v_sharded")]),
    "json-shard-config": ("json", W + "dit_t2v_sharded/config.json",
                          [["info", "{G}/weights/dit_t2v_sharded"], conf("weights_dit_t2v_sharded")]),
    "json-diffusers": ("json", W + "dit_t2v_diffusers/transformer/config.json",
                       [["info", "{G}/weights/dit_t2v_diffusers"], conf("weights_dit_t2v_diffusers")]),
    "json-vae-diffusers": ("json", W + "vae_diffusers/vae/config.json", [conf("weights_vae_diffusers")]),
    "json-t5-hf": ("json", W + "t5_hf/config.json", [conf("weights_t5_hf")]),
    "json-clip-hf": ("json", W + "clip_visual_hf/config.json", [conf("weights_clip_visual_hf")]),
    "tokenizer": ("tokenizer", "tokenizer/tokenizer.json", [conf("tokenizer_"), PIPE]),
    # Tests/Variants models (mirrored into the golden copy's root, see VARIANT_MODELS)
    "gguf-t5": ("gguf", "v_t5_gguf.gguf", [["info", "{F}"]]),
    "json-vae-file": ("json", "v_vae_diffusers_file/vae/config.json",
                      [["info", "{G}/v_vae_diffusers_file/vae/diffusion_pytorch_model.safetensors"]]),
    "json-dit-file": ("json", "v_dit_file_in_folder/config.json",
                      [["info", "{G}/v_dit_file_in_folder/diffusion_pytorch_model.safetensors"]]),
}
VARIANT_WEIGHTS = os.path.join(ROOT, "Tests", "Variants", "weights")
VARIANT_MODELS = ["v_t5_gguf.gguf", "v_vae_diffusers_file", "v_dit_file_in_folder"]
SEED_OVERRIDE = {"ggml_types.gguf": os.path.join(ROOT, "Tests", "Variants", "ggml", "ggml_types.gguf"),
                 **{r: os.path.join(VARIANT_WEIGHTS, r) for r in
                    ["v_t5_gguf.gguf", "v_vae_diffusers_file/vae/config.json", "v_dit_file_in_folder/config.json"]}}


def mirror(src, dst):
    """dst: real folders, every file a symlink into src (cases/ as a whole is a symlink: it is never mutated)."""
    os.makedirs(dst, exist_ok=True)
    for name in os.listdir(src):
        s, d = os.path.join(src, name), os.path.join(dst, name)
        if os.path.isdir(s) and name != "cases":
            mirror(s, d)
        else:
            os.symlink(s, d)


class Worker:
    def __init__(self, idx, work):
        self.dir = os.path.join(work, f"w{idx}")
        shutil.rmtree(self.dir, ignore_errors=True)
        self.golden = os.path.join(self.dir, "golden")
        mirror(GOLDEN, self.golden)
        os.symlink(SEED_OVERRIDE["ggml_types.gguf"], os.path.join(self.golden, "ggml_types.gguf"))
        for name in VARIANT_MODELS:
            src = os.path.join(VARIANT_WEIGHTS, name)
            if os.path.isdir(src):
                mirror(src, os.path.join(self.golden, name))
            else:
                os.symlink(src, os.path.join(self.golden, name))


SIGNALS = {132: "SIGILL", 133: "SIGTRAP", 134: "SIGABRT", 135: "SIGBUS", 136: "SIGFPE", 139: "SIGSEGV"}
NUMERIC = re.compile(r"rel_l2|max_abs|mismatch at|differ|not equal|expected .* got", re.I)


def classify(rc, out, mutant_path, output_file, cmd):
    if rc is None:
        return "hang"
    if rc < 0 or rc in SIGNALS:
        return "crash"
    if "Fatal error" in out or "Crash" in out and "Thread" in out:
        return "crash"
    if rc != 0 and cmd[0] == "generate" and os.path.exists(output_file):
        return "partial"
    if rc != 0 or re.search(r"\bFAIL", out):
        base = os.path.basename(mutant_path)
        folder = os.path.basename(os.path.dirname(mutant_path))
        named = base in out or (folder and folder in out and folder not in ("weights", "golden"))
        fail_lines = [l for l in out.splitlines() if "FAIL" in l or "rror" in l]
        if not named and not any(NUMERIC.search(l) for l in fail_lines):
            return "unhelpful"
        if "Error Domain=" in out or re.search(r"\w+Error\(\w+:", out):  # a raw Foundation / Swift error dump
            return "unhelpful"
    return None


def signature(kind, out, rc):
    m = re.search(r"Fatal error: ([^\n]*)", out)
    msg = m.group(1) if m else ""
    msg = re.sub(r"\d+", "N", msg)[:120]
    frames = re.findall(r"\bin (?:wan|libWan\w*)? ?at (/[^\n]*?Sources/[^\n:]*:\d+)", out)
    if not frames:
        frames = re.findall(r"(Sources/\w+/\w+\.swift:\d+)", out)
    top = frames[0] if frames else ""
    if kind == "unhelpful":
        lines = [l for l in out.splitlines() if "rror" in l or "FAIL" in l]
        msg = re.sub(r"\d+", "N", lines[-1] if lines else out.strip()[-120:])[:120]
    return f"{kind}|rc={rc if kind == 'crash' else ''}|{msg}|{top}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wan", default=os.path.join(ROOT, ".build", "release", "wan"))
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--count", type=int, default=0, help="mutants in all (0: until --minutes)")
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=20)
    ap.add_argument("--memory-gb", type=float, default=6, help="address-space limit of each run (RLIMIT_AS)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--work", default="/tmp/wan-fuzz")
    ap.add_argument("--findings", default="/tmp/fuzz-findings")
    ap.add_argument("--log", help="write one line per mutant (target, rc, verdict, mutation, last output line)")
    ap.add_argument("--list", action="store_true")
    a = ap.parse_args()
    # The fuzzer itself stays small (a mutator that misbehaves gets a MemoryError, not the OOM killer).
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, resource.getrlimit(resource.RLIMIT_AS)[1]))
    if a.list:
        for k, (kind, rel, cmds) in TARGETS.items():
            print(f"{k:20s} {kind:12s} {rel}")
        return
    targets = [t for t in a.targets.split(",") if t]
    for t in targets:
        if t not in TARGETS:
            sys.exit(f"unknown target {t} (see --list)")
    os.makedirs(a.findings, exist_ok=True)
    seeds = {}
    for t in targets:
        rel = TARGETS[t][1]
        src = SEED_OVERRIDE.get(rel, os.path.join(GOLDEN, rel))
        with open(src, "rb") as f:
            seeds[t] = f.read()
    workers = [Worker(i, a.work) for i in range(a.jobs)]
    free = list(workers)
    lock = threading.Lock()
    stats = {}
    sigs = {}
    deadline = time.time() + a.minutes * 60
    log = open(a.log, "w") if a.log else None

    def limit():
        cap = int(a.memory_gb * (1 << 30))
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    def one(n):
        rng = random.Random(a.seed * 1_000_003 + n)
        t = targets[n % len(targets)]
        kind, rel, cmds = TARGETS[t]
        data = bytearray(seeds[t])
        whats = []
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            try:
                data, what = mutate_for(kind)(rng, data)
            except Exception as ex:
                what = f"(mutator failed: {ex!r})"
            whats.append(what)
        with lock:
            w = free.pop()
        try:
            path = os.path.join(w.golden, rel)
            os.unlink(path)
            with open(path, "wb") as f:
                f.write(data)
            out_file = os.path.join(w.dir, "out.png")
            for p in (out_file, out_file + ".json"):
                if os.path.exists(p):
                    os.unlink(p)
            cmd = [c.replace("{G}", w.golden).replace("{F}", path).replace("{OUT}", out_file) for c in rng.choice(cmds)]
            t0 = time.time()
            try:
                p = subprocess.run([a.wan] + cmd, capture_output=True, timeout=a.timeout, start_new_session=True,
                                   preexec_fn=limit,
                                   env=dict(os.environ, SWIFT_BACKTRACE="enable=yes,interactive=no,symbolicate=fast"))
                rc, out = p.returncode, (p.stdout + p.stderr).decode("utf-8", "replace")
            except subprocess.TimeoutExpired as ex:
                rc, out = None, ((ex.stdout or b"") + (ex.stderr or b"")).decode("utf-8", "replace")
            dt = time.time() - t0
            verdict = classify(rc, out, path, out_file, cmd)
            with lock:
                s = stats.setdefault(t, {"mutants": 0, "crash": 0, "hang": 0, "unhelpful": 0, "partial": 0})
                s["mutants"] += 1
                if log:
                    last = next((l for l in reversed(out.strip().splitlines()) if "FAIL" in l or "rror" in l),
                                (out.strip().splitlines() or [""])[-1])
                    log.write(f"{n}\t{t}\t{rc}\t{dt:.1f}\t{verdict}\t{'; '.join(whats)}\t{last[:300]}\n")
                    log.flush()
                if verdict:
                    s[verdict] += 1
                    sig = signature(verdict, out, rc)
                    first = sig not in sigs
                    sigs.setdefault(sig, []).append(n)
                    d = os.path.join(a.findings, f"{verdict}-{n}")
                    if first or len(sigs[sig]) <= 3:
                        os.makedirs(d, exist_ok=True)
                        with open(os.path.join(d, os.path.basename(rel)), "wb") as f:
                            f.write(data)
                        with open(os.path.join(d, "cmd.txt"), "w") as f:
                            f.write(f"target {t}\nmutation: {'; '.join(whats)}\nrc {rc} ({dt:.1f} s)\nsignature {sig}\n"
                                    f"{a.wan} {' '.join(cmd)}\n(the mutant replaces {rel} of a golden copy)\n")
                        with open(os.path.join(d, "output.txt"), "w") as f:
                            f.write(out[-20000:])
                    if first:
                        print(f"[{n}] NEW {verdict} on {t}: {'; '.join(whats)} :: {sig}", flush=True)
        finally:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            os.symlink(SEED_OVERRIDE.get(rel, os.path.join(GOLDEN, rel)), path)
            with lock:
                free.append(w)

    n = 0
    with cf.ThreadPoolExecutor(a.jobs) as ex:
        pending = set()
        while True:
            if (a.count and n >= a.count) or (not a.count and time.time() > deadline):
                break
            while len(pending) >= a.jobs * 2:
                done, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                for f in done:
                    f.result()
            pending.add(ex.submit(one, n))
            n += 1
        for f in cf.as_completed(pending):
            f.result()
    total = sum(s["mutants"] for s in stats.values())
    print(f"\n{total} mutants")
    for t, s in sorted(stats.items()):
        print(f"  {t:20s} {s['mutants']:5d} mutants  crash {s['crash']}  hang {s['hang']}  unhelpful {s['unhelpful']}  partial {s['partial']}")
    print(f"{len(sigs)} distinct signatures:")
    for sig, ns in sorted(sigs.items(), key=lambda kv: -len(kv[1])):
        print(f"  {len(ns):4d}x {sig}  (e.g. mutant {ns[0]})")
    with open(os.path.join(a.findings, "summary.json"), "w") as f:
        json.dump({"stats": stats, "signatures": sigs}, f, indent=1)


if __name__ == "__main__":
    main()

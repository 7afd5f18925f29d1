"""A simulation study on disk: finished replicates in a zarr directory, written as they
arrive, readable while the study runs and after it was killed.

Layout of ``path``::

    study.json              what the study is (design, grid, seed, methods, settings,
                            package version); a resumed run must match it
    batches/<k>.zarr        finished replicates, one zarr group per flush: dim ``item``
                            with the replicate's cell and index and all its values

A batch is written under a temporary name and renamed into ``batches/`` when complete
(an atomic rename on a local or POSIX file system), so a run killed mid-write leaves at most
a ``.tmp`` directory, which readers ignore and the next run removes (:meth:`Store.clean`;
never a reader: it would remove the batch a running writer is filling): every batch a reader
sees is whole, and a replicate is either in the store or computed again.

Opening costs a fixed time per batch, so the writer keeps their number small:
:meth:`Store.compact` merges the batches into one (written the same atomic way, then the
merged ones removed). A reader between that rename and the removal, or after a kill in
between, sees some replicates twice; readers keep one copy of each ``(cell, replicate)``
(the copies are equal), and a reader whose batch was removed under it lists them again.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

SPEC_FILE = "study.json"
BATCHES = "batches"
#: reads of a store whose batches change under them (a writer compacting) before giving up
READ_ATTEMPTS = 8


class StoreMismatchError(ValueError):
    """The store at a path was written by a study with other settings."""


def canonical(spec: dict) -> dict:
    """``spec`` as it reads back from JSON (tuples become lists, numpy scalars Python's)."""
    return json.loads(json.dumps(spec, default=_jsonable))


def _jsonable(x):
    """JSON for what a spec may hold beyond JSON's types: the same in every process (a repr
    with a memory address, as of a function, made a stored study impossible to resume in a
    new process)."""
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return _describe(x, set())


def _describe(x, seen: set) -> str:
    """A function by module, qualname and a digest of its code and of what it carries: default
    values and the values its closure captured (two closures from one factory share code but
    not the captured values, and a stored study of one must not resume as the other); a
    ``functools.partial`` by its function and bound arguments; anything else by ``repr``.
    Module globals a function reads are not part of it (they are looked up when it runs), nor
    is the state of a captured object whose ``repr`` holds its address (it is recorded by its
    type, so that the study can be resumed in another process)."""
    if isinstance(x, functools.partial):
        bound = _carried([list(x.args), sorted(x.keywords.items())], seen)
        return f"<partial {_describe(x.func, seen)} {bound}>"
    if callable(x) and hasattr(x, "__qualname__"):  # by name and code (two lambdas share a name)
        code = getattr(x, "__code__", None)
        digest = "" if code is None else " " + _code_digest(code)
        carried = [getattr(x, "__defaults__", None), getattr(x, "__kwdefaults__", None),
                   _cells(getattr(x, "__closure__", None))]
        if code is not None and any(c for c in carried) and id(x) not in seen:
            digest += " " + _carried(carried, seen | {id(x)})
        return f"<callable {getattr(x, '__module__', '?')}.{x.__qualname__}{digest}>"
    return repr(x)


def _cells(closure) -> list | None:
    """The values a closure captured (an empty cell, a name not yet bound, as a marker)."""
    if not closure:
        return None
    out = []
    for cell in closure:
        try:
            out.append(cell.cell_contents)
        except ValueError:
            out.append("<empty cell>")
    return out


def _carried(values, seen: set) -> str:
    """A digest of values (:func:`_text`), the same in every process."""
    return hashlib.sha1(_text(values, seen).encode()).hexdigest()[:12]


def _text(v, seen: set) -> str:
    """Text of a value that is the same in every process and tells values apart: containers
    element by element (sets and dicts sorted by their elements' text, whatever their types;
    a container that holds itself marked once), arrays by dtype, shape and a digest of their
    bytes (object arrays element by element), pandas and xarray objects by their values and
    labels, functions by :func:`_describe`, other objects by ``repr`` (by their type where the
    ``repr`` holds an address)."""
    if v is None or isinstance(v, str | bytes | bool | int | float | complex):
        return repr(v)
    if isinstance(v, np.generic):
        return repr(v.item())
    if id(v) in seen:
        return "<cycle>"
    inner = seen | {id(v)}
    if isinstance(v, list | tuple):
        return f"{type(v).__name__}[{','.join(_text(x, inner) for x in v)}]"
    if isinstance(v, set | frozenset):
        return f"set{{{','.join(sorted(_text(x, inner) for x in v))}}}"
    if isinstance(v, dict):
        return f"{{{','.join(sorted(_text(k, inner) + ':' + _text(x, inner) for k, x in v.items()))}}}"
    if isinstance(v, np.ndarray):
        if v.dtype.hasobject:
            return f"array{v.shape}{_text(v.tolist(), inner)}"
        return f"array({v.dtype.str},{v.shape},{hashlib.sha1(np.ascontiguousarray(v).tobytes()).hexdigest()})"
    if isinstance(v, pd.Series | pd.DataFrame | pd.Index):
        cols = _text(list(v.columns), inner) if isinstance(v, pd.DataFrame) else _text(getattr(v, "name", None), inner)
        rows = pd.util.hash_pandas_object(v, index=not isinstance(v, pd.Index)).to_numpy()
        return f"{type(v).__name__}({cols},{_text(rows, inner)})"
    if isinstance(v, xr.DataArray | xr.Dataset):
        variables = {"<values>": v.variable, "<name>": v.name} if isinstance(v, xr.DataArray) else dict(v.data_vars)
        variables.update(v.coords)
        parts = {str(k): x if isinstance(x, str) or x is None else (list(x.dims), np.asarray(x.values))
                 for k, x in variables.items()}
        return f"{type(v).__name__}({_text(parts, inner)})"
    if callable(v):
        return _describe(v, seen)
    text = repr(v)  # an object whose repr holds its address by its type (or no run resumes)
    return f"<{type(v).__module__}.{type(v).__qualname__}>" if _ADDRESS.search(text) else text


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _code_digest(code) -> str:
    """A digest of a function's code that is the same in every process: its bytecode and its
    constants, nested code objects by their own digest (their repr holds an address)."""
    consts = [_code_digest(c) if hasattr(c, "co_code") else repr(c) for c in code.co_consts]
    return hashlib.sha1(code.co_code + "|".join(consts).encode()).hexdigest()[:12]


class Store:
    """A study's replicates on disk (see the module docstring).

    Parameters
    ----------
    path : str or Path
        Directory of the store (created when absent).
    spec : dict
        What the study is; an existing store must have been written with an equal spec,
        else :class:`StoreMismatchError` names the differing keys.
    """

    def __init__(self, path, spec: dict):
        self.path = Path(path)
        self.spec = canonical(spec)
        spec_path = self.path / SPEC_FILE
        if spec_path.exists():
            old = json.loads(spec_path.read_text())
            diff = sorted(k for k in set(old) | set(self.spec) if old.get(k) != self.spec.get(k))
            if diff:
                details = "; ".join(f"{k}: store has {old.get(k)!r}, this run {self.spec.get(k)!r}" for k in diff)
                raise StoreMismatchError(f"store {str(self.path)!r} holds another study ({details}); use another "
                                         "path or the same settings")
        else:
            if self.path.exists() and any(self.path.iterdir()):
                raise ValueError(f"store {str(self.path)!r} exists and is not a study store (no {SPEC_FILE})")
            (self.path / BATCHES).mkdir(parents=True, exist_ok=True)
            tmp = self.path / f".{SPEC_FILE}.{uuid.uuid4().hex}.tmp"
            tmp.write_text(json.dumps(self.spec, indent=1, sort_keys=True))
            os.replace(tmp, spec_path)

    def clean(self) -> None:
        """Remove the ``.tmp`` batches a killed writer left: for the writer only, when it
        starts (a reader that did it removed the batch a running writer was filling, which
        then crashed it or was renamed into place incomplete)."""
        for junk in (self.path / BATCHES).glob("*.tmp"):
            shutil.rmtree(junk, ignore_errors=True)

    def batches(self) -> list[Path]:
        """The complete batches, in the order they were written."""
        return sorted(p for p in (self.path / BATCHES).glob("*.zarr"))

    def done(self) -> set[tuple[int, int]]:
        """``(cell, replicate)`` pairs already in the store."""
        out: set[tuple[int, int]] = set()
        for p in self.batches():
            with xr.open_zarr(p, consolidated=False, chunks=None) as b:  # numpy, no scheduler
                out.update(zip(b["cell"].values.tolist(), b["replicate"].values.tolist(), strict=True))
        return out

    def write(self, flat: xr.Dataset) -> Path:
        """Write one batch (a Dataset with dim ``item`` and variables ``cell``, ``replicate``)
        atomically; returns its path."""
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.zarr"
        final = self.path / BATCHES / name
        tmp = self.path / BATCHES / f"{name}.tmp"
        flat.to_zarr(tmp, mode="w", consolidated=False, zarr_format=2)
        os.replace(tmp, final)
        return final

    def read(self, load: bool = False) -> xr.Dataset | None:
        """All complete batches as one flat Dataset along ``item``, one copy of each
        ``(cell, replicate)``; lazy (dask-backed) unless ``load``. None when nothing has
        been written yet."""
        for attempt in range(READ_ATTEMPTS):
            paths = self.batches()
            if not paths:
                return None
            try:
                return self._load(paths, load)
            except Exception:
                # a compaction removed a listed batch while it was read (a half-removed zarr
                # group fails in many ways): list again; an error on an unchanged listing is real
                if attempt == READ_ATTEMPTS - 1 or self.batches() == paths:
                    raise
                time.sleep(0.05 * (attempt + 1))
        return None

    @staticmethod
    def _load(paths: list[Path], load: bool = True) -> xr.Dataset:
        """The batches at ``paths`` as one flat Dataset, one copy of each ``(cell, replicate)``."""
        # loaded: read straight into numpy (chunks=None, no dask), never through a dask
        # scheduler (a distributed client would be the default one: the data would travel to
        # a worker and back, and the client keep the graphs)
        parts = [xr.open_zarr(p, consolidated=False, **({"chunks": None} if load else {})) for p in paths]
        if load:
            parts = [b.load() for b in parts]
        flat = parts[0] if len(parts) == 1 else xr.concat(parts, dim="item", data_vars="all", coords="minimal",
                                                          compat="override", join="override")
        key = flat["cell"].values * (int(flat["replicate"].values.max(initial=0)) + 1) + flat["replicate"].values
        _, first = np.unique(key, return_index=True)
        return flat if first.size == key.size else flat.isel(item=np.sort(first))

    def compact(self, min_batches: int = 2, newest: int | None = None) -> int:
        """Merge complete batches into one: the ``newest`` most recent (all when None), when
        there are at least ``min_batches`` of them; returns how many were merged (0: nothing
        done). Memory: the merged batches' data. The merged batch is written and renamed into
        place before the others are removed, so a kill at any point loses nothing (see the
        module docstring)."""
        paths = self.batches()
        if newest is not None:
            paths = paths[-newest:]
        if len(paths) < max(min_batches, 2):
            return 0
        flat = self._load(paths).drop_encoding()  # one chunk per variable, not the batches' chunks
        text = [k for k, x in flat.variables.items() if x.dtype.kind in "OTU"]
        self.write(flat.assign({k: flat[k].astype(object) for k in text}))
        for p in paths:
            shutil.rmtree(p, ignore_errors=True)
        return len(paths)


def in_process():
    """A context in which dask computes in this process (the synchronous scheduler), whatever
    the default scheduler is: a store's small reads (indices, text, the estimand) then never
    travel through a user's distributed client to a worker and back."""
    try:
        import dask
    except ImportError:  # no dask: nothing is lazy
        return contextlib.nullcontext()
    return dask.config.set(scheduler="synchronous")


def read_spec(path) -> dict:
    """The ``study.json`` of the store at ``path``."""
    p = Path(path) / SPEC_FILE
    if not p.exists():
        raise FileNotFoundError(f"{str(path)!r} is not a study store (no {SPEC_FILE})")
    return json.loads(p.read_text())

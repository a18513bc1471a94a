"""Class-sharded margin heads in the engine: swap in, keep out of DDP, checkpoint per rank, re-shard.

A loss term declared with ``sharded: true`` (``arcface``, ``cosface``, see distill/losses/margin.py)
trains with :class:`~distill.losses.partial_fc.ShardedMarginSoftmax`: each rank holds rows
``[start, end)`` of the head. Those rows are complete on their own rank, so DDP must neither broadcast
nor all-reduce them (:func:`ddp_ignore`), and ``last.pt`` (written by rank 0) cannot hold them: every
rank writes its rows and their SGD momentum to ``head-<step>-r<rank>of<world>.pt`` next to it. A resume
on another world size reads the shard files overlapping its new rows (:func:`load_rows`), which is
re-sharding N -> M without ever building the full head on one rank; :func:`reshard` does the same to
whole files offline.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.atomic import atomic_path
from distill.errors import InputError
from distill.losses.partial_fc import ShardedMarginSoftmax, shard_range

FORMAT = "facekd-head-shard/1"
_NAME = re.compile(r"head-(\d+)-r(\d+)of(\d+)\.pt")


def shard_heads(losses: nn.ModuleDict) -> dict[str, ShardedMarginSoftmax]:
    """Swap the full head of every ``sharded: true`` term for this rank's rows; name -> sharded head."""
    return {name: term.shard() for name, term in losses.items() if getattr(term, "sharded", False)}


def unshard_heads(losses: nn.ModuleDict) -> None:
    """Gather the full heads back (a collective: every rank calls it, in the same order)."""
    for term in losses.values():
        if getattr(term, "sharded", False):
            term.unshard()


def ddp_ignore(module: nn.Module, heads: dict[str, ShardedMarginSoftmax]) -> None:
    """Keep the shards out of DDP's initial broadcast and gradient all-reduce (each rank owns its rows)."""
    ids = {id(h.weight) for h in heads.values()}
    names = [n for n, p in module.named_parameters() if id(p) in ids]
    nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, names)


def head_keys(heads: dict[str, ShardedMarginSoftmax]) -> set[str]:
    """The ``losses.state_dict()`` keys of the shards (absent from ``last.pt``)."""
    return {f"{name}.head.weight" for name in heads}


def shard_file(folder: Path, step: int, rank: int, world: int) -> Path:
    return folder / f"head-{step:08d}-r{rank}of{world}.pt"


def save_shards(
    folder: Path, step: int, heads: dict[str, ShardedMarginSoftmax], optimizer: torch.optim.Optimizer
) -> None:
    """This rank's rows and SGD momentum of every sharded head, written atomically."""
    any_head = next(iter(heads.values()))
    terms: dict[str, Any] = {}
    for name, head in heads.items():
        momentum = optimizer.state.get(head.weight, {}).get("momentum_buffer")
        terms[name] = {
            "start": head.start,
            "end": head.end,
            "num_classes": head.num_classes,
            "weight": head.weight.detach().cpu(),
            "momentum": None if momentum is None else momentum.detach().cpu(),
        }
    state = {"format": FORMAT, "step": step, "rank": any_head.rank, "world": any_head.world, "terms": terms}
    with atomic_path(shard_file(folder, step, any_head.rank, any_head.world)) as tmp:
        torch.save(state, tmp)


def prune_shards(folder: Path, step: int, world: int) -> None:
    """Remove the shard files of older checkpoints (called once ``last.pt`` of ``step`` is published)."""
    for path in folder.glob("head-*.pt"):
        m = _NAME.fullmatch(path.name)
        if m and (int(m.group(1)), int(m.group(3))) != (step, world):
            path.unlink(missing_ok=True)


def _read(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InputError(f"{path}: head shard of the checkpoint is missing") from None
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user problem
        raise InputError(f"{path}: cannot read head shard ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise InputError(f"{path}: not a facekd head shard")
    return state


@dataclass
class Rows:
    """Rows ``[start, end)`` of one term's head, and their momentum (None before the first step)."""

    weight: torch.Tensor
    momentum: torch.Tensor | None


def load_rows(
    folder: Path, step: int, saved_world: int, name: str, num_classes: int, start: int, end: int
) -> Rows:
    """Rows ``[start, end)`` of term ``name`` from the ``saved_world`` shard files of ``step``.

    Reads only the files whose rows overlap, so a resume on M ranks from N never holds the full head.
    """
    weights, momenta = [], []
    for r in range(saved_world):
        saved_start, saved_end = shard_range(num_classes, r, saved_world)
        if max(start, saved_start) >= min(end, saved_end):
            continue  # shard_range is deterministic: a file that cannot overlap is not read
        path = shard_file(folder, step, r, saved_world)
        state = _read(path)
        term = state["terms"].get(name)
        if term is None:
            raise InputError(f"{path}: no head shard of loss term '{name}'")
        lo, hi = max(start, term["start"]), min(end, term["end"])
        if lo >= hi:
            continue
        weights.append(term["weight"][lo - term["start"] : hi - term["start"]])
        mom = term["momentum"]
        momenta.append(None if mom is None else mom[lo - term["start"] : hi - term["start"]])
    weight = torch.cat(weights)
    if weight.shape[0] != end - start:
        raise InputError(f"{folder}: the head shards of '{name}' do not cover classes [{start}, {end})")
    momentum = None if any(m is None for m in momenta) else torch.cat(momenta)  # type: ignore[arg-type]
    return Rows(weight, momentum)


def restore_shards(
    folder: Path,
    step: int,
    saved_world: int,
    heads: dict[str, ShardedMarginSoftmax],
    optimizer: torch.optim.Optimizer,
) -> None:
    """Load this rank's rows (re-sharded when ``saved_world`` differs) into the heads and the optimizer."""
    for name, head in heads.items():
        rows = load_rows(folder, step, saved_world, name, head.num_classes, head.start, head.end)
        with torch.no_grad():
            head.weight.copy_(rows.weight.to(head.weight))
        if rows.momentum is not None:
            optimizer.state[head.weight]["momentum_buffer"] = rows.momentum.to(head.weight).clone()


def strip_head_state(optimizer_state: dict[str, Any], head_group: int | None) -> dict[str, Any]:
    """``optimizer.state_dict()`` without the per-rank entries of the shards' param group."""
    if head_group is None:
        return optimizer_state
    ids = set(optimizer_state["param_groups"][head_group]["params"])
    return {**optimizer_state, "state": {k: v for k, v in optimizer_state["state"].items() if k not in ids}}


def reshard(folder: Path, step: int, world: int, new_world: int, out: Path | None = None) -> list[Path]:
    """Rewrite the ``world`` shard files of ``step`` as ``new_world`` files (in ``out``, default the same
    folder): the offline form of what the loader does on a resume at another world size."""
    out = out or folder
    first = _read(shard_file(folder, step, 0, world))
    written = []
    for rank in range(new_world):
        terms: dict[str, Any] = {}
        for name, term in first["terms"].items():
            n = int(term["num_classes"])
            start, end = shard_range(n, rank, new_world)
            rows = load_rows(folder, step, world, name, n, start, end)
            terms[name] = {
                "start": start,
                "end": end,
                "num_classes": n,
                "weight": rows.weight,
                "momentum": rows.momentum,
            }
        path = shard_file(out, step, rank, new_world)
        with atomic_path(path) as tmp:
            torch.save(
                {"format": FORMAT, "step": step, "rank": rank, "world": new_world, "terms": terms}, tmp
            )
        written.append(path)
    return written

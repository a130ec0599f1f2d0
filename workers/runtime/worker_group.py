"""Driver-side handle on the ranks of one role: fans calls out by dispatch mode, collects with a deadline.

Every wait is bounded: a rank that raises or dies surfaces as `WorkerError` naming role and rank
as soon as Ray notices, even while the other ranks are stuck in a collective with it.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import ray
import torch
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from workers.batch import Batch
from workers.runtime.balance import balanced_order, restore_rows
from workers.runtime.dispatch import Dispatch, MethodSpec, registered_methods
from workers.runtime.errors import WorkerError, WorkerTimeout
from workers.runtime.host import WorkerHost
from workers.runtime.resource_pool import ResourcePool

_POLL_S = 1.0  # how often a long wait wakes to notice dead ranks
_DEATH_GRACE_S = 5.0  # after a rank's error, how long to look for a peer whose death caused it
_NODE_SETTLE_S = 3.0  # after a death, how long to wait for Ray to say whether the whole node went


def _cause(err: Exception) -> str:
    if isinstance(err, RayActorError):
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return f"worker process died ({type(err).__name__}: {first})"
    if isinstance(err, RayTaskError):
        inner = getattr(err, "cause", None)
        return str(inner) if inner is not None else str(err)
    return f"{type(err).__name__}: {err}"


def gather(refs: list, ranks: list[int], role: str, method: str, timeout_s: float,
           nodes: list[dict] | None = None) -> dict[int, Any]:
    """Wait for per-rank results; raise on the first failure or when the deadline passes.

    `nodes` (per rank, from WorkerHost.node) lets an error name the machine as well as the rank.
    """
    pending = dict(zip(refs, ranks))
    results: dict[int, Any] = {}
    deadline = time.monotonic() + timeout_s
    while pending:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise WorkerTimeout(role, method, sorted(pending.values()), timeout_s)
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=min(remaining, _POLL_S))
        for ref in ready:
            rank = pending.pop(ref)
            try:
                results[rank] = ray.get(ref, timeout=max(1.0, remaining))
            except GetTimeoutError:
                raise WorkerTimeout(role, method, [rank], timeout_s) from None
            except RayActorError as e:
                raise _died(role, rank, method, e, nodes) from None
            except RayTaskError as e:
                raise (_dead_peer(pending, role, method, nodes)
                       or WorkerError(role, rank, method, _cause(e), node=_node(nodes, rank))) from None
    return results


def _node(nodes: list[dict] | None, rank: int) -> dict | None:
    return nodes[rank] if nodes is not None and rank < len(nodes) else None


def _died(role: str, rank: int, method: str, err: RayActorError, nodes: list[dict] | None) -> WorkerError:
    node = _node(nodes, rank)
    return WorkerError(role, rank, method, _cause(err), process_died=True, node=node,
                       node_lost=node is not None and not node_alive(node["node_id"]))


def node_alive(node_id: str, settle_s: float = _NODE_SETTLE_S) -> bool:
    """False once Ray has marked the node dead; a dying node is given `settle_s` to be noticed."""
    deadline = time.monotonic() + settle_s
    while True:
        state = {n["NodeID"]: n.get("Alive", False) for n in ray.nodes()}
        if not state.get(node_id, False):
            return False
        if time.monotonic() >= deadline:
            return True
        time.sleep(0.5)


def _dead_peer(pending: dict, role: str, method: str, nodes: list[dict] | None = None) -> WorkerError | None:
    """A rank that died mid-collective makes its peers fail too (a gloo/NCCL error): name the dead one.

    Looks briefly at the ranks still pending; the driver then restarts for a death instead of
    stopping for what looks like the survivor's own error.
    """
    if not pending:
        return None
    ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=_DEATH_GRACE_S)
    for ref in ready:
        try:
            ray.get(ref, timeout=1.0)
        except RayActorError as e:
            return _died(role, pending[ref], method, e, nodes)
        except Exception:  # noqa: BLE001 - any other outcome says nothing about a death
            continue
    return None


class PendingCall:
    """A call in flight. `result()` collects it; passing it as an argument to another group call chains it."""

    def __init__(self, refs: list, ranks: list[int], role: str, method: str,
                 collect: Callable[[list[Any]], Any], timeout_s: float, nodes: list[dict] | None = None):
        self._refs, self._ranks, self._collect, self._nodes = refs, ranks, collect, nodes
        self.role, self.method, self.timeout_s = role, method, timeout_s
        self._done, self._value = False, None

    def done(self) -> bool:
        """Every rank has finished (or failed): result() will not wait."""
        if self._done:
            return True
        ready, _ = ray.wait(list(self._refs), num_returns=len(self._refs), timeout=0)
        return len(ready) == len(self._refs)

    def result(self, timeout_s: float | None = None) -> Any:
        if not self._done:
            got = gather(self._refs, self._ranks, self.role, self.method, timeout_s or self.timeout_s, self._nodes)
            self._value = self._collect([got[r] for r in self._ranks])
            self._done = True
        return self._value


def _resolve(value: Any) -> Any:
    return value.result() if isinstance(value, PendingCall) else value


class WorkerGroup:
    """All ranks of one role. Each `@register`ed method of the role class becomes a method here."""

    def __init__(self, role: str, role_cls: type, hosts: list, timeout_s: float, nodes: list[dict] | None = None,
                 concurrency_groups: frozenset[str] = frozenset()):
        self.role, self.role_cls, self.hosts, self.timeout_s = role, role_cls, hosts, timeout_s
        self.nodes = nodes  # per rank: the Ray node id, its address and the host's pid
        self.concurrency_groups = concurrency_groups  # the hosts' Ray concurrency groups besides the default
        self._specs = registered_methods(role_cls)
        self._mesh: list[dict] | None = None
        for name, spec in self._specs.items():
            setattr(self, name, self._bind(name, spec))

    @property
    def world_size(self) -> int:
        return len(self.hosts)

    def _bind(self, name: str, spec: MethodSpec) -> Callable:
        def call(*args, **kwargs):
            pending = self.call_async(name, *args, **kwargs)
            return pending.result() if spec.blocking else pending

        call.__name__ = name
        call.__doc__ = getattr(self.role_cls, name).__doc__
        return call

    def call_async(self, method: str, *args, **kwargs) -> PendingCall:
        """Launch `method` on the ranks its dispatch mode selects; returns without waiting."""
        if method not in self._specs:
            raise AttributeError(f"{self.role_cls.__name__}.{method} is not a @register'ed worker method")
        args = tuple(_resolve(a) for a in args)
        kwargs = {k: _resolve(v) for k, v in kwargs.items()}
        mode = self._specs[method].dispatch
        if mode is Dispatch.ONE_TO_ALL:
            return self._launch(method, list(range(self.world_size)), [(args, kwargs)] * self.world_size, list)
        if mode is Dispatch.RANK_ZERO:
            return self._launch(method, [0], [(args, kwargs)], lambda results: results[0])
        if mode is Dispatch.DP:
            dp_of_rank = list(range(self.world_size))
            return self._launch_dp(method, args, kwargs, dp_of_rank, list(range(self.world_size)))
        if mode is Dispatch.DP_MESH:
            mesh = self.mesh()
            collect_ranks = sorted((r for r, m in enumerate(mesh) if m["collect"]), key=lambda r: mesh[r]["dp_rank"])
            return self._launch_dp(method, args, kwargs, [m["dp_rank"] for m in mesh], collect_ranks)
        raise ValueError(f"unknown dispatch mode {mode}")

    def mesh(self) -> list[dict]:
        """Each rank's (dp_rank, dp_size, collect), asked once."""
        if self._mesh is None:
            self._mesh = self.call_async("mesh_info").result()
        return self._mesh

    def _remote_call(self, rank: int, method: str):
        """The host's `call`, in the method's concurrency group when these hosts have it."""
        group = self._specs[method].concurrency_group
        call = self.hosts[rank].call
        return call.options(concurrency_group=group) if group in self.concurrency_groups else call

    def _launch(self, method: str, ranks: list[int], per_rank: list[tuple[tuple, dict]],
                collect: Callable[[list[Any]], Any]) -> PendingCall:
        refs = [self._remote_call(r, method).remote(self.role, method, a, kw) for r, (a, kw) in zip(ranks, per_rank)]
        return PendingCall(refs, ranks, self.role, method, collect, self.timeout_s, self.nodes)

    def _launch_dp(self, method: str, args: tuple, kwargs: dict, dp_of_rank: list[int],
                   collect_ranks: list[int]) -> PendingCall:
        dp_size = max(dp_of_rank) + 1
        batches = [a for a in (*args, *kwargs.values()) if isinstance(a, Batch)]
        if not batches:
            raise TypeError(f"{self.role}.{method}() is data-parallel but got no Batch argument")
        padded, pad = batches[0].pad_to_divisor(dp_size)
        # rows with an attention mask are spread by tokens (workers/runtime/balance.py), others in order
        # a prompt's rows (one uid) stay on one rank where they fit: its training forwards then share the prompt
        uids = list(padded.non_tensors["uid"]) if "uid" in padded.non_tensors else None
        order = (balanced_order(padded["attention_mask"].sum(dim=-1).tolist(), dp_size, uids)
                 if "attention_mask" in padded else list(range(len(padded))))
        order_t = torch.tensor(order)

        def split(value: Any) -> list[Any]:
            if not isinstance(value, Batch):
                return [value] * dp_size
            if len(value) != len(batches[0]):
                raise ValueError(f"{self.role}.{method}(): Batch arguments differ in length")
            return value.pad_to_divisor(dp_size)[0].index(order_t).chunk(dp_size)

        arg_chunks = [split(a) for a in args]
        kw_chunks = {k: split(v) for k, v in kwargs.items()}
        per_rank = [
            (tuple(c[dp] for c in arg_chunks), {k: c[dp] for k, c in kw_chunks.items()}) for dp in dp_of_rank
        ]
        all_ranks = list(range(self.world_size))
        refs = [self._remote_call(r, method).remote(self.role, method, a, kw) for r, (a, kw) in zip(all_ranks, per_rank)]

        # every rank runs (collectives need them all) and is waited for (a failure anywhere surfaces, and a
        # death is told apart from the errors it causes in its peers); only collect ranks' outputs are kept
        def collect(results: list[Any]) -> Any:
            kept = [results[r] for r in collect_ranks]
            if all(isinstance(r, Batch) for r in kept):
                return restore_rows(Batch.concat(kept), [len(r) for r in kept], order, pad,
                                    f"{self.role}.{method}()")
            return kept

        return PendingCall(refs, all_ranks, self.role, method, collect, self.timeout_s, self.nodes)

    def shutdown(self) -> None:
        for h in self.hosts:
            ray.kill(h, no_restart=True)


def spawn_colocated(pool: ResourcePool, roles: dict[str, tuple[type, dict]], *, timeout_s: float,
                    init_timeout_s: float, env: dict[str, str] | None = None,
                    concurrency_groups: tuple[str, ...] = ()) -> dict[str, WorkerGroup]:
    """One host actor per bundle of `pool`, each hosting every role in `roles` (constructed in order).

    concurrency_groups: extra Ray concurrency groups (one thread each) beside the default one, for methods
    registered with them (a rollout host receiving weights while it generates, trainer.mode=async).
    """
    pool.create()
    host_cls = (ray.remote(concurrency_groups={g: 1 for g in concurrency_groups})(WorkerHost) if concurrency_groups
                else ray.remote(WorkerHost))
    hosts = []
    for rank, (pg, bundle, local_rank) in enumerate(pool.slots()):
        hosts.append(host_cls.options(
            num_cpus=pool.cpus_per_worker,
            num_gpus=1 if pool.use_gpu else 0,
            scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=bundle),
        ).remote(rank, pool.world_size, local_rank, pool.use_gpu, dict(env or {})))
    label = "+".join(roles)
    ranks = list(range(len(hosts)))
    try:
        got = gather([h.node.remote() for h in hosts], ranks, label, "node", init_timeout_s)
        nodes = [got[r] for r in ranks]
        addr, port = gather([hosts[0].address.remote()], [0], label, "address", init_timeout_s, nodes)[0]
        gather([h.init_distributed.remote(addr, port, init_timeout_s) for h in hosts], ranks, label,
               "init_distributed", init_timeout_s, nodes)
        for role, (cls, kwargs) in roles.items():
            gather([h.add_role.remote(role, cls, kwargs) for h in hosts], ranks, role, "__init__", init_timeout_s,
                   nodes)
    except Exception:
        for h in hosts:
            ray.kill(h, no_restart=True)
        raise
    return {role: WorkerGroup(role, cls, hosts, timeout_s, nodes, frozenset(concurrency_groups))
            for role, (cls, _) in roles.items()}

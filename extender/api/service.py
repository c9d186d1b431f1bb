"""The extender's verbs over the ledger: Filter, Prioritize, Bind, Preempt, and the cluster feed.

Independent of aiohttp (see :mod:`extender.api.app` for the HTTP side) so it can be driven directly. All
ledger changes happen on the event loop's thread, and each verb's decision and its reservation are made
without an ``await`` in between, so concurrent binds can never both take the same capacity.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
import orjson

from ..core import (
    Assignment,
    CorruptAnnotation,
    InvalidRequest,
    LedgerConflict,
    Misfit,
    PodRequest,
    evaluate,
    from_annotation,
    make_policy,
    parse_pod,
    place,
    to_annotation,
)
from ..core.handoff import handoff_annotations
from ..core.limits import MAX_CANDIDATES, MAX_PARSED_PODS
from ..core.loading import LoadReport, load_node, load_pod
from ..core.ledger import Ledger
from ..core.evaluation import Evaluation
from ..core.policies import POLICIES, Policy
from ..core.workload import RecentShapes, pod_shape
from ..core.settings import ASSIGNMENT_ANNOTATION, MPS, POLICY_ANNOTATION
from .metrics import Metrics
from .settings import ExtenderSettings
from .source import BindError, ClusterSource, object_key
from .wire import (
    MAX_EXTENDER_PRIORITY,
    ExtenderArgs,
    ExtenderBindingArgs,
    ExtenderBindingResult,
    ExtenderFilterResult,
    ExtenderPreemptionArgs,
    ExtenderPreemptionResult,
    MetaPod,
    MetaVictims,
)

log = logging.getLogger("fracgpu.extender")
KEPT_EVALUATIONS = 8  # Filter answers kept for the Prioritize calls of the same cycles


class BadRequest(ValueError):
    """The request is malformed for the protocol (HTTP 400), as opposed to a pod that does not fit."""


@dataclass
class _Seen:
    digest: bytes | None  # of the pod body parsed: a request for the same UID with another body is parsed again
    request: PodRequest | None
    error: str | None
    at: float


class Extender:
    def __init__(self, settings: ExtenderSettings, source: ClusterSource, *, metrics: Metrics | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.core = settings.core()
        self.ledger = Ledger(self.core)
        self.source = source
        self.metrics = metrics or Metrics(self.ledger)
        self.clock = clock
        self.synced = False
        self.warnings: deque[str] = deque(maxlen=1000)  # the latest problems with nodes and pods
        self._policies: dict[str, Policy] = {}
        # the target workload of policies that plan for what is to come (FGD): the shapes of the pods seen last
        self._recent = RecentShapes(self.settings.fgd_window, units_per_gpu=self.core.units_per_gpu)
        self._seen: OrderedDict[str, _Seen] = OrderedDict()
        self._pods: dict[str, dict] = {}  # uid -> pod, for bind lookups and preemption priorities
        # Filter's recent evaluations by pod UID, for Prioritize of the same cycle; a few, so that cycles that
        # overlap (several scheduler profiles or replicas) still find theirs. Reused only for an equal request
        # (the pod not edited since) while the ledger is unchanged.
        self._recent_evaluations: OrderedDict[str, tuple[int, PodRequest, Evaluation]] = OrderedDict()

    # ------------------------------------------------------------------ cluster feed (ClusterSink)
    def on_node(self, node: Mapping) -> None:
        self._feed(load_node, node)

    def on_node_deleted(self, name: str) -> None:
        self.ledger.remove_node(name)

    def on_pod(self, pod: Mapping) -> None:
        uid = object_key(pod, "uid", "pods")
        if uid is None:
            return
        self._pods[uid] = pod
        self._feed(load_pod, pod)

    def _feed(self, loader: Callable, obj: Mapping) -> None:
        report = LoadReport()
        try:
            loader(self.ledger, obj, report)
        except Exception as exc:  # noqa: BLE001 - a fault in one object's data: skip it, never stop the feed
            report.warnings.append(f"an object was skipped: {type(exc).__name__}: {exc}")
        for warning in report.warnings:
            log.warning("%s", warning)
            self.warnings.append(warning)

    def on_pod_deleted(self, pod: Mapping) -> None:
        uid = (pod.get("metadata") or {}).get("uid") or ""
        self._pods.pop(uid, None)
        self._seen.pop(uid, None)
        self.ledger.release(uid)

    def on_synced(self) -> None:
        self.synced = True
        self.metrics.synced.set(1)
        for policy in [self._named_policy(self.settings.policy), *self._policies.values()]:
            policy.warm(self.ledger)  # what a policy keeps per node is worked out before the first Filter
        log.info("ledger synced: %d nodes, %d pods holding GPUs", len(self.ledger.node_names()),
                 sum(1 for _ in self.ledger.assignments()))

    # ------------------------------------------------------------------ verbs
    def filter(self, args: ExtenderArgs) -> ExtenderFilterResult:
        names, node_objects = self._candidates(args)
        request, error = self._remember(args.pod)
        if error is not None:
            self.metrics.rejected("invalid-request", len(names))
            unresolvable = {name: error for name in names}
            return self._filter_result([], node_objects, {}, unresolvable)
        if not request.wants_gpu:
            return self._filter_result(names, node_objects, {}, {})
        evaluation = evaluate(self.ledger, request, names, self._policy(request))
        self._keep_evaluation(request, evaluation)
        for label, count in evaluation.rejections.items():
            self.metrics.rejected(label, count)
        self.metrics.decisions.labels("filter", "fit").inc(len(evaluation.fits))
        self.metrics.decisions.labels("filter", "misfit").inc(len(evaluation.failed) + len(evaluation.unresolvable))
        return self._filter_result(evaluation.fits, node_objects, evaluation.failed, evaluation.unresolvable)

    async def filter_fresh(self, args: ExtenderArgs) -> ExtenderFilterResult:
        """Filter; but before answering that the pod fits nowhere for lack of room, catch up with the API
        server and look again (see :meth:`ClusterSource.catch_up`). Costs one API call, on that path only."""
        result = self.filter(args)
        if result.failed_nodes and not (result.node_names or (result.nodes or {}).get("items")):
            generation = self.ledger.generation
            try:
                caught_up = await self.source.catch_up()
            except Exception as exc:  # the API server away: answer from what we have
                log.warning("catching up before a rejection failed: %s", exc)
                caught_up = False
            if caught_up and self.ledger.generation != generation:
                self.metrics.decisions.labels("filter", "caught-up").inc()
                result = self.filter(args)
        return result

    def prioritize(self, args: ExtenderArgs) -> list[tuple[str, int]]:
        """(host, score 0..10) for every candidate, in order; 0 for nodes that do not fit."""
        names, _ = self._candidates(args)
        request, error = self._remember(args.pod)
        if error is not None or not request.wants_gpu:
            return [(n, 0) for n in names]
        evaluation, in_order = None, False
        generation, kept_request, kept = self._recent_evaluations.get(request.uid, (None, None, None))
        if kept is not None and kept_request == request and generation == self.ledger.generation:
            # this cycle's Filter answer; the scheduler's own filters may have dropped some of its nodes
            in_order = names == kept.fits
            if in_order or set(names) <= set(kept.fits):
                evaluation = kept
        if evaluation is None:
            evaluation = evaluate(self.ledger, request, names, self._policy(request))
            in_order = names == evaluation.fits
        if in_order:  # the usual case: the scores are already in the candidates' order
            scores = evaluation.scores
        else:
            by_name = dict(zip(evaluation.fits, evaluation.scores.tolist()))
            scores = np.array([by_name.get(n, 0.0) for n in names], dtype=np.float64)
        # rint rounds half to even, as round() does
        return list(zip(names, np.rint(np.clip(scores, 0, MAX_EXTENDER_PRIORITY)).astype(np.int64).tolist()))

    def _keep_evaluation(self, request: PodRequest, evaluation: Evaluation) -> None:
        uid = request.uid
        if not uid:
            return  # a pod without a UID is not remembered (see _remember): nothing to match Prioritize with
        recent = self._recent_evaluations
        recent[uid] = (self.ledger.generation, request, evaluation)
        recent.move_to_end(uid)
        while len(recent) > KEPT_EVALUATIONS:
            recent.popitem(last=False)

    async def bind(self, args: ExtenderBindingArgs) -> ExtenderBindingResult:
        uid, node = args.pod_uid, args.node
        who = f"pod {args.pod_namespace}/{args.pod_name}"
        held = self.ledger.assignment(uid)
        if held is not None:
            if held.node != node:
                return self._bind_failed(f"{who} already holds GPUs on node {held.node}, not {node}")
            if self.ledger.is_reserved(uid):
                return self._bind_failed(f"{who}: a bind to {node} is already in progress; retry")
            self.metrics.decisions.labels("bind", "already-bound").inc()
            return ExtenderBindingResult()  # idempotent: already bound there with its assignment
        request, error = await self._request_for_bind(args)
        if error is not None:
            return self._bind_failed(error)
        if not request.wants_gpu:
            return self._bind_failed(f"{who} asks for no {self.core.vgpu_resource}; nothing for fracgpu to bind")
        policy = self._policy(request)
        result = place(self.ledger, request, node, policy)
        if isinstance(result, Misfit):
            return self._bind_failed(f"{who} no longer fits node {node}: {result.explain()}")
        assignment = result.assignment(request, policy.name)
        try:
            self.ledger.reserve(assignment)  # no await since place(): nobody else took the capacity
        except LedgerConflict as exc:
            return self._bind_failed(str(exc))
        annotation = to_annotation(assignment, timestamp=_utc_now())
        try:
            await self.source.bind(namespace=args.pod_namespace, name=args.pod_name, uid=uid, node=node,
                                   annotations={ASSIGNMENT_ANNOTATION: annotation, **handoff_annotations(
                                       assignment, units_per_gpu=self.core.units_per_gpu,
                                       mps=request.sharing == MPS)})
        except BindError as exc:
            if exc.conflict and await self._bound_as_we_wanted(args, assignment):
                self._commit(uid)
                return ExtenderBindingResult()
            self.ledger.release(uid)
            return self._bind_failed(f"{who}: binding to {node} failed: {exc}")
        except Exception as exc:  # the API server away, a timeout: release what we held, report
            self.ledger.release(uid)
            log.exception("bind of %s to %s failed", who, node)
            return self._bind_failed(f"{who}: binding to {node} failed: {exc}")
        self._commit(uid)
        self.metrics.decisions.labels("bind", "bound").inc()
        log.info("bound %s to %s: %s", who, node, _shares(assignment))
        return ExtenderBindingResult()

    def preempt(self, args: ExtenderPreemptionArgs) -> ExtenderPreemptionResult:
        """Keep, per node, the proposed victims the pod really needs gone on the GPUs that would host it.

        Victims that hold no GPUs there were chosen by the scheduler for other resources: kept. Of those that
        hold GPUs, the smallest set is kept, reprieving the highest-priority pods first. A node where even
        every proposed victim gone leaves no room for the pod is dropped. A node is never answered with an
        empty list (kube-scheduler rejects that): if GPUs need nobody gone, the scheduler's list stands.
        """
        request, error = self._remember(args.pod)
        if error is not None:
            raise BadRequest(error)
        proposed = self._proposed_victims(args)
        policy = self._policy(request)
        answer: dict[str, MetaVictims] = {}
        notes = []
        for node, (uids, violations) in sorted(proposed.items()):
            on_gpus = [u for u in uids if (a := self.ledger.assignment(u)) is not None and a.node == node]
            others = set(uids).difference(on_gpus)
            with self.ledger.without(on_gpus):
                if not self._fits(request, node, policy):
                    self.metrics.decisions.labels("preempt", "node-dropped").inc()
                    notes.append(f"{node} dropped (no room even with its {len(uids)} proposed victims gone)")
                    continue
            needed = list(on_gpus)
            for uid in sorted(on_gpus, key=lambda u: (-self._priority(u), u)):
                trial = [u for u in needed if u != uid]
                with self.ledger.without(trial):
                    if self._fits(request, node, policy):
                        needed = trial
            kept = others.union(needed)
            keep = [u for u in uids if u in kept] or list(uids)
            answer[node] = MetaVictims(pods=[MetaPod(uid=u) for u in keep], num_pdb_violations=violations)
            self.metrics.decisions.labels("preempt", "node-kept").inc()
            notes.append(f"{node} victims [{', '.join(self._pod_name(u) for u in keep)}]"
                         f" of {len(uids)} proposed")
        log.info("preempt for %s/%s: %s", request.namespace, request.name, "; ".join(notes) or "no nodes")
        return ExtenderPreemptionResult(node_name_to_meta_victims=answer)

    def inspect(self, node: str | None = None) -> dict:
        names = [node] if node else self.ledger.node_names()
        return {
            "synced": self.synced,
            "policy": self.settings.policy,
            "unitsPerGpu": self.core.units_per_gpu,
            "nodes": {n: self.ledger.gpu_table(n) for n in names if self.ledger.row_of(n) is not None},
            "excludedNodes": self.ledger.problems(),
            "orphans": self.ledger.orphans(),
            "pods": len(list(self.ledger.assignments())),
        }

    # ------------------------------------------------------------------ helpers
    def _pod_name(self, uid: str) -> str:
        assignment = self.ledger.assignment(uid)
        return assignment.key if assignment is not None else f"uid:{uid}"

    def _candidates(self, args: ExtenderArgs) -> tuple[list[str], list[dict] | None]:
        if args.node_names is not None:
            return list(args.node_names), None
        if args.nodes is not None:
            items = args.nodes.get("items") if isinstance(args.nodes, dict) else None
            if not isinstance(items, list):
                raise BadRequest("Nodes must be a NodeList with items")
            if len(items) > MAX_CANDIDATES:
                raise BadRequest(f"Nodes.items names {len(items)} nodes; at most {MAX_CANDIDATES} may be")
            names = []
            for position, node in enumerate(items):
                where = f"Nodes.items[{position}]"
                metadata = node.get("metadata") if isinstance(node, dict) else None
                if not isinstance(metadata, dict):
                    raise BadRequest(f"{where}.metadata must be an object")
                name = metadata.get("name")
                if not isinstance(name, str) or not name:
                    raise BadRequest(f"{where}.metadata.name is missing")
                names.append(name)  # the inventory comes from the feed: a request body never writes the ledger
            return names, items
        raise BadRequest("the request names no candidate nodes (neither NodeNames nor Nodes)")

    def _filter_result(self, fits: list[str], node_objects: list[dict] | None, failed: dict[str, str],
                       unresolvable: dict[str, str]) -> ExtenderFilterResult:
        if node_objects is None:
            return ExtenderFilterResult(node_names=fits, failed_nodes=failed,
                                        failed_and_unresolvable_nodes=unresolvable)
        keep = set(fits)
        items = [n for n in node_objects if n["metadata"]["name"] in keep]
        return ExtenderFilterResult(nodes={"metadata": {}, "items": items}, failed_nodes=failed,
                                    failed_and_unresolvable_nodes=unresolvable)

    def _remember(self, pod: dict | None) -> tuple[PodRequest | None, str | None]:
        """Parse the cycle's pod (kept by UID for Bind, which carries only the pod's name and UID)."""
        if pod is None:
            raise BadRequest("Pod is missing")
        if not isinstance(pod, dict):
            raise BadRequest("Pod must be an object")
        metadata = pod.get("metadata") if isinstance(pod.get("metadata"), dict) else {}
        uid = metadata.get("uid")
        if uid is not None and not isinstance(uid, str):
            raise BadRequest(f"Pod.metadata.uid must be a string, got {type(uid).__name__}")
        seen = self._seen.get(uid) if uid else None
        # Prioritize gets the pod Filter just parsed, as a new dict: the same body is not parsed again. The
        # body's digest, not its UID and resourceVersion, decides: a client can send any UID and version.
        digest = _digest(pod)
        if seen is not None and digest is not None and digest == seen.digest:
            return seen.request, seen.error
        request, error = None, None
        try:
            request = parse_pod(pod, self.core)
            shape = pod_shape(request)
            if shape is not None and (seen is None or seen.request is None):
                # one observation per pod: FGD's target workload is the shapes of the GPU pods seen last
                self._recent.observe(shape)
            self._policy(request)
        except InvalidRequest as exc:
            error = f"fracgpu: {exc}"
        if uid:
            self._seen[uid] = _Seen(digest, request, error, self.clock())
            self._seen.move_to_end(uid)
            self._expire()
        return request, error

    def _expire(self) -> None:
        horizon = self.clock() - self.settings.pod_cache_seconds
        while self._seen and next(iter(self._seen.values())).at < horizon:
            self._seen.popitem(last=False)
        while len(self._seen) > MAX_PARSED_PODS:
            self._seen.popitem(last=False)

    async def _request_for_bind(self, args: ExtenderBindingArgs) -> tuple[PodRequest | None, str | None]:
        """What the pod asks for, as the cluster holds it: the feed's copy, else the source's (the API server's).
        Only a pod the cluster does not hold at all is bound as the scheduler's Filter described it (static mode,
        a dry run); in live mode such a Binding fails at the API server."""
        who = f"pod {args.pod_namespace}/{args.pod_name}"
        pod = self._pods.get(args.pod_uid) or await self.source.get_pod(args.pod_namespace, args.pod_name)
        if pod is None:
            seen = self._seen.get(args.pod_uid)
            if seen is None:
                return None, f"{who} ({args.pod_uid}) not found"
            return seen.request, seen.error
        if (pod.get("metadata") or {}).get("uid") != args.pod_uid:
            return None, f"{who}: UID {args.pod_uid} is not the pod's ({pod.get('metadata', {}).get('uid')})"
        return self._remember(pod)

    def _policy(self, request: PodRequest) -> Policy:
        name = request.policy or self.settings.policy
        if name not in POLICIES:
            raise InvalidRequest(f"metadata.annotations[{POLICY_ANNOTATION}]",
                                 f"unknown policy {name!r}; known: {', '.join(sorted(POLICIES))}", pod=request.key)
        return self._named_policy(name)

    def _named_policy(self, name: str) -> Policy:
        if name not in self._policies:
            self._policies[name] = policy = make_policy(name, seed=self.settings.seed, workload=self._recent)
            if self.synced:
                policy.warm(self.ledger)
        return self._policies[name]

    def _fits(self, request: PodRequest, node: str, policy: Policy) -> bool:
        return not isinstance(place(self.ledger, request, node, policy), Misfit)

    def _proposed_victims(self, args: ExtenderPreemptionArgs) -> dict[str, tuple[list[str], int]]:
        out: dict[str, tuple[list[str], int]] = {}
        if args.node_name_to_meta_victims is not None:
            for node, victims in args.node_name_to_meta_victims.items():
                if victims is not None:
                    out[node] = ([p.uid for p in victims.pods or []], victims.num_pdb_violations)
        elif args.node_name_to_victims is not None:
            for node, victims in args.node_name_to_victims.items():
                if victims is None:
                    continue
                uids = []
                for position, pod in enumerate(victims.pods or []):
                    metadata = pod.get("metadata")
                    uid = metadata.get("uid") if isinstance(metadata, dict) else None
                    if not isinstance(uid, str) or not uid:
                        raise BadRequest(f"NodeNameToVictims[{node}].Pods[{position}].metadata.uid must be a "
                                         f"non-empty string")
                    uids.append(uid)
                out[node] = (uids, victims.num_pdb_violations)
        return out

    def _priority(self, uid: str) -> int:
        priority = ((self._pods.get(uid) or {}).get("spec") or {}).get("priority")
        return priority if isinstance(priority, int) else 0

    async def _bound_as_we_wanted(self, args: ExtenderBindingArgs, assignment: Assignment) -> bool:
        """After a conflict: a retried bind whose first attempt did land is a success."""
        pod = await self.source.get_pod(args.pod_namespace, args.pod_name)
        if not pod or (pod.get("metadata") or {}).get("uid") != args.pod_uid:
            return False
        if (pod.get("spec") or {}).get("nodeName") != args.node:
            return False
        raw = ((pod.get("metadata") or {}).get("annotations") or {}).get(ASSIGNMENT_ANNOTATION)
        try:
            theirs = from_annotation(raw, pod_uid=args.pod_uid, namespace=args.pod_namespace, name=args.pod_name)
        except CorruptAnnotation:
            return False
        return theirs.containers == assignment.containers

    def _commit(self, uid: str) -> None:
        if self.ledger.is_reserved(uid):
            self.ledger.commit(uid)

    def _bind_failed(self, message: str) -> ExtenderBindingResult:
        self.metrics.decisions.labels("bind", "failed").inc()
        log.warning("%s", message)
        return ExtenderBindingResult(error=message)


def _digest(pod: dict) -> bytes | None:
    """A digest of a pod body (keys sorted); None for a body that is not plain JSON data."""
    try:
        return hashlib.blake2b(orjson.dumps(pod, option=orjson.OPT_SORT_KEYS), digest_size=16).digest()
    except TypeError:
        return None


def _utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _shares(assignment: Assignment) -> str:
    return "; ".join(f"{c.name}: " + ", ".join(f"GPU {s.index} {s.units}u/{s.memory_mib}MiB" for s in c.gpus)
                     for c in assignment.containers)

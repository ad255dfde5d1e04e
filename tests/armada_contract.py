"""An Armada server for tests: the real gRPC services (armada-client's protos), on a real port.

It enforces the contract observer relies on, as Armada's server does
(internal/server/submit/submit.go, validation/submit_request.go, queryapi/query_api.go):

* authorisation against the queue first: a missing queue is ``PERMISSION_DENIED`` with
  ``could not find queue "<q>"``; with a token set, a call without it is ``UNAUTHENTICATED``;
* request validation (``INVALID_ARGUMENT``): queue and job set id required, per job a
  namespace, a pod spec, every container's resources with requests equal to limits, a
  ``client_id`` of at most 100 characters, and the pod spec itself valid against the
  Kubernetes schema (``kubernetes-validate``, strict: unknown fields are refused);
* deduplication by ``client_id`` within a queue: a repeat is answered with the original job
  id and creates nothing;
* job states as the query API reports them (``GetJobStatus``: ``UNKNOWN`` for an id it does
  not know; ``GetJobStatusUsingExternalJobUri``), moved along Armada's lifecycle by the test
  (:meth:`ArmadaContract.advance`: QUEUED -> LEASED -> PENDING -> RUNNING -> SUCCEEDED/FAILED,
  anything -> CANCELLED/PREEMPTED before it ends).
"""

from __future__ import annotations

import threading
import uuid
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
import kubernetes_validate
from armada_client.armada import job_pb2, job_pb2_grpc, submit_pb2, submit_pb2_grpc
from google.protobuf import empty_pb2, json_format
from google.protobuf.descriptor import FieldDescriptor

KUBERNETES = "1.37"
S = submit_pb2.JobState
# Armada's lifecycle: which state may follow which.
NEXT: dict[int, set[int]] = {
    S.QUEUED: {S.LEASED, S.CANCELLED, S.REJECTED},
    S.LEASED: {S.PENDING, S.QUEUED, S.CANCELLED, S.PREEMPTED},
    S.PENDING: {S.RUNNING, S.FAILED, S.CANCELLED, S.PREEMPTED},
    S.RUNNING: {S.SUCCEEDED, S.FAILED, S.CANCELLED, S.PREEMPTED},
}


@dataclass
class Job:
    job_id: str
    queue: str
    job_set: str
    client_id: str
    external_job_uri: str
    item: submit_pb2.JobSubmitRequestItem
    state: int = S.QUEUED


def pod_json(spec: Any) -> dict[str, Any]:
    """A protobuf ``v1.PodSpec`` as Kubernetes JSON (a Quantity message is its string)."""
    def unwrap(v: Any) -> Any:
        if isinstance(v, dict):
            if set(v) == {"string"}:
                return v["string"]
            return {k: unwrap(x) for k, x in v.items()}
        if isinstance(v, list):
            return [unwrap(x) for x in v]
        return v
    return unwrap(_int64s(spec, json_format.MessageToDict(spec)))


_INT64 = {FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64,
          FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64}


def _int64s(msg: Any, out: dict[str, Any]) -> dict[str, Any]:
    """``out`` (``MessageToDict(msg)``) with 64-bit integers as numbers, as the Go server reads
    them (proto3's JSON mapping writes them as strings: runAsUser "10001")."""
    for field, value in msg.ListFields():
        key, repeated = field.json_name, field.is_repeated
        if field.type in _INT64:
            out[key] = [int(v) for v in value] if repeated else int(value)
        elif field.message_type is not None and field.message_type.GetOptions().map_entry:
            if field.message_type.fields_by_name["value"].message_type is not None:
                for k, v in value.items():
                    _int64s(v, out[key][str(k)])
        elif field.message_type is not None:
            if repeated:
                for v, o in zip(value, out[key], strict=True):
                    _int64s(v, o)
            else:
                _int64s(value, out[key])
    return out


def item_problem(item: submit_pb2.JobSubmitRequestItem) -> str | None:
    """Armada's per-job validation, then the Kubernetes schema of the pod."""
    if not item.namespace:
        return "namespace is a required field"
    if not item.HasField("pod_spec") and not item.pod_specs:
        return "Job must contain at least one PodSpec"
    if len(item.client_id) > 100:
        return f"client id of length {len(item.client_id)} is greater than max allowed length of 100"
    spec = pod_json(item.pod_spec)
    for c in spec.get("containers", []):
        res = c.get("resources", {})
        if not res.get("requests") and not res.get("limits"):
            return f"container {c.get('name')} has no resources specified"
        if res.get("requests") != res.get("limits"):
            return f"container {c.get('name')} defines different resources for requests and limits"
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "armada-job"}, "spec": spec}
    try:
        kubernetes_validate.validate(pod, KUBERNETES, strict=True)
    except kubernetes_validate.ValidationError as e:
        return f"pod spec: {e.message[:300]}"
    return None


class ArmadaContract(
    submit_pb2_grpc.SubmitServicer, submit_pb2_grpc.QueueServiceServicer, job_pb2_grpc.JobsServicer
):
    """The Submit, QueueService and Jobs services, in memory; start with :meth:`start`."""

    def __init__(self, token: str = "") -> None:
        self.token = token
        self.lock = threading.Lock()
        self.queues: dict[str, submit_pb2.Queue] = {}
        self.jobs: dict[str, Job] = {}
        self.dedup: dict[tuple[str, str], str] = {}
        self.requests: list[submit_pb2.JobSubmitRequest] = []
        self.faults: list[tuple[str, grpc.StatusCode]] = []
        self.server: grpc.Server | None = None
        self.port = 0

    # -- lifecycle ------------------------------------------------------------------------

    def start(self, tls: tuple[bytes, bytes] | None = None) -> ArmadaContract:
        """Serve on a free port; ``tls``: (certificate PEM, key PEM) to serve TLS only."""
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        submit_pb2_grpc.add_SubmitServicer_to_server(self, self.server)
        submit_pb2_grpc.add_QueueServiceServicer_to_server(self, self.server)
        job_pb2_grpc.add_JobsServicer_to_server(self, self.server)
        if tls is None:
            self.port = self.server.add_insecure_port("127.0.0.1:0")
        else:
            cert, key = tls
            credentials = grpc.ssl_server_credentials([(key, cert)])
            self.port = self.server.add_secure_port("127.0.0.1:0", credentials)
        self.server.start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(grace=None)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    # -- test controls --------------------------------------------------------------------

    def fail_next(self, code: grpc.StatusCode, method: str = "") -> None:
        """Answer the next call (of ``method``, when named) with ``code`` (a bad moment)."""
        self.faults.append((method, code))

    def advance(self, job_id: str, *states: int) -> None:
        """Move a job along Armada's lifecycle; an impossible transition is a test error."""
        with self.lock:
            job = self.jobs[job_id]
            for state in states:
                if state not in NEXT.get(job.state, set()):
                    raise AssertionError(
                        f"armada job {job_id}: {S.Name(job.state)} -> {S.Name(state)} is not a "
                        "transition Armada makes"
                    )
                job.state = state

    def job_set(self, queue: str, job_set: str) -> list[Job]:
        with self.lock:
            return [j for j in self.jobs.values() if j.queue == queue and j.job_set == job_set]

    # -- the services ---------------------------------------------------------------------

    def _enter(self, context: grpc.ServicerContext, method: str) -> None:
        if self.faults and self.faults[0][0] in ("", method):
            _, code = self.faults.pop(0)
            context.abort(code, f"injected {code.name}")
        if self.token:
            sent = dict(context.invocation_metadata()).get("authorization", "")
            if sent != f"Bearer {self.token}":
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "request could not be authenticated")

    def CreateQueue(self, request: submit_pb2.Queue, context: grpc.ServicerContext) -> Any:
        self._enter(context, "CreateQueue")
        with self.lock:
            if request.name in self.queues:
                context.abort(grpc.StatusCode.ALREADY_EXISTS, f"queue {request.name!r} already exists")
            self.queues[request.name] = request
        return empty_pb2.Empty()

    def GetQueue(self, request: submit_pb2.QueueGetRequest, context: grpc.ServicerContext) -> Any:
        self._enter(context, "GetQueue")
        with self.lock:
            if request.name not in self.queues:
                context.abort(grpc.StatusCode.NOT_FOUND, f"could not find queue {request.name!r}")
            return self.queues[request.name]

    def SubmitJobs(
        self, request: submit_pb2.JobSubmitRequest, context: grpc.ServicerContext
    ) -> submit_pb2.JobSubmitResponse:
        self._enter(context, "SubmitJobs")
        with self.lock:
            self.requests.append(request)
            if request.queue not in self.queues:
                context.abort(
                    grpc.StatusCode.PERMISSION_DENIED, f'could not find queue "{request.queue}"'
                )
            if not request.job_set_id:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "job set id is a required field")
            for item in request.job_request_items:
                problem = item_problem(item)
                if problem:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
            answers = []
            for item in request.job_request_items:
                original = self.dedup.get((request.queue, item.client_id)) if item.client_id else None
                if original is not None:
                    answers.append(submit_pb2.JobSubmitResponseItem(job_id=original))
                    continue
                job_id = uuid.uuid4().hex[:26]
                self.jobs[job_id] = Job(job_id, request.queue, request.job_set_id, item.client_id,
                                        item.external_job_uri, item)
                if item.client_id:
                    self.dedup[(request.queue, item.client_id)] = job_id
                answers.append(submit_pb2.JobSubmitResponseItem(job_id=job_id))
            return submit_pb2.JobSubmitResponse(job_response_items=answers)

    def GetJobStatus(
        self, request: job_pb2.JobStatusRequest, context: grpc.ServicerContext
    ) -> job_pb2.JobStatusResponse:
        self._enter(context, "GetJobStatus")
        with self.lock:
            states = {i: self.jobs[i].state if i in self.jobs else S.UNKNOWN for i in request.job_ids}
        return job_pb2.JobStatusResponse(job_states=states)

    def GetJobStatusUsingExternalJobUri(
        self, request: job_pb2.JobStatusUsingExternalJobUriRequest, context: grpc.ServicerContext
    ) -> job_pb2.JobStatusResponse:
        self._enter(context, "GetJobStatusUsingExternalJobUri")
        if not request.external_job_uri:
            context.abort(grpc.StatusCode.UNKNOWN, "request must contain external job uri")
        with self.lock:
            states = {
                j.job_id: j.state for j in self.jobs.values()
                if (j.queue, j.job_set, j.external_job_uri)
                == (request.queue, request.jobset, request.external_job_uri)
            }
        return job_pb2.JobStatusResponse(job_states=states)

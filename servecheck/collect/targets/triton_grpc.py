"""``triton+grpc://HOST:PORT/MODEL``: the same TensorRT-LLM target over gRPC (tritonclient).

A decoupled model is read through a bidirectional stream (``stream_infer``), any other model
through ``infer``. The end of a stream is explicit rather than guessed from a timeout: the final
flag where the server sends it, else the stream's OK status (a stream cut before it ends in an
error status, and one with no response at all is an error in ``TritonBase``). What comes back is
counted against ``max_body_mb``, a stream's responses together. Tensors go in the types the
model's config declares. ``UNAVAILABLE`` (server down or restarting) is transient and retried by
the collector; every other status is final.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from servecheck.collect.targets.triton import TritonBase
from servecheck.collect.targets.trtllm import Interface, short_error
from servecheck.errors import TargetError

TRANSIENT = ("StatusCode.UNAVAILABLE", "StatusCode.RESOURCE_EXHAUSTED")


def _error(where: str, e: Exception) -> TargetError:
    status = str(getattr(e, "status", lambda: "")() or "")
    message = getattr(e, "message", lambda: str(e))() or str(e)
    return TargetError(f"{where}: {status or type(e).__name__}: {short_error(message)}",
                       transient=status in TRANSIENT, gone=status == "StatusCode.UNAVAILABLE")


class TritonGrpcTarget(TritonBase):
    _client: Any = None

    def client(self) -> Any:
        if self._client is None:
            import tritonclient.grpc.aio as grpcclient

            self._client = grpcclient.InferenceServerClient(f"{self.host}:{self.port}")
        return self._client

    @property
    def where(self) -> str:
        return f"grpc://{self.host}:{self.port}/{self.model}"

    async def model_config(self) -> dict[str, Any]:
        try:
            reply = await self.client().get_model_config(self.model, as_json=True,
                                                         client_timeout=30.0)
        except Exception as e:
            raise _error(self.where, e) from None
        return reply.get("config", reply)

    def _inputs(self, interface: Interface, sent: dict[str, Any]) -> list:
        import tritonclient.grpc.aio as grpcclient

        inputs = []
        for name, value in sent.items():
            arr = interface.array(name, value)
            kind = interface.inputs[name]
            wire = "BYTES" if kind in ("BYTES", "STRING") else kind  # a config's STRING is BYTES
            tensor = grpcclient.InferInput(name, list(arr.shape), wire)
            tensor.set_data_from_numpy(arr)
            inputs.append(tensor)
        return inputs

    async def responses(self, interface: Interface, sent: dict[str, Any], stream: bool
                        ) -> AsyncIterator[dict[str, Any]]:
        inputs = self._inputs(interface, sent)
        try:
            if not stream:
                result = await self.client().infer(self.model, inputs,
                                                   client_timeout=self.read_timeout)
                outputs = _outputs(result)
                self._count(sum(_nbytes(v) for v in outputs.values()))
                yield outputs
                return
            request = {"model_name": self.model, "inputs": inputs,
                       "enable_empty_final_response": True}  # the end of a stream is explicit

            async def one_request():
                yield request

            size = 0
            async for result, error in self.client().stream_infer(
                    one_request(), stream_timeout=self.read_timeout):
                if error is not None:
                    raise _error(self.where, error)
                outputs = _outputs(result)
                size += sum(_nbytes(v) for v in outputs.values())
                self._count(size)
                if outputs:
                    yield outputs
                params = result.get_response().parameters
                if "triton_final_response" in params and params["triton_final_response"].bool_param:
                    return
            # the stream closed with status OK: Triton sends it only once every response of the
            # request is out (a cut stream ends in an error status, raised above). The final
            # flag itself may never come: tritonclient's aio stream_infer drops the opt-in key.
        except TargetError:
            raise
        except Exception as e:
            raise _error(self.where, e) from None

    def _count(self, size: int) -> None:
        if size > self.max_body:
            raise TargetError(f"{self.where}: answer body over {self.max_body / (1 << 20):g} MiB "
                              f"(raise with ?max_body_mb=N on the target)")

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


def _nbytes(value: Any) -> int:
    """An output's size: its array's, or its strings' for a ``BYTES`` one."""
    if getattr(value, "dtype", None) is not None and value.dtype == object:
        return sum(len(v) if isinstance(v, bytes | str) else 8 for v in value.reshape(-1))
    return int(getattr(value, "nbytes", 0))


def _outputs(result: Any) -> dict[str, Any]:
    response = result.get_response()
    return {o.name: result.as_numpy(o.name) for o in response.outputs}

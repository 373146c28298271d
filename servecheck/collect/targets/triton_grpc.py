"""``triton+grpc://HOST:PORT/MODEL``: the same TensorRT-LLM target over gRPC (tritonclient).

A decoupled model is read through a bidirectional stream (``stream_infer``) with an empty final
response, so the end of a request is explicit rather than guessed from a timeout; any other model
through ``infer``. Tensors go in the types the model's config declares. ``UNAVAILABLE`` (server
down or restarting) is transient and retried by the collector; every other status is final.
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
                yield _outputs(result)
                return
            request = {"model_name": self.model, "inputs": inputs,
                       "enable_empty_final_response": True}  # the end of a stream is explicit

            async def one_request():
                yield request

            async for result, error in self.client().stream_infer(
                    one_request(), stream_timeout=self.read_timeout):
                if error is not None:
                    raise _error(self.where, error)
                outputs = _outputs(result)
                if outputs:
                    yield outputs
                params = result.get_response().parameters
                if "triton_final_response" in params and params["triton_final_response"].bool_param:
                    return
        except TargetError:
            raise
        except Exception as e:
            raise _error(self.where, e) from None

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


def _outputs(result: Any) -> dict[str, Any]:
    response = result.get_response()
    return {o.name: result.as_numpy(o.name) for o in response.outputs}

"""Interceptors that see each call's messages, for unary and streaming methods alike.

`grpc.ServerInterceptor` only sees the method name and metadata; authorisation by device id,
size limits, request ids and decision metrics need the request and response messages and
the `ServicerContext`. `CallInterceptor` wraps the method handler so that a `CallWatch`
made per call gets every request message (streamed frames included), every response
message, and the end of the call, all in the worker thread that serves it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc

Behaviour = Callable[[Any, grpc.ServicerContext], Any]


class Denied(Exception):
    """Raised by `CallWatch.deny`; the wrapper turns it into the call's status."""

    def __init__(self, status: grpc.Status) -> None:
        super().__init__(status.details)
        self.status = status


class CallWatch:
    """One call's hooks; the default does nothing. `watch` may abort the call outright; a
    `request` hook refuses a message with `deny`.

    A refused streamed message is never delivered: the servicer sees the stream end there
    (it may read it on a thread of its own, where an exception would be lost), and whatever
    it answers then, the call ends with the refusal's status.
    """

    denied: grpc.Status | None = None

    def request(self, message: Any, context: grpc.ServicerContext) -> None:
        """Called with each request message before the servicer sees it."""

    def response(self, message: Any, context: grpc.ServicerContext) -> None:
        """Called with each response message before it is sent."""

    def finish(self, context: grpc.ServicerContext, failed: bool) -> None:
        """Called once when the call ends; `failed` when it did not end normally."""

    def deny(self, status: grpc.Status) -> None:
        self.denied = status
        raise Denied(status)


class CallInterceptor(grpc.ServerInterceptor):
    """Base of interceptors that watch whole calls; subclasses implement `watch`."""

    def watch(self, method: str, context: grpc.ServicerContext) -> CallWatch:
        """Start watching a call (may abort it); runs in the thread serving the call."""
        raise NotImplementedError

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        return wrap_handler(handler, handler_call_details.method, self.watcher(handler))

    def watcher(
        self, handler: grpc.RpcMethodHandler
    ) -> Callable[[str, grpc.ServicerContext], CallWatch]:
        """What starts watching a call of `handler` (default: `watch`); a subclass whose
        watching depends on the handler's kind, streaming or not, overrides this."""
        return self.watch


def wrap_handler(
    handler: grpc.RpcMethodHandler,
    method: str,
    watch: Callable[[str, grpc.ServicerContext], CallWatch],
) -> grpc.RpcMethodHandler:
    """The same handler with `watch`'s hooks around every message and the call's end."""
    streaming_in, streaming_out = handler.request_streaming, handler.response_streaming
    inner: Behaviour = (
        handler.stream_stream
        if streaming_in and streaming_out
        else handler.stream_unary
        if streaming_in
        else handler.unary_stream
        if streaming_out
        else handler.unary_unary
    )

    def requests(call: CallWatch, incoming: Any, context: grpc.ServicerContext) -> Any:
        if not streaming_in:
            try:
                call.request(incoming, context)
            except Denied as denied:
                context.abort_with_status(denied.status)
            return incoming
        return _each(incoming, lambda message: call.request(message, context))

    # No exception is kept in a local: that would tie the frame into a reference cycle and
    # delay closing the servicer's generator (and its cleanup) until the cyclic collector runs.
    def unary_out(incoming: Any, context: grpc.ServicerContext) -> Any:
        call = watch(method, context)
        failed = True
        try:
            response = inner(requests(call, incoming, context), context)
            _reassert(call, context)
            call.response(response, context)
            failed = False
            return response
        except BaseException:
            _reassert(call, context)
            raise
        finally:
            call.finish(context, failed)

    def stream_out(incoming: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        call = watch(method, context)
        failed = True
        try:
            for response in inner(requests(call, incoming, context), context):
                _reassert(call, context)
                call.response(response, context)
                yield response
            _reassert(call, context)
            failed = False
        except BaseException:
            _reassert(call, context)
            raise
        finally:
            call.finish(context, failed)

    behaviour = stream_out if streaming_out else unary_out
    factory = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[(streaming_in, streaming_out)]
    return factory(
        behaviour,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def _each(messages: Iterator[Any], check: Callable[[Any], None]) -> Iterator[Any]:
    for message in messages:
        try:
            check(message)
        except Denied:
            return  # the stream ends here for the servicer; `_reassert` sets the status
        yield message


def _reassert(call: CallWatch, context: grpc.ServicerContext) -> None:
    """A refusal inside a streamed request wins over whatever the servicer made of it."""
    if call.denied is not None:
        context.abort_with_status(call.denied)

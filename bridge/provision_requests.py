"""Repository requests from the bus → parameters of the `provision` flow, authorized on the way.

The token is verified here (service/messages.py does the work), so only the established
identity reaches Prefect; a refused request gets its reply and goes to the dead-letter queue.
"""

from __future__ import annotations

from collections.abc import Callable

from bridge.coalescer import InboundMessage
from bridge.errors import RejectedMessage
from bridge.run_requests import Parameters
from service.auth import TokenVerifier
from service.messages import (
    AmqpProperties,
    ProvisionReply,
    ProvisionRequest,
    Refusal,
    RequestParser,
)


class ProvisionRequestParameters:
    """A `RequestParameters` for BridgeConsumer: `{"request": AuthorizedProvisionRequest}`.

    `IssuerUnavailable` from the verifier propagates: the consumer retries the message later,
    since the issuer being down is not the request's fault.
    """

    def __init__(
        self,
        parser: RequestParser,
        verifier: TokenVerifier,
        reply: Callable[[ProvisionReply], None],
    ) -> None:
        self.parser = parser
        self.verifier = verifier
        self.reply = reply

    def __call__(self, message: InboundMessage) -> Parameters:
        properties = AmqpProperties(
            user_id=message.user_id,
            app_id=message.app_id,
            message_id=message.message_id,
            correlation_id=message.correlation_id,
            content_type=message.content_type,
        )
        parsed = self.parser.parse(message.body, properties)
        if isinstance(parsed, ProvisionRequest):
            parsed = self.parser.authorize(parsed, self.verifier)
        if isinstance(parsed, Refusal):
            # Reply first: if that fails the message is retried, not silently dead-lettered.
            self.reply(parsed.reply())
            raise RejectedMessage(f"repository request refused ({parsed.code}): {parsed.reason}")
        return {"request": parsed.model_dump(mode="json")}

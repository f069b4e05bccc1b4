"""The bridge's exception hierarchy: every error says whether retrying can help.

Permanent errors send a message to the dead-letter queue with their text as the reason;
transient ones send it back for a bounded number of delayed retries.
"""

from __future__ import annotations


class BridgeError(Exception):
    """Base of every error raised by the bridge package."""


class RejectedMessage(BridgeError):
    """A message that can never be processed (malformed, forged, not ours): dead-letter it.

    `kind` is a short, fixed word for the reason (`invalid`, `unsafe_key`, `unknown_bucket`,
    `owner_mismatch`): the dead-letter metric's label and header, where the free text of
    `reason` would make a new series per message.
    """

    def __init__(self, reason: str, kind: str = "invalid") -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind


class PermanentStartError(BridgeError):
    """The flow run was refused for good (unknown deployment, invalid parameters)."""


class TransientStartError(BridgeError):
    """The flow run could not be created right now (API unreachable, 5xx): retry later."""


class BrokerUnavailable(BridgeError):
    """RabbitMQ did not confirm a published message: the sender should retry later."""

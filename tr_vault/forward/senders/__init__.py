"""The destination kinds, by the `kind` name the forwarding file uses.

The delivery workers look a destination's sender up here; each kind lives in its own module.
"""

from __future__ import annotations

from tr_vault.forward.base import Sender
from tr_vault.forward.senders.broadcastify import BroadcastifySender
from tr_vault.forward.senders.openmhz import OpenMHzSender
from tr_vault.forward.senders.rdio import RdioScannerSender
from tr_vault.forward.senders.webhook import WebhookSender

SENDERS: dict[str, Sender] = {
    RdioScannerSender.kind: RdioScannerSender(),
    OpenMHzSender.kind: OpenMHzSender(),
    BroadcastifySender.kind: BroadcastifySender(),
    WebhookSender.kind: WebhookSender(),
}

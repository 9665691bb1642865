"""Webhooks: DTMS's events POSTed to HTTP endpoints from a durable queue in the store.

``[[webhooks]]`` in the config names each endpoint (``url``, ``events``, ``secret``...;
:class:`dtms.config.WebhookSettings`). The parts:

* :mod:`dtms.webhooks.payload` -- which events an endpoint takes, the body in its format
  (the ``{event, delivery, at, data}`` envelope, or Slack/Discord/Telegram's), the headers and
  the HMAC signature (pure);
* :mod:`dtms.webhooks.queue` -- the store's side: every matching event becomes a row of
  ``webhook_deliveries`` in the commit of what caused it, up to ``store.webhooks_max_queued``
  rows (beyond: dropped, counted, logged);
* :mod:`dtms.webhooks.delivery` -- the actor that POSTs them: in order per trade, retried with
  backoff (30 s at most between tries), at least once, resumed after a restart.

Example (what the service does)::

    queue = WebhookQueue(settings.webhooks, settings.store.webhooks_max_queued, metrics)
    store = StoreActor(settings.store, metrics, events=bus, webhooks=queue)
    delivery = WebhookDelivery(settings.webhooks, store=store, queue=queue, metrics=metrics)
    bus.tap(delivery.tap)
"""

from dtms.webhooks.delivery import WebhookDelivery
from dtms.webhooks.queue import WebhookQueue

__all__ = ["WebhookDelivery", "WebhookQueue"]

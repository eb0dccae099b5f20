"""Observe (RFC 7641) through the gateway, by polling: the pure decisions.

A client that observes ``coap://peer/s/<service>/<path>`` (GET with
Observe=0) gets the answer at once, then a notification whenever the answer
changes. The gateway finds out by asking again, every `ObserveConfig.period`
seconds, exactly as for a plain GET (route, visibility, fail-over); the
trio loop is `nanomesh.gateway.core.Gateway.watch`.

Why polling and not observe end to end: a nanoservice answers a request
with one response over ZeroMQ, HTTP or CoAP alike (`nanomesh.sdk.service`),
and has no way to say "this changed"; polling works for every service and
protocol unchanged, and costs the upstream one request per observer and
period. Its limits, by design:

- a change is seen up to one period late, and a change undone within one
  period is not seen at all (RFC 7641 only promises the latest state);
- observers are bounded (`ObserveConfig.max_observers` per gateway); past
  the bound a GET with Observe=0 is answered as a plain GET (no Observe
  option: RFC 7641 §4.1 lets a server decline);
- an observation lasts at most `ObserveConfig.lifetime`; it then ends with a
  final response without Observe, and a client that still cares registers
  again;
- representations above one block (`ObserveConfig.max_payload`) are not
  observed (block-wise notifications are not implemented): the first answer
  is then a plain one, and a notification that grows past the limit ends the
  observation with 5.01.

Every notification carries Max-Age `ObserveConfig.max_age`; an unchanged
answer is sent again before that runs out, so the client's copy stays fresh
and a client that has gone away is noticed (notifications are confirmable;
the CoAP layer ends the observation when one is not acknowledged).
Deregistration is the CoAP layer's: an RST to a notification, or a GET with
Observe=1 (or any new request) on the same token, ends it.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass

from nanomesh.gateway.forward import NOT_IMPLEMENTED, GatewayResponse, error_response


@dataclass(frozen=True)
class ObserveConfig:
    """Bounds of observation through one gateway."""

    period: float = 5.0
    """Seconds between two polls of an observed resource: how late a change
    may be noticed. With `max_observers` it bounds the load on services:
    64 / 5 s is at most 13 requests a second."""
    max_age: int = 60
    """Max-Age, in seconds, of every notification (RFC 7641 §4.3.1): an
    unchanged answer is re-sent after ``max_age - period`` seconds, which
    also checks that the client is still there."""
    lifetime: float = 600.0
    """Seconds after which an observation ends (the client may register
    again): no forgotten observer polls a service forever."""
    max_observers: int = 64
    """Observations one gateway keeps at once; more are answered as plain GETs."""
    max_payload: int = 1024
    """Largest representation observed: one CoAP block (see the module docstring)."""

    def __post_init__(self) -> None:
        if not 0 < self.period < self.max_age <= self.lifetime:
            raise ValueError("observe: need 0 < period < max_age <= lifetime")
        if self.max_observers < 0 or self.max_payload < 1:
            raise ValueError("observe: max_observers must be >= 0, max_payload positive")


DEFAULT_OBSERVE = ObserveConfig()


def refusal(first: GatewayResponse, observers: int, config: ObserveConfig) -> str | None:
    """Why a GET with Observe=0 whose answer is `first` is answered without
    starting an observation (`observers` already running), or None."""
    if first.code >> 5 != 2:
        return "an error ends an observation (RFC 7641 §4.2)"
    if len(first.payload) > config.max_payload:
        return f"representation over {config.max_payload} bytes"
    if observers >= config.max_observers:
        return f"{config.max_observers} observers already"
    return None


class Step(enum.Enum):
    SKIP = "skip"
    """Nothing to send."""
    NOTIFY = "notify"
    """Send a notification; the observation goes on."""
    END = "end"
    """Send a final response (no Observe option); the observation is over."""


@dataclass
class Observation:
    """One observation's state: what the client last got, and when."""

    config: ObserveConfig
    started: float
    sent: GatewayResponse
    sent_at: float

    @classmethod
    def begin(cls, config: ObserveConfig, first: GatewayResponse, now: float
              ) -> tuple[Observation, GatewayResponse]:
        """The observation and the first response to send (with Max-Age)."""
        out = dataclasses.replace(first, max_age=config.max_age)
        return cls(config, now, out, now), out

    def step(self, now: float, answer: GatewayResponse) -> tuple[Step, GatewayResponse]:
        """What to send after a poll that got `answer` at `now`."""
        cfg = self.config
        if answer.code >> 5 != 2:
            return Step.END, answer
        if len(answer.payload) > cfg.max_payload:
            return Step.END, error_response(
                NOT_IMPLEMENTED, f"the representation grew over {cfg.max_payload} bytes: "
                "observe ended (block-wise notifications are not implemented); GET it instead")
        out = dataclasses.replace(answer, max_age=cfg.max_age)
        if now - self.started >= cfg.lifetime:
            return Step.END, out
        changed = (answer.code, answer.payload, answer.content_format) != \
            (self.sent.code, self.sent.payload, self.sent.content_format)
        if not changed and now - self.sent_at < cfg.max_age - cfg.period:
            return Step.SKIP, self.sent
        self.sent, self.sent_at = out, now
        return Step.NOTIFY, out

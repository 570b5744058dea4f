"""Whether a peer's route takes frames, learnt from its answers, and each exchange sent so.

Shared by the Raft senders (``POST {url_prefix}/raft``, :mod:`.http`) and the proposals a
follower forwards (``POST {url_prefix}/propose``, :mod:`.proposals`). A route starts
``unknown``: one request per exchange. An answer with ``X-Catga-Frames: 1`` makes it
``offered``, and the next exchange opens a framed ``POST`` (:mod:`.frames`); once an exchange
went through it is ``working``. A peer that answers the opening with 415 no longer takes them
(``unknown`` again); anything else in between — another status, or, while they never worked,
an opening not answered in time — turns them ``off`` for ``FRAMES_RETRY`` seconds, with a
warning, so a proxy that cannot stream both ways is not tried again at every exchange. Once
they worked, an unanswered opening sets them back to ``unknown`` (a peer downgraded to a
version without them). The state is the route's, shared by the threads; each connection
that has frames open keeps them until it closes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from .frames import HEADER_FRAMES
from .http11 import FramesRefused, FramesUnanswered, PeerConnection

__all__ = ["FRAMES_RETRY", "FramedRoute"]

logger = logging.getLogger(__name__)

FRAMES_RETRY = 600.0
"""Seconds a peer whose opening of frames was never answered gets one request per exchange."""


class FramedRoute:
    """The route ``path`` of ``peer``: sends each exchange on a given connection as a frame
    when the peer takes them, else as a request of its own. ``opening_headers`` signs the
    opening of a framed ``POST``; with ``enabled`` False, offers are never taken."""

    def __init__(
        self,
        peer: str,
        path: str,
        *,
        enabled: bool,
        opening_headers: Callable[[], dict[str, str]],
    ) -> None:
        self.peer = peer
        self.path = path
        self.enabled = enabled
        self._opening_headers = opening_headers
        self._lock = threading.Lock()
        self._state = "unknown"
        self._off_until = 0.0

    @property
    def state(self) -> str:
        """``unknown``, ``offered``, ``working`` or ``off`` (the module docstring)."""
        return self._state

    def request(
        self,
        connection: PeerConnection,
        body: bytes,
        headers: dict[str, str],
        *,
        timeout: float | None = None,
    ) -> tuple[int, bytes, dict[str, str]]:
        """One exchange on ``connection`` (opened as needed): (status, body, headers). An
        opening the peer refused is sent again as a request: a refused opening delivered
        nothing. Errors are those of :meth:`PeerConnection.post`."""
        if connection.is_open and connection.dropped():
            connection.close()  # the peer closed it while idle (a restart, an idle timeout)
        # A connection with frames open goes on with them whatever another thread learnt
        # meanwhile: a request there would be read as a frame.
        if connection.framed or self._state in ("offered", "working"):
            try:
                answer = connection.exchange(
                    self.path, body, headers, self._opening_headers(), timeout=timeout
                )
            except FramesRefused as refused:
                if refused.status == 415:  # it no longer takes them (and will not offer them)
                    logger.info("Peer %s refused frames on %s (415)", self.peer, self.path)
                    self._set("unknown")
                else:  # something in between answered: do not try again at every exchange
                    self._off(f"their opening was answered with {refused.status}")
            except FramesUnanswered:
                if self._state == "offered":  # they never worked: a proxy that holds the body?
                    self._off(
                        "their opening was not answered in time (a proxy in between that "
                        "holds a request until its body ends?)"
                    )
                else:  # they did: learn again from the next answer (a downgraded peer)
                    self._set("unknown")
                raise
            else:
                with self._lock:
                    if self._state == "offered":  # not over another thread's "off"
                        self._state = "working"
                return answer
        status, answer_body, answer_headers = connection.post(
            self.path, body, headers, timeout=timeout
        )
        if answer_headers.get(HEADER_FRAMES) == "1" and self.enabled:
            with self._lock:
                if self._state == "unknown" or (
                    self._state == "off" and time.monotonic() >= self._off_until
                ):
                    self._state = "offered"
        return status, answer_body, answer_headers

    def _set(self, state: str) -> None:
        with self._lock:
            self._state = state

    def _off(self, why: str) -> None:
        with self._lock:
            self._state = "off"
            self._off_until = time.monotonic() + FRAMES_RETRY
        logger.warning(
            "Peer %s offered frames on %s, but %s; sending it one request per exchange for "
            "%.0f s. If this repeats, set PeerFrames to false on this node.",
            self.peer,
            self.path,
            why,
            FRAMES_RETRY,
        )

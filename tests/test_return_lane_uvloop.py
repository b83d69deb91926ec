"""The return lane's on-the-wire tests again, on uvloop's event loop, as the gateway runs.

The lane works at the transport level (``asyncio.Protocol``, ``pause_reading``, write
buffer limits, the socket it hands over), where asyncio's own loop and uvloop are two
implementations; the rest of the suite runs on asyncio's (tests/conftest.py's
``pytest_asyncio_loop_factories`` gives this module uvloop's).
"""

from __future__ import annotations

from tests.test_return_lane import (  # noqa: F401 (collected again here, on uvloop)
    pair,
    test_a_client_gone_before_its_answer_still_pays,
    test_a_client_that_does_not_read_gets_no_more_answers,
    test_a_return_arriving_in_pieces,
    test_a_route_then_a_return_on_one_connection,
    test_answers_on_the_wire_are_tornados,
    test_idle_and_half_sent_connections_are_closed,
    test_pipelined_returns_then_a_route_on_one_connection,
    test_shutting_down_does_not_wait_for_a_client_that_keeps_sending,
)

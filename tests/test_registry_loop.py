"""registry/loop.py: work a callback queues for later (the next turn of a
pipelining client, the next batch of timeouts) waits for the next poll, so
other sockets' events are served in between."""
import socket

from registry.loop import READ, Loop


def test_a_callback_queued_by_a_callback_runs_after_the_next_poll():
    loop = Loop()
    a, b = socket.socketpair()
    order = []

    class Reader:
        def on_event(self, mask):
            order.append("event")
            a.recv(100)

    def step(n):
        order.append(n)
        if n == 0:
            b.send(b"x")                  # makes `a` readable
        if n < 3:
            loop.call_soon(step, n + 1)
        else:
            loop.stop()

    try:
        loop.add(a.fileno(), Reader(), READ)
        loop.call_soon(step, 0)
        loop.run()
    finally:
        loop.remove(a.fileno())
        loop.close()
        a.close()
        b.close()
    assert order == [0, "event", 1, 2, 3]

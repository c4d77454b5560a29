"""The training loop's prefetching of global batches (``data.global_batches.Prefetch``)."""

import threading
import time

import pytest

from sde_jax.data.global_batches import Prefetch


def test_same_items_in_order_then_stops():
  prefetch = Prefetch(iter(range(50)), depth=3)
  assert list(prefetch) == list(range(50))
  prefetch.close()
  assert not prefetch.alive


def test_draws_ahead_but_at_most_depth():
  drawn = []

  def source():
    for i in range(100):
      drawn.append(i)
      yield i

  prefetch = Prefetch(source(), depth=2)
  deadline = time.monotonic() + 5
  while len(drawn) < 3 and time.monotonic() < deadline:
    time.sleep(0.01)
  time.sleep(0.2)
  # two items wait in the queue and a third is held by the blocked thread: never more
  assert len(drawn) == 3, drawn
  assert next(prefetch) == 0
  prefetch.close()
  assert not prefetch.alive
  assert len(drawn) <= 5


def test_runs_while_the_consumer_is_busy():
  """The point of it: the source's work overlaps the consumer's."""
  def slow():
    for i in range(4):
      time.sleep(0.2)
      yield i

  prefetch = Prefetch(slow(), depth=2)
  start = time.monotonic()
  for _ in range(4):
    next(prefetch)
    time.sleep(0.2)  # the "step"
  elapsed = time.monotonic() - start
  prefetch.close()
  # serial: 4 x (0.2 + 0.2) = 1.6 s; overlapped: about 0.2 + 4 x 0.2 = 1.0 s
  assert elapsed < 1.4, elapsed


def test_errors_reach_the_consumer_with_their_type():
  def failing():
    yield 1
    raise KeyError('no such field in the data set')

  prefetch = Prefetch(failing())
  assert next(prefetch) == 1
  with pytest.raises(KeyError, match='no such field'):
    next(prefetch)
  prefetch.close()


def test_close_stops_a_thread_blocked_on_a_full_queue():
  prefetch = Prefetch(iter(range(10 ** 9)), depth=1)
  next(prefetch)
  prefetch.close()
  assert not prefetch.alive
  assert not [t for t in threading.enumerate() if t.name == 'sde-jax-prefetch' and t.is_alive()]


def test_bad_depth():
  with pytest.raises(ValueError, match='depth=0; expected at least 1'):
    Prefetch(iter(()), depth=0)

"""The dynamic batcher on its own: merging, token limits, the wait, isolation of a bad input, the bounded queue."""

from __future__ import annotations

import asyncio
import time

import pytest

from mtl_st.serve.batching import Batcher, QueueFull, ShuttingDown


def recording_run(calls: list, fail_on=None, delay: float = 0.0):
    def run(key, payloads):
        calls.append((key, list(payloads)))
        if delay:
            time.sleep(delay)
        if fail_on is not None and fail_on in payloads:
            raise ValueError(f"bad payload {fail_on!r}")
        return [f"{key}:{payload}" for payload in payloads]

    return run


def run_async(coroutine):
    return asyncio.run(coroutine)


def test_concurrent_submits_share_one_batch_and_get_their_own_results():
    calls: list = []

    async def main():
        batcher = Batcher(recording_run(calls), max_wait=0.05)
        await batcher.start()
        results = await asyncio.gather(batcher.submit("k", ["a", "b"], [1, 1]), batcher.submit("k", ["c"], [1]),
                                       batcher.submit("other", ["d"], [1]))
        await batcher.close()
        return results

    assert run_async(main()) == [["k:a", "k:b"], ["k:c"], ["other:d"]]
    assert sorted(len(payloads) for _, payloads in calls) == [1, 3]  # one batch per key


def test_batches_respect_the_token_budget_and_run_longest_first():
    calls: list = []

    async def main():
        batcher = Batcher(recording_run(calls), max_batch_tokens=10, max_wait=0.05)
        await batcher.start()
        result = await batcher.submit("k", ["short", "long", "mid", "tiny"], [2, 6, 4, 1])
        await batcher.close()
        return result

    assert run_async(main()) == ["k:short", "k:long", "k:mid", "k:tiny"]  # in the caller's order
    # in arrival order while they fit in 10 tokens ("mid" waits for the next batch, where it is the oldest), sorted
    assert [payloads for _, payloads in calls] == [["long", "short", "tiny"], ["mid"]]
    # an input over the budget still runs, alone
    calls.clear()

    async def huge():
        batcher = Batcher(recording_run(calls), max_batch_tokens=10, max_wait=0.0)
        await batcher.start()
        result = await batcher.submit("k", ["big", "small"], [50, 1])
        await batcher.close()
        return result

    assert run_async(huge()) == ["k:big", "k:small"]
    assert [payloads for _, payloads in calls] == [["big"], ["small"]]


def test_a_lone_input_waits_at_most_max_wait():
    async def main():
        batcher = Batcher(recording_run([]), max_wait=0.2)
        await batcher.start()
        started = time.monotonic()
        await batcher.submit("k", ["a"], [1])
        waited = time.monotonic() - started
        await batcher.close()
        return waited

    assert 0.15 < run_async(main()) < 2.0


def test_a_failing_input_fails_only_its_caller():
    calls: list = []

    async def main():
        batcher = Batcher(recording_run(calls, fail_on="bad"), max_wait=0.05)
        await batcher.start()
        results = await asyncio.gather(batcher.submit("k", ["a"], [1]), batcher.submit("k", ["bad"], [1]),
                                       batcher.submit("k", ["c"], [1]), return_exceptions=True)
        await batcher.close()
        return results

    good, bad, other = run_async(main())
    assert good == ["k:a"] and other == ["k:c"]
    assert isinstance(bad, ValueError) and "bad" in str(bad)
    assert len(calls[0][1]) == 3 and sorted(len(p) for _, p in calls[1:]) == [1, 1, 1]  # retried one by one


def test_the_queue_is_bounded_and_refuses_at_once():
    async def main():
        batcher = Batcher(recording_run([], delay=0.3), max_queue=3, max_wait=0.0)
        await batcher.start()
        first = asyncio.ensure_future(batcher.submit("k", ["a", "b"], [1, 1]))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        with pytest.raises(QueueFull):
            await batcher.submit("k", ["c", "d"], [1, 1])  # 2 + 2 > 3: none of them is queued
        refused_in = time.monotonic() - started
        assert batcher.in_flight == 2
        assert await batcher.submit("k", ["e"], [1]) == ["k:e"]  # 2 + 1 fits
        assert await first == ["k:a", "k:b"]
        await batcher.close()
        assert batcher.in_flight == 0
        with pytest.raises(ShuttingDown):
            await batcher.submit("k", ["f"], [1])
        return refused_in

    assert run_async(main()) < 0.1


def test_a_caller_that_goes_away_is_dropped_and_close_finishes_the_rest():
    calls: list = []

    async def main():
        batcher = Batcher(recording_run(calls, delay=0.2), max_wait=0.0)
        await batcher.start()
        running = asyncio.ensure_future(batcher.submit("k", ["first"], [1]))
        await asyncio.sleep(0.05)  # "first" is running: the next ones queue behind it
        gone = asyncio.ensure_future(batcher.submit("k", ["gone"], [1]))
        kept = asyncio.ensure_future(batcher.submit("k", ["kept"], [1]))
        await asyncio.sleep(0.01)
        gone.cancel()
        await batcher.close()  # waits for what is queued
        return await running, await kept, batcher.in_flight

    assert run_async(main()) == (["k:first"], ["k:kept"], 0)
    assert all("gone" not in payloads for _, payloads in calls)

"""The controller's queue of PREPAREs waiting to be sent (controller/prepare_queue.py)."""

from clockwork.controller.effects import PrepareOn
from clockwork.controller.prepare_queue import PrepareQueue


def drain(queue: PrepareQueue) -> list[PrepareOn]:
    out = []
    while (prepare := queue.next()) is not None:
        out.append(prepare)
    return out


def test_prepares_leave_in_order_and_a_newer_one_replaces_the_one_waiting():
    queue = PrepareQueue()
    for msg_id, (worker, model) in enumerate([("w1", "a"), ("w1", "b"), ("w2", "a"), ("w1", "a")]):
        queue.add(PrepareOn(worker, msg_id, model))
    assert len(queue) == 3
    assert [(p.worker, p.model, p.msg_id) for p in drain(queue)] == [("w1", "b", 1), ("w2", "a", 2), ("w1", "a", 3)]
    assert not queue and queue.next() is None


def test_a_lost_workers_prepares_are_forgotten_and_sent_anew_when_it_joins_again():
    queue = PrepareQueue()
    queue.add(PrepareOn("w1", 1, "a"))
    queue.add(PrepareOn("w2", 2, "a"))
    queue.forget_worker("w1")
    assert [p.worker for p in drain(queue)] == ["w2"]
    queue.add(PrepareOn("w1", 3, "a"))
    queue.forget_worker("w1")
    assert not queue and queue.next() is None
    queue.add(PrepareOn("w1", 4, "a"))  # joined again
    assert [p.msg_id for p in drain(queue)] == [4]


def test_a_hurried_model_goes_first_and_is_sent_once():
    queue = PrepareQueue()
    for msg_id, (worker, model) in enumerate([("w1", "a"), ("w1", "b"), ("w2", "b"), ("w1", "c")]):
        queue.add(PrepareOn(worker, msg_id, model))
    queue.hurry("b", ["w1", "w2", "w3"])
    queue.hurry("gone", ["w1"])  # nothing waits for it: no change
    assert [(p.worker, p.model) for p in drain(queue)] == [("w2", "b"), ("w1", "b"), ("w1", "a"), ("w1", "c")]

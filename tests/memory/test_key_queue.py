"""MoCo's queue: the newest keys replace the oldest, wrapping around."""

import torch

from uda_reid.memory.key_queue import KeyQueue


def test_enqueue_overwrites_the_oldest_keys_and_wraps_around():
    queue = KeyQueue(5, 3)
    assert torch.allclose(queue.keys.norm(dim=1), torch.ones(5))  # unit vectors at the start
    first, second = torch.full((3, 3), 1.0), torch.full((4, 3), 2.0)
    queue.enqueue(first)
    assert int(queue.pointer) == 3 and torch.equal(queue.keys[:3], first)
    queue.enqueue(second)  # rows 3, 4, then 0, 1
    assert int(queue.pointer) == 2
    assert torch.equal(queue.keys[[3, 4, 0, 1]], second) and torch.equal(queue.keys[2], first[2])


def test_a_batch_larger_than_the_queue_keeps_its_newest_keys():
    queue = KeyQueue(2, 1)
    queue.enqueue(torch.arange(5.0).unsqueeze(1))
    assert sorted(queue.keys.flatten().tolist()) == [3.0, 4.0]


def test_the_queue_is_saved_with_the_model():
    queue = KeyQueue(4, 2)
    queue.enqueue(torch.ones(3, 2))
    restored = KeyQueue(4, 2)
    restored.load_state_dict(queue.state_dict())
    assert torch.equal(restored.keys, queue.keys) and int(restored.pointer) == 3
